"""The full path, declaratively: a family's attention described by the ``ProjectionMap`` of its spec —
where W_Q, W_K, W_V and W_O live, how a fused projection is laid out, which query/key norms there are,
whether rotary covers the whole head — and one core class (``MappedAttention``) that runs every step from it.

Rotary itself is the family's own ``apply_rotary_pos_emb`` (families rotate pairs differently, and the
model computes cos/sin once per forward); the KV cache is Hugging Face's. Everything else is the core.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import replace

import torch
from torch import nn

from probe.core.adapters.base import (
    CACHE_ARGUMENTS,
    AttentionSlot,
    FamilyAdapter,
    bool_mask,
)
from probe.core.adapters.spec import (
    SPECS,
    FamilySpec,
    ProjectionMap,
    SpecError,
    blocks_of,
    check_fits,
)
from probe.core.attention import MaskedMultiHeadAttention
from probe.core.interface import numerics_of

__all__ = ["MappedAdapter", "MappedAttention", "ProjectionMap"]


class MappedAttention(MaskedMultiHeadAttention):
    """The core, fed by the projections a ``ProjectionMap`` names on a Hugging Face attention module."""

    def __init__(self, original: nn.Module, spec: FamilySpec):
        config, projection_map = original.config, spec.projections
        n_heads = config.num_attention_heads
        numerics = spec.numerics.switches() if spec.numerics is not None else numerics_of(original)
        super().__init__(
            n_heads=n_heads,
            d_head=getattr(original, "head_dim", None) or original.head_size,  # GPT-NeoX says head_size
            n_kv_heads=getattr(config, projection_map.kv_heads, None) or n_heads,
            scale=original.scaling,
            causal=getattr(original, "is_causal", True),
            **numerics,
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
        if self.map.rotary == "full":
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
            bool_mask(attention_mask, self.mask_checks),
            position_embeddings=position_embeddings,
            cache=cache,
            cache_kwargs=kwargs,
        )


class MappedAdapter(FamilyAdapter):
    """Full-path adapter for every family whose spec has ``projections``.

    ``specs``: model type → FamilySpec, or a bare ProjectionMap for a model type probe has a spec for
    (its blocks and norms come from probe's). Default: probe's specs. Given specs are strict: a model of
    one of their types that the spec does not fit is a SpecError naming the field, where probe's own
    leave the model to the universal path.
    """

    name = "mapped"

    def __init__(self, specs: Mapping[str, FamilySpec | ProjectionMap] | None = None):
        self.strict = specs is not None
        if specs is None:  # probe's own: the families whose spec says where the projections are
            self.specs = {t: spec for t, spec in SPECS.items() if spec.projections is not None}
        else:
            self.specs = {t: _full_spec(t, spec) for t, spec in specs.items()}

    def spec_for(self, model) -> FamilySpec | None:
        return self.specs.get(getattr(getattr(model, "config", None), "model_type", None))

    def matches(self, model) -> bool:
        spec = self.spec_for(model)
        if spec is None:
            return False
        if self.strict:
            check_fits(model, spec, model.config.model_type)
        elif not self.blocks(model):
            return False
        return all(type(a).__name__ == spec.projections.attention_class for a in self.attention_modules(model))

    def check(self) -> None:
        pass  # the spec names the class; its forward is spoken through keyword arguments

    def blocks(self, model) -> list[nn.Module]:
        spec = self.spec_for(model)
        return blocks_of(model, spec) if spec else []

    def slots(self, model) -> list[AttentionSlot]:
        attn = self.spec_for(model).attn
        return [
            AttentionSlot(block, attn, f"blocks.{i}.attn", type(getattr(block, attn)))
            for i, block in enumerate(self.blocks(model))
        ]

    def replace(self, original: nn.Module) -> MaskedMultiHeadAttention:
        return MappedAttention(original, self.specs[original.config.model_type])


def _full_spec(model_type: str, spec: FamilySpec | ProjectionMap) -> FamilySpec:
    """A plugin's bare ProjectionMap completed by probe's spec for the same model type."""
    if isinstance(spec, FamilySpec):
        if spec.projections is None:
            raise SpecError(f"the FamilySpec for model type {model_type!r} has no field 'projections': the full "
                            "path needs a ProjectionMap saying where W_Q, W_K, W_V and W_O are (without one, "
                            "give the spec to an InterfaceAdapter, which leaves the projections to the model)")
        return spec
    if model_type not in SPECS:
        raise SpecError(
            f"MappedAdapter got only a ProjectionMap for model type {model_type!r}, which probe has no "
            "FamilySpec for: give a FamilySpec with the fields 'blocks' and 'attn' (where the blocks and their "
            "attention are; 'ln1', 'ln2', 'mlp', 'final_norm' add hook points) and 'projections'"
        )
    return replace(SPECS[model_type], projections=spec)
