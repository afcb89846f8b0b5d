"""The full path, declaratively: a family's attention described by a ``ProjectionMap`` — where W_Q, W_K,
W_V and W_O live, how a fused projection is laid out, which query/key norms there are, whether rotary
covers the whole head — and one core class (``MappedAttention``) that runs every step from it.

Rotary itself is the family's own ``apply_rotary_pos_emb`` (families rotate pairs differently, and the
model computes cos/sin once per forward); the KV cache is Hugging Face's. Everything else is the core.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from probe.core.adapters.base import (
    CACHE_ARGUMENTS,
    AttentionSlot,
    FamilyAdapter,
    bool_mask,
)
from probe.core.adapters.layouts import LAYOUTS, get_path
from probe.core.attention import MaskedMultiHeadAttention
from probe.core.interface import numerics_of


@dataclass(frozen=True)
class ProjectionMap:
    attention_class: str  # the Hugging Face class this map describes, e.g. "LlamaAttention"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    o: str = "o_proj"
    qkv: str | None = None  # one fused projection instead of q, k, v …
    qkv_layout: str = "split"  # … laid out [Q | K | V] ("split", Phi-3) or [q k v] per head ("per_head", GPT-NeoX)
    q_norm: str | None = None  # norms on queries and keys (qk-norm) …
    k_norm: str | None = None
    norm_on: str = "heads"  # … over each head before the head axis moves ("heads"), or the whole width ("width")
    partial_rotary: bool = False  # rotary on the first ``module.rotary_ndims`` of each head only

    def fused(self) -> bool:
        return self.qkv is not None


LLAMA = ProjectionMap("LlamaAttention")

# model_type → map. Families listed here run on the full path; every other family on the interface
# runs on the universal one.
MAPS: dict[str, ProjectionMap] = {
    "llama": LLAMA,
    "mistral": ProjectionMap("MistralAttention"),
    "mixtral": ProjectionMap("MixtralAttention"),
    "qwen2": ProjectionMap("Qwen2Attention"),
    "qwen2_moe": ProjectionMap("Qwen2MoeAttention"),
    "qwen3": ProjectionMap("Qwen3Attention", q_norm="q_norm", k_norm="k_norm"),
    "qwen3_moe": ProjectionMap("Qwen3MoeAttention", q_norm="q_norm", k_norm="k_norm"),
    "gemma": ProjectionMap("GemmaAttention"),
    "gemma2": ProjectionMap("Gemma2Attention"),
    "olmo": ProjectionMap("OlmoAttention"),
    "olmo2": ProjectionMap("Olmo2Attention", q_norm="q_norm", k_norm="k_norm", norm_on="width"),
    "phi": ProjectionMap("PhiAttention", o="dense", partial_rotary=True),
    "phi3": ProjectionMap("Phi3Attention", qkv="qkv_proj"),
    "gpt_neox": ProjectionMap("GPTNeoXAttention", qkv="query_key_value", qkv_layout="per_head", o="dense"),
    "starcoder2": ProjectionMap("Starcoder2Attention"),
    "granite": ProjectionMap("GraniteAttention"),
    "glm": ProjectionMap("GlmAttention"),
    "helium": ProjectionMap("HeliumAttention"),
}


class MappedAttention(MaskedMultiHeadAttention):
    """The core, fed by the projections a ``ProjectionMap`` names on a Hugging Face attention module."""

    def __init__(self, original: nn.Module, projection_map: ProjectionMap):
        config = original.config
        n_heads = config.num_attention_heads
        super().__init__(
            n_heads=n_heads,
            d_head=getattr(original, "head_dim", None) or original.head_size,  # GPT-NeoX says head_size
            n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
            scale=original.scaling,
            causal=getattr(original, "is_causal", True),
            **numerics_of(original),
        )
        self.blocked_score = "dtype-min"  # as Hugging Face's masks: padded queries spread evenly, as in eager
        self.map, self.config, self.layer_idx = projection_map, config, original.layer_idx
        self.softcap = getattr(original, "attn_logit_softcapping", None)
        self.extra_steps = ("capped_scores",) if self.softcap else ()  # Gemma 2's soft-capping
        self.attention_dropout = getattr(original, "attention_dropout", 0.0)  # read at each call, as HF does
        self.rotary_ndims = getattr(original, "rotary_ndims", None)
        self.apply_rotary = inspect.getmodule(type(original)).apply_rotary_pos_emb
        # HF's own submodules under their own names: parameters shared, state_dict keys unchanged.
        names = [projection_map.qkv] if projection_map.fused() else [projection_map.q, projection_map.k, projection_map.v]
        for name in names + [projection_map.o, projection_map.q_norm, projection_map.k_norm]:
            if name is not None:
                setattr(self, name, getattr(original, name))

    def project_qkv(self, x, context, **plumbing):
        m = self.map
        if not m.fused():
            q, k, v = getattr(self, m.q)(x), getattr(self, m.k)(x), getattr(self, m.v)(x)
        elif m.qkv_layout == "split":
            q_size, kv_size = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
            q, k, v = getattr(self, m.qkv)(x).split([q_size, kv_size, kv_size], dim=-1)
        else:  # per head: [q_h k_h v_h] side by side for each head
            fused = getattr(self, m.qkv)(x).view(*x.shape[:-1], self.n_heads, 3 * self.d_head)
            q, k, v = (t.reshape(*x.shape[:-1], -1) for t in fused.chunk(3, dim=-1))
        if m.q_norm is not None and m.norm_on == "width":
            q, k = getattr(self, m.q_norm)(q), getattr(self, m.k_norm)(k)
        return q, k, v

    def split_qkv(self, q, k, v):
        if self.map.q_norm is None or self.map.norm_on != "heads":
            return super().split_qkv(q, k, v)
        # Per-head query/key norms act on (batch, pos, head, d_head), before the head axis moves.
        q, k, v = (t.view(*t.shape[:-1], -1, self.d_head) for t in (q, k, v))
        q, k = getattr(self, self.map.q_norm)(q), getattr(self, self.map.k_norm)(k)
        return (t.transpose(1, 2) for t in (q, k, v))

    def position(self, q, k, position_embeddings=None, **plumbing):
        cos, sin = position_embeddings
        if not self.map.partial_rotary:
            return self.apply_rotary(q, k, cos, sin)
        n = self.rotary_ndims  # rotary on the first n dimensions of each head, the rest passes through
        q_rot, k_rot = self.apply_rotary(q[..., :n], k[..., :n], cos, sin)
        return torch.cat((q_rot, q[..., n:]), dim=-1), torch.cat((k_rot, k[..., n:]), dim=-1)


    def output_projection(self):
        return getattr(self, self.map.o)

    def project_out(self, z):
        return getattr(self, self.map.o)(z)

    def attend(self, q, k, v, attention_mask, **steps):
        dropout = lambda p: nn.functional.dropout(p, p=self.attention_dropout, training=self.training)  # noqa: E731
        training = self.training and self.attention_dropout > 0
        return super().attend(
            q, k, v, attention_mask, softcap=self.softcap, dropout=dropout, training=training, **steps
        )

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        caches = [kwargs.pop(name, None) for name in CACHE_ARGUMENTS]
        cache = next((c for c in caches if c is not None), None)
        return super().forward(
            hidden_states,
            bool_mask(attention_mask),
            position_embeddings=position_embeddings,
            cache=cache,
            cache_kwargs=kwargs,
        )


class MappedAdapter(FamilyAdapter):
    """Full-path adapter for every family with a ``ProjectionMap``."""

    name = "mapped"

    def __init__(self, maps: dict[str, ProjectionMap] | None = None):
        self.maps = MAPS if maps is None else maps

    def map_of(self, model) -> ProjectionMap | None:
        return self.maps.get(getattr(getattr(model, "config", None), "model_type", None))

    def matches(self, model) -> bool:
        projection_map = self.map_of(model)
        if projection_map is None or not self.blocks(model):
            return False
        return all(type(a).__name__ == projection_map.attention_class for a in self.attention_modules(model))

    def check(self) -> None:
        pass  # the map names the class; its forward is spoken through keyword arguments

    def blocks(self, model) -> list[nn.Module]:
        layout = LAYOUTS.get(model.config.model_type)
        blocks = get_path(model.base_model, layout.blocks) if layout else None
        return list(blocks) if blocks is not None else []

    def slots(self, model) -> list[AttentionSlot]:
        layout = LAYOUTS[model.config.model_type]
        return [
            AttentionSlot(block, layout.attn, f"blocks.{i}.attn", type(getattr(block, layout.attn)))
            for i, block in enumerate(self.blocks(model))
        ]

    def replace(self, original: nn.Module) -> MaskedMultiHeadAttention:
        model_type = original.config.model_type
        return MappedAttention(original, self.maps[model_type])
