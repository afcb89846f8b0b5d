"""Falcon adapter: maps Hugging Face's FalconAttention (fused query_key_value, multi-query or grouped
keys/values, rotary positions or ALiBi, KV cache) onto the core, following its eager branch.

    q, k, v    query_key_value(x) split as Hugging Face's _split_heads does: multi-query (one key/value
               head, shared by every query head), the new decoder architecture (keys/values already
               repeated per query head, as they are cached) or plain multi-head
    rotary     q and k rotated by the model's (cos, sin); scores = q·kᵀ / √d_head (a division, not a
               multiplication by 1/√d_head: the two round differently), softmax in the model's dtype
    ALiBi      (config.alibi) Falcon's eager attention adds ALiBi twice: scores = (q·kᵀ + alibi) / √d_head
               (upcast to fp32 first in half precision), then the model's mask, which FalconModel builds
               as alibi / √d_head with blocked keys at the dtype's minimum, is added as a bias; the
               softmax runs in the model's dtype. The sdpa branch adds it once. We reproduce eager.

The replacement keeps FalconAttention's own submodules (query_key_value, dense, attention_dropout), so
parameters are shared and state_dict keys unchanged.

This adapter is for the releases whose FalconAttention does its own arithmetic (it is handed ``alibi``;
transformers 5.24). From 5.25 FalconAttention dispatches through the attention interface, with ALiBi
folded into the mask: the universal adapter takes it there, and this one steps aside (``matches``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.falcon import modeling_falcon as hf_falcon

from probe.core import interface
from probe.core.adapters.base import FamilyAdapter, bool_mask
from probe.core.adapters.rotary import rotate
from probe.core.adapters.spec import SPECS
from probe.core.attention import MaskedMultiHeadAttention

MODEL_CLASSES = (
    hf_falcon.FalconModel,
    hf_falcon.FalconForCausalLM,
    hf_falcon.FalconForSequenceClassification,
    hf_falcon.FalconForTokenClassification,
    hf_falcon.FalconForQuestionAnswering,
)

# How FalconDecoderLayer calls FalconAttention (transformers 5.x); the cache comes as `layer_past`.
EXPECTED_PARAMETERS = ("hidden_states", "alibi", "attention_mask", "position_embeddings")


class FalconAttention(MaskedMultiHeadAttention):
    """The core, fed by Falcon's fused projection; rotary positions, or ALiBi as Falcon's eager adds it."""

    def __init__(self, original: hf_falcon.FalconAttention):
        config = original.config
        super().__init__(
            n_heads=original.num_heads,
            d_head=original.head_dim,
            n_kv_heads=original.num_heads if original.new_decoder_architecture else original.num_kv_heads,
            scale=original.inv_norm_factor,  # 1/√d_head
            causal=True,
            attn_dropout=original.attention_dropout,
        )
        self.config = config
        self.layer_idx = original.layer_idx
        self.alibi = config.alibi
        self.extra_steps = ("biased_scores",) if self.alibi else ()  # only ALiBi checkpoints take that step
        # What Hugging Face's _split_heads reads.
        self.num_heads, self.head_dim = original.num_heads, original.head_dim
        self.num_kv_heads = original.num_kv_heads
        self.new_decoder_architecture, self.multi_query = original.new_decoder_architecture, original.multi_query
        self.query_key_value, self.dense = original.query_key_value, original.dense

    def project_qkv(self, x, context, **plumbing):
        q, k, v = hf_falcon.FalconAttention._split_heads(self, self.query_key_value(x))
        return q.flatten(2), k.flatten(2), v.flatten(2)

    def position(self, q, k, position_embeddings=None, **plumbing):
        # Contiguous (batch, head, pos, d_head), the layout Hugging Face's reshape leaves them in.
        q, k = q.contiguous(), k.contiguous()
        if self.alibi:
            return q, k
        cos, sin = position_embeddings
        return rotate(q, cos, sin), rotate(k, cos, sin)

    def cache_kv(self, k, v, cache=None, **plumbing):
        v = v.contiguous()
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        return k, v

    def output_projection(self):
        return self.dense

    def project_out(self, z):
        return self.dense(z)

    def attend_options(self, alibi=None, mask_bias=None, softmax_dtype=None, **plumbing):
        # This call's ALiBi and softmax dtype, for dot_products and softmax; the bias a mask carries, for attend.
        return {"mask_bias": mask_bias, "call": {"alibi": alibi, "softmax_dtype": softmax_dtype}}

    def dot_products(self, q, k, scale, alibi=None, softmax_dtype=None):
        # Falcon's eager arithmetic, which the core's (q·kᵀ)·scale does not reproduce bit for bit:
        # rotary divides by √d_head; ALiBi adds the bias to q·kᵀ (in fp32 under half precision) before
        # multiplying by the scale.
        scores = q @ k.transpose(-1, -2)
        if not self.alibi:
            return scores / math.sqrt(self.head_dim)
        if scores.dtype in (torch.float16, torch.bfloat16):
            scores = scores.to(torch.float32)
        return (scores + alibi.view(q.shape[0], self.num_heads, 1, -1)) * scale

    def softmax(self, masked_scores, sinks, alibi=None, softmax_dtype=None):
        # Hugging Face's softmax runs in the model's dtype (dtype=hidden_states.dtype), even over the
        # fp32 logits of the ALiBi branch.
        return torch.softmax(masked_scores, dim=-1, dtype=softmax_dtype)

    def attend(self, q, k, v, attention_mask, mask_bias=None, **kwargs):
        if not self.alibi:
            kwargs.setdefault("dropout", nn.Identity())  # Falcon's rotary branch applies no attention dropout
        elif mask_bias is not None:
            kwargs.setdefault("score_bias", mask_bias)  # the model's mask carries alibi / √d_head
        return super().attend(q, k, v, attention_mask, **kwargs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        alibi: torch.Tensor | None,
        attention_mask: torch.Tensor,
        position_ids: torch.LongTensor | None = None,
        layer_past=None,
        use_cache: bool = False,
        output_attentions: bool = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ):
        if (alibi is not None) != self.alibi:
            raise ValueError(f"Falcon attention (layer {self.layer_idx}): config.alibi={self.alibi} but alibi={alibi}")
        if alibi is None and position_embeddings is None:
            raise ValueError(
                f"Falcon attention (layer {self.layer_idx}) needs position_embeddings=(cos, sin); "
                "the model's rotary embedding computes them — call the whole model, not the layer alone"
            )
        mask_bias = None
        if alibi is not None and attention_mask is not None and attention_mask.is_floating_point():
            # FalconModel folded ALiBi into its additive mask: blocked keys at the dtype's minimum.
            mask_bias = attention_mask
            allowed = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        else:
            allowed = bool_mask(attention_mask, self.mask_checks)
        return super().forward(hidden_states, allowed, position_embeddings=position_embeddings, cache=layer_past,
                               alibi=alibi, mask_bias=mask_bias, softmax_dtype=hidden_states.dtype)


class FalconAdapter(FamilyAdapter):
    name = "falcon"
    model_classes = MODEL_CLASSES
    attention_class = hf_falcon.FalconAttention
    expected_parameters = EXPECTED_PARAMETERS
    spec = SPECS["falcon"]
    replacement = FalconAttention
    cache_parameters = ("layer_past",)

    def matches(self, model: nn.Module) -> bool:
        # Decided by what the installed release's attention does, not by its version number.
        return super().matches(model) and not interface.calls_the_interface(self.attention_class)
