"""MPT adapter: maps Hugging Face's MptAttention (fused Wqkv, optional clip_qkv, ALiBi, KV cache) onto the core.

    q, k, v        Wqkv(x), clamped to ±clip_qkv where the config sets it, split in three
    biased_scores  scores + ALiBi: the model's position_bias (head, 1, key) — slope_h · (j − last key) —
                   added to the scaled scores; float32, so the biased scores are float32 whatever the dtype
    mask           MptModel hands a bool mask that is True where a key is BLOCKED (Hugging Face's additive
                   mask cast to bool); the core takes True = may attend
    pattern        softmax in float32, cast to the values' dtype

The replacement keeps MptAttention's own submodules (Wqkv, out_proj), so parameters are shared and
state_dict keys unchanged.
"""

from __future__ import annotations

import torch
from transformers.models.mpt import modeling_mpt as hf_mpt

from probe.core.adapters.base import FamilyAdapter, bool_mask
from probe.core.adapters.spec import SPECS, Numerics
from probe.core.attention import MaskedMultiHeadAttention

MODEL_CLASSES = (
    hf_mpt.MptModel,
    hf_mpt.MptForCausalLM,
    hf_mpt.MptForSequenceClassification,
    hf_mpt.MptForTokenClassification,
    hf_mpt.MptForQuestionAnswering,
)

# How MptBlock calls MptAttention (transformers 5.x).
EXPECTED_PARAMETERS = ("hidden_states", "position_bias", "attention_mask")


class MptAttention(MaskedMultiHeadAttention):
    """The core, fed by MPT's fused Wqkv, with ALiBi as the score bias."""

    def __init__(self, original: hf_mpt.MptAttention, numerics: Numerics = SPECS["mpt"].numerics):
        super().__init__(
            n_heads=original.n_heads,
            d_head=original.head_dim,
            scale=original.softmax_scale,  # config.attn_config.softmax_scale, or head_dim**-0.5
            causal=True,
            attn_dropout=original.attn_dropout_p,  # Hugging Face: functional dropout with this p
            **numerics.switches(),  # softmax in float32
        )
        self.layer_idx = original.layer_idx
        self.clip_qkv = original.clip_qkv
        self.Wqkv, self.out_proj = original.Wqkv, original.out_proj

    def project_qkv(self, x, context, **plumbing):
        qkv = self.Wqkv(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        return qkv.chunk(3, dim=2)


    def output_projection(self):
        return self.out_proj

    def project_out(self, z):
        return self.out_proj(z)

    def attend_options(self, position_bias=None, **plumbing):
        return {"position_bias": position_bias}  # this call's ALiBi, for attend

    def attend(self, q, k, v, attention_mask, position_bias=None, **kwargs):
        # ALiBi for the keys there are: the last key_length columns of the model's (head, 1, max_seq_len)
        # bias, sliced as Hugging Face slices it.
        bias = position_bias
        if bias is not None and "score_bias" not in kwargs:
            kwargs["score_bias"] = bias[:, :, max(0, bias.size(2) - k.shape[-2]) :]
        return super().attend(q, k, v, attention_mask, **kwargs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_bias: torch.Tensor | None,
        cache=None,
        attention_mask: torch.Tensor | None = None,
        past_key_values=None,  # the name transformers < 5.24 used for `cache`
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        if position_bias is not None and position_bias.dim() != 3:
            raise ValueError(f"Expecting position_bias shape to be 3 dimensions, got {position_bias.dim()}")
        # MptModel's mask is True where a key is blocked; a float mask is Hugging Face's additive one.
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            allowed = ~attention_mask
        else:
            allowed = bool_mask(attention_mask, self.mask_checks)
        return super().forward(hidden_states, allowed, cache=cache, cache_kwargs=kwargs, position_bias=position_bias)


class MptAdapter(FamilyAdapter):
    name = "mpt"
    model_classes = MODEL_CLASSES
    attention_class = hf_mpt.MptAttention
    expected_parameters = EXPECTED_PARAMETERS
    spec = SPECS["mpt"]
    replacement = MptAttention
    extra_steps = ("biased_scores",)
