"""GPT-2 adapter: maps Hugging Face's GPT2Attention (weights, config switches, masks, caches) onto the core.

The replacement keeps GPT2Attention's own submodules under their own names (c_attn, c_proj, q_attn,
attn_dropout, resid_dropout), so parameters are shared, not copied, and state_dict keys do not change.
"""

from __future__ import annotations

import torch
from transformers.models.gpt2 import modeling_gpt2 as hf_gpt2

from probe.core.adapters.base import (
    FamilyAdapter,
    bool_mask,
    cached_cross_layer,
    update_kv_cache,
)
from probe.core.adapters.spec import SPECS, Numerics
from probe.core.attention import MaskedMultiHeadAttention

MODEL_CLASSES = (
    hf_gpt2.GPT2Model,
    hf_gpt2.GPT2LMHeadModel,
    hf_gpt2.GPT2DoubleHeadsModel,
    hf_gpt2.GPT2ForSequenceClassification,
    hf_gpt2.GPT2ForTokenClassification,
    hf_gpt2.GPT2ForQuestionAnswering,
)

# The parameters our forward expects GPT2Attention.forward to be called with (transformers 5.x).
EXPECTED_PARAMETERS = ("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask")


class GPT2Attention(MaskedMultiHeadAttention):
    """The core, fed by GPT-2's fused c_attn / c_proj and speaking GPT2Attention's forward signature."""

    def __init__(self, original: hf_gpt2.GPT2Attention, numerics: Numerics = SPECS["gpt2"].numerics):
        config = original.config
        super().__init__(
            n_heads=original.num_heads,
            d_head=original.head_dim,
            scale=original.scaling,  # head_dim**-0.5, and / (layer + 1) under scale_attn_by_inverse_layer_idx
            causal=not original.is_cross_attention,
            attn_dropout=original.attn_dropout,
            softmax_in_float32=numerics.softmax_in_float32,
            scores_in_float32=numerics.scores_in_float32 or config.reorder_and_upcast_attn,
        )
        self.config = config
        self.layer_idx = original.layer_idx
        self.is_cross_attention = original.is_cross_attention
        self.split_size = original.split_size
        self.c_attn, self.c_proj = original.c_attn, original.c_proj
        if original.is_cross_attention:
            self.q_attn = original.q_attn
        self.resid_dropout = original.resid_dropout

    def project_qkv(self, x, context, cache=None, **plumbing):
        if not self.is_cross_attention:
            return self.c_attn(x).split(self.split_size, dim=2)
        if cached_cross_layer(cache, self.layer_idx) is not None:
            return self.q_attn(x), None, None  # keys/values of the encoder come from the cache
        return (self.q_attn(x), *self.c_attn(context).split(self.split_size, dim=2))

    def cache_kv(self, k, v, cache=None, **plumbing):
        return update_kv_cache(cache, k, v, self.layer_idx, self.is_cross_attention)

    def output_projection(self):
        return self.c_proj

    def project_out(self, z):
        return self.c_proj(z)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = False,
        past_key_values=None,  # the name transformers < 5.24 used for `cache`
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        if hidden_states.dtype != self.c_attn.weight.dtype and not torch.is_autocast_enabled(hidden_states.device.type):
            raise TypeError(
                f"GPT-2 attention (layer {self.layer_idx}) got hidden states of dtype {hidden_states.dtype} "
                f"but its weights are {self.c_attn.weight.dtype}; cast the model or the inputs to match"
            )
        if self.is_cross_attention:
            context, mask = encoder_hidden_states, encoder_attention_mask
        else:
            context, mask = None, attention_mask
        out, pattern = super().forward(hidden_states, bool_mask(mask, self.mask_checks), context=context, cache=cache)
        return self.resid_dropout(out), pattern


class GPT2Adapter(FamilyAdapter):
    name = "gpt2"
    model_classes = MODEL_CLASSES
    attention_class = hf_gpt2.GPT2Attention
    expected_parameters = EXPECTED_PARAMETERS
    spec = SPECS["gpt2"]
    replacement = GPT2Attention
