"""The architectures probe supports, each with a tiny random-init config to test parity on.

One table serves ``probe architectures``, ``probe compare --random-init ARCH``, the README's table and
the parity suite (tests/test_parity_architectures.py).

Each row also declares the adapter that takes it, so that listing the table needs neither torch nor a
model; the parity suite checks the declaration against the adapter ``adapter_for`` really picks, on
every transformers release it runs on, and ``probe architectures --check`` swaps each one for real.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from probe.errors import first_line

# The published GPT-2 checkpoints' shapes, for building random-weight stand-ins offline (`--random-init`).
GPT2_SHAPES = {
    "gpt2": {},
    "distilgpt2": {"n_layer": 6},
    "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16},
    "gpt2-large": {"n_embd": 1280, "n_layer": 36, "n_head": 20},
    "gpt2-xl": {"n_embd": 1600, "n_layer": 48, "n_head": 25},
}

# Small enough to run in milliseconds, large enough to have heads, GQA and several blocks.
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


@dataclass(frozen=True)
class Architecture:
    model_type: str
    example: str  # a real checkpoint of this architecture, for the reader
    adapter: str = "universal"  # the adapter that takes it (checked by the parity suite)
    adapter_from: dict = field(default_factory=dict)  # transformers release → the adapter from that one on
    causal: bool = True
    overrides: dict = field(default_factory=dict)
    drop: tuple[str, ...] = ()  # TINY keys this config does not take

    def adapter_on(self, release: str) -> str:
        """The adapter that takes this architecture on a transformers ``release`` (e.g. "5.25.0")."""
        from packaging.version import Version

        changes = sorted((Version(v), name) for v, name in self.adapter_from.items() if Version(v) <= Version(release))
        return changes[-1][1] if changes else self.adapter

    def config(self):
        from transformers import AutoConfig

        values = {k: v for k, v in TINY.items() if k not in self.drop}
        return AutoConfig.for_model(self.model_type, **{**values, **self.overrides})

    def random_model(self, seed: int = 0):
        import torch

        torch.manual_seed(seed)
        return _auto_class(self).from_config(self.config())


ENCODER = dict(causal=False, drop=("num_key_value_heads",))
MHA = ("num_key_value_heads",)  # families without grouped-query attention

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in [
        Architecture("gpt2", "openai-community/gpt2", adapter="gpt2", drop=MHA),
        Architecture("gptj", "EleutherAI/gpt-j-6b", drop=MHA, overrides=dict(rotary_dim=8)),
        Architecture("gpt_neox", "EleutherAI/pythia-160m", adapter="mapped", drop=MHA),
        Architecture("gpt_bigcode", "bigcode/starcoderbase-1b", drop=MHA),
        Architecture("codegen", "Salesforce/codegen-350M-mono", drop=MHA, overrides=dict(rotary_dim=8)),
        Architecture("opt", "facebook/opt-125m", drop=MHA, overrides=dict(ffn_dim=128, word_embed_proj_dim=64)),
        Architecture("llama", "HuggingFaceTB/SmolLM2-135M-Instruct", adapter="mapped"),
        Architecture("mistral", "mistralai/Mistral-7B-v0.1", adapter="mapped", overrides=dict(sliding_window=4)),
        Architecture("mixtral", "mistralai/Mixtral-8x7B-v0.1", adapter="mapped", overrides=dict(num_local_experts=4)),
        Architecture("qwen2", "Qwen/Qwen2.5-0.5B", adapter="mapped"),
        Architecture("qwen2_moe", "Qwen/Qwen1.5-MoE-A2.7B", adapter="mapped", overrides=dict(num_experts=4, moe_intermediate_size=32, shared_expert_intermediate_size=32)),
        Architecture("qwen3", "Qwen/Qwen3-0.6B", adapter="mapped", overrides=dict(head_dim=16)),
        Architecture("qwen3_moe", "Qwen/Qwen3-30B-A3B", adapter="mapped", overrides=dict(head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)),
        Architecture("gemma", "google/gemma-2b", adapter="mapped", overrides=dict(head_dim=16)),
        Architecture("gemma2", "google/gemma-2-2b", adapter="mapped", overrides=dict(head_dim=16, sliding_window=4)),
        Architecture("gemma3_text", "google/gemma-3-270m", overrides=dict(head_dim=16, sliding_window=4)),
        Architecture("phi", "microsoft/phi-2", adapter="mapped", drop=MHA),
        Architecture("phi3", "microsoft/Phi-3-mini-4k-instruct", adapter="mapped", overrides=dict(pad_token_id=0)),
        Architecture("olmo", "allenai/OLMo-1B-hf", adapter="mapped"),
        Architecture("olmo2", "allenai/OLMo-2-0425-1B", adapter="mapped"),
        Architecture("olmoe", "allenai/OLMoE-1B-7B-0924", overrides=dict(num_experts=4, num_experts_per_tok=2)),
        Architecture("starcoder2", "bigcode/starcoder2-3b", adapter="mapped"),
        Architecture("stablelm", "stabilityai/stablelm-2-1_6b"),
        Architecture("persimmon", "adept/persimmon-8b-base", drop=MHA),
        Architecture("cohere", "CohereForAI/c4ai-command-r-v01"),
        Architecture("granite", "ibm-granite/granite-3.0-2b-base", adapter="mapped"),
        Architecture("smollm3", "HuggingFaceTB/SmolLM3-3B", overrides=dict(pad_token_id=0)),
        Architecture("helium", "kyutai/helium-1-preview-2b", adapter="mapped", overrides=dict(head_dim=16)),
        Architecture("glm", "THUDM/glm-4-9b-hf", adapter="mapped", overrides=dict(head_dim=16, pad_token_id=0)),
        Architecture("nemotron", "nvidia/Minitron-4B-Base", overrides=dict(head_dim=16)),
        Architecture("biogpt", "microsoft/biogpt", drop=MHA),
        # Attention that does not go through Hugging Face's attention interface: full-path adapters.
        Architecture("gpt_neo", "EleutherAI/gpt-neo-125m", adapter="gpt_neo", drop=MHA, overrides=dict(attention_types=[[["global", "local"], 1]], window_size=4)),
        Architecture("mpt", "mosaicml/mpt-7b", adapter="mpt", drop=MHA, overrides=dict(max_seq_len=64, use_cache=True)),
        Architecture("falcon", "tiiuae/falcon-7b", adapter="falcon", adapter_from={"5.25.0": "universal"}, drop=MHA),  # multi-query, rotary; ALiBi variant: see falcon.py
        Architecture("bloom", "bigscience/bloom-560m", adapter="bloom", drop=MHA),
        Architecture("gpt_oss", "openai/gpt-oss-20b", overrides=dict(head_dim=16, num_local_experts=4, num_experts_per_tok=2, sliding_window=4)),
        Architecture("granitemoe", "ibm-granite/granite-3.0-1b-a400m-base", overrides=dict(num_local_experts=4, num_experts_per_tok=2)),
        Architecture("olmo3", "allenai/Olmo-3-7B", overrides=dict(sliding_window=4)),
        Architecture("exaone4", "LGAI-EXAONE/EXAONE-4.0-1.2B", overrides=dict(sliding_window=4, head_dim=16)),
        Architecture("arcee", "arcee-ai/AFM-4.5B"),
        Architecture("seed_oss", "ByteDance-Seed/Seed-OSS-36B-Base", overrides=dict(head_dim=16)),
        Architecture("hunyuan_v1_dense", "tencent/Hunyuan-1.8B-Instruct", overrides=dict(head_dim=16)),
        Architecture("ernie4_5", "baidu/ERNIE-4.5-0.3B-PT", overrides=dict(head_dim=16)),
        Architecture("glm4", "THUDM/GLM-4-9B-0414", overrides=dict(head_dim=16, pad_token_id=0)),
        Architecture("bitnet", "microsoft/bitnet-b1.58-2B-4T"),
        Architecture("apertus", "swiss-ai/Apertus-8B-2509"),
        Architecture("cohere2", "CohereLabs/c4ai-command-r7b-12-2024", overrides=dict(sliding_window=4)),
        Architecture("jetmoe", "jetmoe/jetmoe-8b"),
        Architecture("phimoe", "microsoft/Phi-3.5-MoE-instruct", overrides=dict(num_local_experts=4)),
        Architecture("llama4_text", "meta-llama/Llama-4-Scout-17B-16E", overrides=dict(head_dim=16)),
        Architecture("qwen3_next", "Qwen/Qwen3-Next-80B-A3B-Instruct", overrides=dict(
            head_dim=16, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
            shared_expert_intermediate_size=32, layer_types=["linear_attention", "full_attention"],
        )),
        Architecture("falcon_h1", "tiiuae/Falcon-H1-0.5B-Base"),
        Architecture("lfm2", "LiquidAI/LFM2-350M"),
        Architecture("modernbert-decoder", "jhu-clsp/ettin-decoder-17m", drop=MHA, overrides=dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        Architecture("bert", "sentence-transformers/all-MiniLM-L6-v2", adapter="bert", **ENCODER),
        Architecture("roberta", "FacebookAI/roberta-base", **ENCODER),
        Architecture("xlm-roberta", "FacebookAI/xlm-roberta-base", **ENCODER),
        Architecture("electra", "google/electra-small-discriminator", **ENCODER),
        Architecture("camembert", "almanach/camembert-base", **ENCODER),
        Architecture("ernie", "nghuyong/ernie-3.0-base-zh", **ENCODER),
        Architecture("data2vec-text", "facebook/data2vec-text-base", **ENCODER),
        Architecture("roberta-prelayernorm", "andreasmadsen/efficient_mlm_m0.40", **ENCODER),
        Architecture("esm", "facebook/esm2_t6_8M_UR50D", overrides=dict(pad_token_id=1), **ENCODER),
        Architecture("bert-generation", "google/bert_for_seq_generation_L-24_bbc_encoder", **ENCODER),
        Architecture("nomic_bert", "nomic-ai/nomic-embed-text-v1.5", **ENCODER),
        Architecture("distilbert", "distilbert/distilbert-base-uncased", **ENCODER),
        Architecture("modernbert", "answerdotai/ModernBERT-base", overrides=dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2), **ENCODER),
    ]
}


def save_random(model_type: str, folder, seed: int = 0):
    """A random-init checkpoint of ``model_type`` saved to ``folder``, to load back with from_pretrained."""
    get(model_type).random_model(seed).save_pretrained(folder)
    return folder


def declared_table(names=None) -> list[dict]:
    """One row per architecture as the table declares it for the installed transformers (adapter and
    path), without importing torch or building a model."""
    from importlib.metadata import version

    release = version("transformers")
    return [_declared_row(arch, arch.adapter_on(release)) for arch in map(get, sorted(names or ARCHITECTURES))]


def _declared_row(arch: Architecture, adapter: str) -> dict:
    path = "universal" if adapter == "universal" else "full"
    return {"architecture": arch.model_type, "example": arch.example, "adapter": adapter, "path": path,
            "status": "declared"}


def support_table(measure: bool = False, device="cpu", dtype=None, adapters=None, names=None) -> list[dict]:
    """One row per architecture: which adapter and path take it, its status ("ok", or "refused: <reason>"
    where the installed releases break it: one architecture's failure never hides the others) and
    (``measure``) the parity vs eager, both models loaded in ``dtype`` (default float32) on ``device``.
    ``adapters``: the adapters to ask (default: probe's built-ins); ``names``: only these (default: all)."""
    return [_row(get(name), measure, device, dtype, adapters) for name in sorted(names or ARCHITECTURES)]


def refused(rows: list[dict]) -> list[dict]:
    """The rows of architectures that are refused, or that differ from eager where measured."""
    return [row for row in rows if row["status"] not in ("ok", "declared")
            or row.get("max_abs_diff") not in (None, 0.0)]


def markdown_table(rows: list[dict]) -> str:
    """The README's table of architectures, from ``support_table`` rows (measured away from the CPU or
    float32, the header says where and in what; a refused architecture shows its reason there)."""
    where = {(row["device"], row["dtype"]) for row in rows if "device" in row} - {("cpu", "float32")}
    measured = "max abs diff vs eager" + "".join(f" ({device}, {dtype})" for device, dtype in sorted(where))
    header = f"| architecture | e.g. | path | {measured} |\n|---|---|---|---|\n"
    return header + "".join(
        f"| {r['architecture']} | {r['example']} | {r['path']} ({r['adapter']}) | "
        f"{r.get('max_abs_diff', '') if r['status'] in ('ok', 'declared') else r['status']} |\n"
        for r in rows
    )


def _row(arch: Architecture, measure: bool, device, dtype, adapters) -> dict:
    """One architecture's row. Whatever swapping or measuring it raises is that row's refusal: a release may
    change any family's code in ways no adapter foresaw, and the table must still list the rest."""
    row = {"architecture": arch.model_type, "example": arch.example, "adapter": "none", "path": "none"}
    try:
        _swap_and_measure(arch, measure, device, dtype, adapters, row)
        row["status"] = "ok"
    except Exception as error:  # noqa: BLE001 — reported in the row, by name, with its reason
        row["status"] = f"refused: {type(error).__name__}: {first_line(error)}"
    return row


def _swap_and_measure(arch: Architecture, measure: bool, device, dtype, adapters, row: dict) -> None:
    """Fills in ``row``: the adapter as soon as one is found, then (``measure``) the parity."""
    import tempfile

    import torch

    from probe.core.adapters import adapter_for
    from probe.core.swap import swap_attention

    with tempfile.TemporaryDirectory() as folder:
        save_random(arch.model_type, folder)
        auto = _auto_class(arch)

        def load():
            return auto.from_pretrained(folder, attn_implementation="eager", dtype=dtype or torch.float32).to(device)

        model = load().eval()
        adapter = adapter_for(model, adapters)
        row.update(adapter=adapter.name, path=adapter.path)  # known even if the swap then refuses
        swapped = swap_attention(model, adapters=[adapter])
        if measure:
            reference = load().eval()
            ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(0)).to(device)
            with torch.no_grad():
                a = reference(input_ids=ids, output_hidden_states=True).hidden_states
                b = swapped(input_ids=ids, output_hidden_states=True).hidden_states
            row["max_abs_diff"] = max((x - y).abs().max().item() for x, y in zip(a, b))
            row["device"], row["dtype"] = str(torch.device(device)), str(swapped.dtype).removeprefix("torch.")


def _auto_class(arch: Architecture):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if arch.causal else AutoModel


def get(model_type: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise KeyError(f"no tiny config for {model_type!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[model_type]
