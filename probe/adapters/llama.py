"""Llama adapter: maps Hugging Face's LlamaAttention (q/k/v/o projections, rotary positions, KV cache,
grouped-query attention) onto the core.

    q, k      rotated by the rotary position embedding (cos, sin) the model computes once per forward and
              passes to every layer; the hook points q and k see the rotated tensors, as attention does
    k, v      appended to the KV cache after rotation (what Hugging Face caches); the hook points k and v
              see the cached keys/values too, i.e. every key position, with n_kv_heads heads
    GQA       query head h reads key/value head h // (n_heads / n_kv_heads): the core's repeat_interleave
              on the head axis, the same mapping as Hugging Face's repeat_kv (expand + reshape)
    softmax   in float32 whatever the model's dtype, then cast back (as Hugging Face's eager attention)
    out       o_proj(concat(heads)): what the decoder layer adds to the residual stream

The replacement keeps LlamaAttention's own submodules under their own names (q_proj, k_proj, v_proj,
o_proj), so parameters are shared, not copied, and state_dict keys do not change.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.llama import modeling_llama as hf_llama

from probe.adapters.base import AttentionSlot, FamilyAdapter, bool_mask
from probe.attention import MaskedMultiHeadAttention

MODEL_CLASSES = (
    hf_llama.LlamaModel,
    hf_llama.LlamaForCausalLM,
    hf_llama.LlamaForSequenceClassification,
    hf_llama.LlamaForQuestionAnswering,
    hf_llama.LlamaForTokenClassification,
)

# How LlamaDecoderLayer calls LlamaAttention (transformers 5.x); `cache` was `past_key_values` before 5.24.
EXPECTED_PARAMETERS = ("hidden_states", "position_embeddings", "attention_mask")


class LlamaAttention(MaskedMultiHeadAttention):
    """The core, fed by Llama's separate q/k/v projections, rotary positions and KV cache."""

    def __init__(self, original: hf_llama.LlamaAttention):
        config = original.config
        super().__init__(
            n_heads=config.num_attention_heads,
            d_head=original.head_dim,
            n_kv_heads=config.num_key_value_heads,
            scale=original.scaling,  # head_dim**-0.5
            causal=original.is_causal,
            attn_dropout=original.attention_dropout,
            softmax_in_float32=True,
        )
        self.config = config
        self.layer_idx = original.layer_idx
        self.head_dim = original.head_dim
        self.num_key_value_groups = original.num_key_value_groups
        self.q_proj, self.k_proj, self.v_proj = original.q_proj, original.k_proj, original.v_proj
        self.o_proj = original.o_proj

    def project_qkv(self, x, context, **plumbing):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def position(self, q, k, position_embeddings=None, **plumbing):
        # Rotary position embedding: rotate each (i, i + d/2) pair of q and k by position · frequency.
        cos, sin = position_embeddings
        return rotate(q, cos, sin), rotate(k, cos, sin)

    def cache_kv(self, k, v, cache=None, cache_kwargs=None, **plumbing):
        # KV cache: store this step's (rotated) keys and values; attend over everything stored so far.
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx, kwargs=cache_kwargs or {})
        return k, v

    def output_projection(self):
        return self.o_proj

    def project_out(self, z):
        return self.o_proj(z)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache=None,
        past_key_values=None,  # the name transformers < 5.24 used for `cache`
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        if position_embeddings is None:
            raise ValueError(
                f"Llama attention (layer {self.layer_idx}) needs position_embeddings=(cos, sin); "
                "the model's rotary embedding computes them — call the whole model, not the layer alone"
            )
        return super().forward(
            hidden_states,
            bool_mask(attention_mask),
            position_embeddings=position_embeddings,
            cache=cache,
            cache_kwargs=kwargs,
        )


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, with cos/sin (batch, pos, d_head) broadcast over heads.

    The same ops in the same order as Hugging Face's apply_rotary_pos_emb, so the result is bit-identical.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (−x2, x1) on the two halves of the last dimension."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


class LlamaAdapter(FamilyAdapter):
    name = "llama"
    model_classes = MODEL_CLASSES
    attention_class = hf_llama.LlamaAttention
    expected_parameters = EXPECTED_PARAMETERS

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.base_model.layers)

    def slots(self, model: nn.Module) -> list[AttentionSlot]:
        return [
            AttentionSlot(block, "self_attn", f"blocks.{i}.attn", hf_llama.LlamaAttention)
            for i, block in enumerate(self.blocks(model))
        ]

    def replace(self, original: nn.Module) -> MaskedMultiHeadAttention:
        return LlamaAttention(original)
