"""What probe knows about a model family, as data: one ``FamilySpec`` per Hugging Face model type.

A spec names, as dotted attribute paths, the list of blocks (from the base model), the attention module
inside a block, the norms in front of attention and MLP, the MLP and the final norm; where W_Q, W_K, W_V
and W_O live (``ProjectionMap``) and the eager function's arithmetic (``Numerics``). Every adapter reads
its family's spec: the hand-written ones for where their blocks are, the mapped path for the projections,
the universal path and the hook points beyond attention (probe/core/points.py) for blocks and norms.
A hook point such as ``blocks.{i}.ln2.out`` exists for a family exactly where its spec names the module.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

from torch import nn

from probe.errors import UserError


class SpecError(UserError, ValueError):
    """A family spec that does not describe the model it was given: names the spec field at fault."""


@dataclass(frozen=True)
class ProjectionMap:
    """Where a family's attention module keeps W_Q, W_K, W_V and W_O, and what happens between them and
    the scores. With one, a family runs on the full path (probe/core/adapters/mapped.py)."""

    attention_class: str  # the Hugging Face class these names describe, e.g. "LlamaAttention"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    qkv: str | None = None  # one fused projection instead of q, k, v …
    qkv_layout: str = "split"  # … laid out [Q | K | V] ("split", Phi-3) or [q k v] per head ("per_head", GPT-NeoX)
    q_norm: str | None = None  # norms on queries and keys (qk-norm) …
    k_norm: str | None = None
    norm_on: str = "heads"  # … over each head before the head axis moves ("heads"), or the whole width ("width")
    rotary: str = "full"  # "full", or "partial": on the first ``module.rotary_ndims`` of each head only
    kv_heads: str = "num_key_value_heads"  # the config field with the key/value head count (GQA); absent: MHA

    def fused(self) -> bool:
        return self.qkv is not None


@dataclass(frozen=True)
class Numerics:
    """How a family's eager attention rounds, as the core's switches."""

    softmax_in_float32: bool = False
    scores_in_float32: bool | str = False  # "matmul": queries and keys upcast before the product

    def switches(self) -> dict:
        return {"softmax_in_float32": self.softmax_in_float32, "scores_in_float32": self.scores_in_float32}


@dataclass(frozen=True)
class FamilySpec:
    """Everything probe needs to know about one model type: paths are dotted attribute names, those of
    norms, MLP, cross-attention and W_O relative to a block."""

    blocks: str  # the ModuleList of blocks, from the base model: "layers", "h", "encoder.layer"
    attn: str  # the attention module inside a block: "self_attn", "attn", "attention.self"
    ln1: str | None = None  # the norm in front of attention (pre-norm families)
    ln2: str | None = None  # the norm in front of the MLP (sequential pre-norm families)
    mlp: str | None = None  # the MLP (or mixture of experts)
    final_norm: str | None = None  # after the last block, from the base model
    # resid_mid = resid_pre + attn.out: true for sequential pre-norm blocks, not for parallel
    # (GPT-J, Phi) or post-norm (BERT, OLMo 2) ones, which leave it False.
    sequential_pre_norm: bool = False
    cross_attn: str | None = None  # a decoder block's cross-attention (GPT-2's and BERT's add_cross_attention)
    o_proj: str | None = None  # W_O from the block, where it sits outside the attention module (BERT-likes)
    # Where W_Q, W_K, W_V and W_O are; None: the attention module projects (universal path) or a
    # hand-written adapter's class does.
    projections: ProjectionMap | None = None
    # The eager arithmetic; None: learned from the family's eager function (universal and mapped paths)
    # or written out by its hand-written adapter (Falcon).
    numerics: Numerics | None = None


def module_at(root: nn.Module, path: str | None):
    """``root.a.b`` for path "a.b", or None when the path is None or missing."""
    if path is None:
        return None
    found = root
    for part in path.split("."):
        found = getattr(found, part, None)
        if found is None:
            return None
    return found


def blocks_of(model: nn.Module, spec: FamilySpec) -> list[nn.Module]:
    blocks = module_at(getattr(model, "base_model", model), spec.blocks)
    return list(blocks) if blocks is not None else []


def check_fits(model: nn.Module, spec: FamilySpec, model_type: str) -> None:
    """Raise SpecError naming the first field of ``spec`` that does not fit ``model``."""
    where = f"the FamilySpec for model type {model_type!r}"
    blocks = blocks_of(model, spec)
    if not blocks:
        raise SpecError(f"{where}: field 'blocks' ({spec.blocks!r}) names no list of blocks in "
                        f"{type(model).__name__}'s base model")
    attention = module_at(blocks[0], spec.attn)
    if attention is None:
        raise SpecError(f"{where}: field 'attn' ({spec.attn!r}) names no module in block 0 "
                        f"({type(blocks[0]).__name__})")
    wanted = spec.projections.attention_class if spec.projections else None
    if wanted is not None and type(attention).__name__ != wanted:
        raise SpecError(f"{where}: field 'projections.attention_class' is {wanted!r}, but the module at "
                        f"{spec.attn!r} is a {type(attention).__name__}")
    for name in ("ln1", "ln2", "mlp", "o_proj"):  # cross_attn: only where the config adds it
        path = getattr(spec, name)
        if path is not None and module_at(blocks[0], path) is None:
            raise SpecError(f"{where}: field {name!r} ({path!r}) names no module in block 0")


LLAMA_LIKE = FamilySpec(
    blocks="layers", attn="self_attn", ln1="input_layernorm", ln2="post_attention_layernorm", mlp="mlp",
    final_norm="norm", sequential_pre_norm=True,
)


def _llama_like(attention_class: str, **projections) -> FamilySpec:
    return replace(LLAMA_LIKE, projections=ProjectionMap(attention_class, **projections))


_QK_NORM = dict(q_norm="q_norm", k_norm="k_norm")
_GEMMA2 = dict(blocks="layers", attn="self_attn", ln1="input_layernorm", ln2="pre_feedforward_layernorm",
               mlp="mlp", final_norm="norm")
_ROBERTA = FamilySpec("encoder.layer", "attention.self", o_proj="attention.output.dense")

# model_type → spec. Families with ``projections`` run on the full path (mapped.py) unless a hand-written
# adapter takes them; every other family on the attention interface runs on the universal one.
_SPECS: dict[str, FamilySpec] = {
    # Llama-like blocks, the full path where a ProjectionMap says where W_Q … W_O are.
    "llama": _llama_like("LlamaAttention"),
    "mistral": _llama_like("MistralAttention"),
    "mixtral": _llama_like("MixtralAttention"),
    "qwen2": _llama_like("Qwen2Attention"),
    "qwen2_moe": _llama_like("Qwen2MoeAttention"),
    "qwen3": _llama_like("Qwen3Attention", **_QK_NORM),
    "qwen3_moe": _llama_like("Qwen3MoeAttention", **_QK_NORM),
    "gemma": _llama_like("GemmaAttention"),
    "olmo": _llama_like("OlmoAttention"),
    "phi3": _llama_like("Phi3Attention", qkv="qkv_proj"),
    "starcoder2": _llama_like("Starcoder2Attention"),
    "granite": _llama_like("GraniteAttention"),
    "glm": _llama_like("GlmAttention"),
    "helium": _llama_like("HeliumAttention"),
    **dict.fromkeys(
        (
            "olmoe", "cohere", "granitemoe", "smollm3", "stablelm", "nemotron", "exaone4", "ministral",
            "arcee", "seed_oss", "apertus", "hunyuan_v1_dense", "ernie4_5", "dots1", "glm4", "bitnet",
            "deepseek_v3",
        ),
        LLAMA_LIKE,
    ),
    # Gemma 2/3: sandwich norms; the norm in front of the MLP is pre_feedforward_layernorm, and the
    # attention output is normed before it joins the residual stream.
    "gemma2": FamilySpec(**_GEMMA2, projections=ProjectionMap("Gemma2Attention")),
    **dict.fromkeys(("gemma3_text", "vaultgemma"), FamilySpec(**_GEMMA2)),
    "olmo2": FamilySpec("layers", "self_attn", mlp="mlp", final_norm="norm",  # post-norms only
                        projections=ProjectionMap("Olmo2Attention", **_QK_NORM, norm_on="width")),
    "olmo3": FamilySpec("layers", "self_attn", mlp="mlp", final_norm="norm"),
    "phi": FamilySpec("layers", "self_attn", ln1="input_layernorm", mlp="mlp", final_norm="final_layernorm",
                      projections=ProjectionMap("PhiAttention", o="dense", rotary="partial")),
    "persimmon": FamilySpec("layers", "self_attn", "input_layernorm", "post_attention_layernorm", "mlp",
                            "final_layernorm", True),
    # Sequential or parallel depending on config.use_parallel_residual: resid_mid left out.
    "gpt_neox": FamilySpec("layers", "attention", "input_layernorm", "post_attention_layernorm", "mlp",
                           "final_layer_norm", projections=ProjectionMap(
                               "GPTNeoXAttention", qkv="query_key_value", qkv_layout="per_head", o="dense")),
    "gptj": FamilySpec("h", "attn", ln1="ln_1", mlp="mlp", final_norm="ln_f"),
    "codegen": FamilySpec("h", "attn", ln1="ln_1", mlp="mlp", final_norm="ln_f"),
    "gpt_bigcode": FamilySpec("h", "attn", "ln_1", "ln_2", "mlp", "ln_f", True),
    "opt": FamilySpec("decoder.layers", "self_attn", "self_attn_layer_norm", "final_layer_norm", None,
                      "decoder.final_layer_norm"),
    "biogpt": FamilySpec("layers", "self_attn", "self_attn_layer_norm", "final_layer_norm", None, "layer_norm", True),
    "modernbert": FamilySpec("layers", "attn", "attn_norm", "mlp_norm", "mlp", "final_norm", True),
    "distilbert": FamilySpec("transformer.layer", "attention", mlp="ffn"),
    **dict.fromkeys(
        ("roberta", "xlm-roberta", "camembert", "electra", "ernie", "data2vec-text", "xmod", "roc_bert"), _ROBERTA
    ),
    # Hand-written full-path families (gpt2.py, bert.py, gpt_neo.py, mpt.py, bloom.py, falcon.py): their
    # classes speak the projections; the spec says where blocks and norms are, and how they round.
    "gpt2": FamilySpec("h", "attn", "ln_1", "ln_2", "mlp", "ln_f", True, cross_attn="crossattention",
                       numerics=Numerics()),  # config.reorder_and_upcast_attn upcasts the scores
    "bert": FamilySpec("encoder.layer", "attention", cross_attn="crossattention", numerics=Numerics()),
    "gpt_neo": FamilySpec("h", "attn.attention", "ln_1", "ln_2", "mlp", "ln_f", True,
                          numerics=Numerics(scores_in_float32="matmul")),
    # MPT's and BLOOM's MLP modules add the residual themselves: no mlp.out. BLOOM's resid_mid depends on
    # config.apply_residual_connection_post_layernorm: left out.
    "mpt": FamilySpec("blocks", "attn", "norm_1", "norm_2", None, "norm_f", True,
                      numerics=Numerics(softmax_in_float32=True)),
    "bloom": FamilySpec("h", "self_attention", "input_layernorm", "post_attention_layernorm", None, "ln_f",
                        numerics=Numerics(softmax_in_float32=True)),
    # Falcon: the norms a block has depend on its config (parallel or not, one or two norms); the MLP's
    # output is added to in place (mlp_output += attention_output): no mlp.out.
    "falcon": FamilySpec("h", "self_attention", "input_layernorm", "post_attention_layernorm", None, "ln_f"),
}

# Read-only: a plugin brings its own specs to its own adapter instead of filling probe's table.
SPECS = MappingProxyType(_SPECS)
