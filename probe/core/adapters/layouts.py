"""Where each family keeps its pieces: declarative maps from hook point names to module paths.

A ``Layout`` names, as dotted attribute paths, the list of blocks (from the base model), the
attention module inside a block, the pre-attention and pre-MLP norms, the MLP and the final norm.
Hook points beyond attention (``ln1.out``, ``ln2.out``, ``mlp.out``, ``resid_mid``, ``ln_final.out``)
exist for a family exactly where its layout names the module; ``guess_layout`` finds blocks and
attention for any other model whose attention dispatches through Hugging Face's interface.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layout:
    blocks: str  # the ModuleList of blocks, from the base model: "layers", "h", "encoder.layer"
    attn: str  # the attention module inside a block: "self_attn", "attn", "attention.self"
    ln1: str | None = None  # the norm in front of attention (pre-norm families)
    ln2: str | None = None  # the norm in front of the MLP (sequential pre-norm families)
    mlp: str | None = None  # the MLP (or mixture of experts)
    final_norm: str | None = None  # after the last block, from the base model
    # resid_mid = resid_pre + attn.out: true for sequential pre-norm blocks, not for parallel
    # (GPT-J, Phi) or post-norm (BERT, OLMo 2) ones, which leave it False.
    sequential_pre_norm: bool = False
    o_proj: str | None = None  # W_O inside a block; None: the attention module's o_proj/out_proj/dense


LLAMA_LIKE = Layout(
    blocks="layers",
    attn="self_attn",
    ln1="input_layernorm",
    ln2="post_attention_layernorm",
    mlp="mlp",
    final_norm="norm",
    sequential_pre_norm=True,
)

# model_type → layout; families not listed here fall back to ``guess_layout``.
LAYOUTS: dict[str, Layout] = {
    **dict.fromkeys(
        (
            "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "phi3",
            "olmo", "olmoe", "starcoder2", "cohere", "granite", "granitemoe", "smollm3", "helium", "glm",
            "stablelm", "nemotron", "exaone4", "ministral", "arcee", "seed_oss", "apertus", "hunyuan_v1_dense",
            "ernie4_5", "dots1", "glm4", "bitnet", "deepseek_v3",
        ),
        LLAMA_LIKE,
    ),
    # Gemma 2/3: sandwich norms; the norm in front of the MLP is pre_feedforward_layernorm, and the
    # attention output is normed before it joins the residual stream.
    **dict.fromkeys(
        ("gemma2", "gemma3_text", "vaultgemma"),
        Layout("layers", "self_attn", "input_layernorm", "pre_feedforward_layernorm", "mlp", "norm"),
    ),
    "olmo2": Layout("layers", "self_attn", mlp="mlp", final_norm="norm"),  # post-norms only
    "olmo3": Layout("layers", "self_attn", mlp="mlp", final_norm="norm"),
    "phi": Layout("layers", "self_attn", ln1="input_layernorm", mlp="mlp", final_norm="final_layernorm"),
    "persimmon": Layout(
        "layers", "self_attn", "input_layernorm", "post_attention_layernorm", "mlp", "final_layernorm", True
    ),
    "gpt_neox": Layout(
        "layers", "attention", "input_layernorm", "post_attention_layernorm", "mlp", "final_layer_norm"
    ),  # sequential or parallel depending on config.use_parallel_residual: resid_mid left out
    "gpt2": Layout("h", "attn", "ln_1", "ln_2", "mlp", "ln_f", True),
    "gptj": Layout("h", "attn", ln1="ln_1", mlp="mlp", final_norm="ln_f"),
    "codegen": Layout("h", "attn", ln1="ln_1", mlp="mlp", final_norm="ln_f"),
    "gpt_bigcode": Layout("h", "attn", "ln_1", "ln_2", "mlp", "ln_f", True),
    "opt": Layout(
        "decoder.layers", "self_attn", "self_attn_layer_norm", "final_layer_norm", None,
        "decoder.final_layer_norm",
    ),
    "biogpt": Layout("layers", "self_attn", "self_attn_layer_norm", "final_layer_norm", None, "layer_norm", True),
    "modernbert": Layout("layers", "attn", "attn_norm", "mlp_norm", "mlp", "final_norm", True),
    "distilbert": Layout("transformer.layer", "attention", mlp="ffn"),
    **dict.fromkeys(
        ("roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text", "xmod", "roc_bert"),
        Layout("encoder.layer", "attention.self", o_proj="attention.output.dense"),
    ),
    # Full-path families (probe/adapters/gpt_neo.py, mpt.py, bloom.py, falcon.py).
    "gpt_neo": Layout("h", "attn.attention", "ln_1", "ln_2", "mlp", "ln_f", True),
    # MPT's and BLOOM's MLP modules add the residual themselves: no mlp.out. BLOOM's resid_mid depends on
    # config.apply_residual_connection_post_layernorm: left out.
    "mpt": Layout("blocks", "attn", "norm_1", "norm_2", None, "norm_f", True),
    "bloom": Layout("h", "self_attention", "input_layernorm", "post_attention_layernorm", None, "ln_f"),
    # Falcon: the norms a block has depend on its config (parallel or not, one or two norms); the MLP's
    # output is added to in place (mlp_output += attention_output): no mlp.out.
    "falcon": Layout("h", "self_attention", "input_layernorm", "post_attention_layernorm", None, "ln_f"),
}

# Where W_O usually sits inside an attention module.
O_PROJ_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "out_lin", "Wo", "wo")


def o_proj_of(block: nn.Module, layout: Layout):
    if layout.o_proj is not None:
        return get_path(block, layout.o_proj)
    attention = get_path(block, layout.attn)
    return next((getattr(attention, n) for n in O_PROJ_NAMES if isinstance(getattr(attention, n, None), nn.Module)), None)


def get_path(root: nn.Module, path: str | None):
    """``root.a.b`` for path "a.b", or None when the path is None or missing."""
    if path is None:
        return None
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def guess_layout(model: nn.Module, is_attention) -> Layout | None:
    """Blocks and attention of a model no layout names: the first ModuleList as long as the model is
    deep whose blocks hold a module that ``is_attention``; None when there is none."""
    base = getattr(model, "base_model", model)
    depth = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for list_path, modules in base.named_modules():
        if not isinstance(modules, nn.ModuleList) or len(modules) == 0 or (depth and len(modules) != depth):
            continue
        for block in modules:  # the first block may have none (hybrids with linear-attention blocks)
            for attn_path, sub in block.named_modules():
                if attn_path and is_attention(sub):
                    return Layout(blocks=list_path, attn=attn_path)
    return None
