"""BLOOM adapter: maps Hugging Face's BloomAttention (fused query_key_value, ALiBi, KV cache) onto the core.

    q, k, v    query_key_value(x), laid out per head as (head, [q k v], d_head), split as _reshape does
    scores     ALiBi + q·kᵀ/√d_head in ONE op, as Hugging Face computes them: alibi.baddbmm(q, kᵀ,
               beta=1, alpha=1/√d_head) rounds once, and q·kᵀ·scale + alibi (two roundings) differs in
               the last bit (in bf16 on most entries). So for BLOOM the ``scores`` hook point already
               carries the ALiBi bias, and ``biased_scores`` fires on the same tensor (the core adds 0).
    pattern    softmax in float32, cast back to the model's dtype
    out        dense(concat(heads)) — sliced over pretraining_tp ranks where slow_but_exact asks; the
               module returns it with the residual added (after dropout), as BloomAttention does

The replacement keeps BloomAttention's own submodules (query_key_value, dense, attention_dropout), so
parameters are shared and state_dict keys unchanged.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from transformers.models.bloom import modeling_bloom as hf_bloom

from probe.core.adapters.base import FamilyAdapter, bool_mask
from probe.core.adapters.spec import SPECS, Numerics
from probe.core.attention import MaskedMultiHeadAttention

MODEL_CLASSES = (
    hf_bloom.BloomModel,
    hf_bloom.BloomForCausalLM,
    hf_bloom.BloomForSequenceClassification,
    hf_bloom.BloomForTokenClassification,
    hf_bloom.BloomForQuestionAnswering,
)

# How BloomBlock calls BloomAttention (transformers 5.x); the cache comes as `layer_past`.
EXPECTED_PARAMETERS = ("hidden_states", "residual", "alibi", "attention_mask")


class BloomAttention(MaskedMultiHeadAttention):
    """The core, fed by BLOOM's fused projection, with ALiBi fused into the score product as in eager."""

    def __init__(self, original: hf_bloom.BloomAttention, numerics: Numerics = SPECS["bloom"].numerics):
        super().__init__(
            n_heads=original.num_heads,
            d_head=original.head_dim,
            scale=original.inv_norm_factor,  # 1/√d_head
            causal=True,
            attn_dropout=original.attention_dropout,
            **numerics.switches(),  # softmax in float32
        )
        self.layer_idx = original.layer_idx
        self.beta = original.beta
        self.hidden_size = original.hidden_size
        self.pretraining_tp, self.slow_but_exact = original.pretraining_tp, original.slow_but_exact
        self.hidden_dropout = original.hidden_dropout
        self.query_key_value, self.dense = original.query_key_value, original.dense

    def project_qkv(self, x, context, **plumbing):
        batch, n, _ = x.shape
        fused = self.query_key_value(x).view(batch, n, self.n_heads, 3, self.d_head)
        return fused[..., 0, :].flatten(2), fused[..., 1, :].flatten(2), fused[..., 2, :].flatten(2)


    def attend_options(self, alibi=None, **plumbing):
        return {"call": {"alibi": alibi}}  # this call's ALiBi (batch·head, 1, key), for dot_products

    def dot_products(self, q, k, scale, alibi=None):
        # BLOOM's eager scores: ALiBi·β + α·q·kᵀ in one baddbmm (one rounding), which (q·kᵀ)·scale + bias
        # does not reproduce bit for bit; so the bias goes in here, not as the core's score_bias.
        batch, heads, n_q, d = q.shape
        n_k = k.shape[-2]
        scores = alibi.baddbmm(
            batch1=q.reshape(batch * heads, n_q, d),
            batch2=k.reshape(batch * heads, n_k, d).transpose(-1, -2),
            beta=self.beta,
            alpha=scale,
        )
        return scores.view(batch, heads, n_q, n_k)

    def attend(self, q, k, v, attention_mask, **kwargs):
        # ALiBi is already in the scores (dot_products); the biased_scores hook point still fires.
        kwargs.setdefault("score_bias", torch.zeros((), dtype=q.dtype, device=q.device))
        return super().attend(q, k, v, attention_mask, **kwargs)

    def output_projection(self):
        return self.dense

    def project_out(self, z):
        if self.pretraining_tp > 1 and self.slow_but_exact:
            # Hugging Face's exact emulation of tensor-parallel ranks: one partial product per slice.
            slices = self.hidden_size / self.pretraining_tp
            out = torch.zeros_like(z)
            for i in range(self.pretraining_tp):
                lo, hi = int(i * slices), int((i + 1) * slices)
                out = out + F.linear(z[:, :, lo:hi], self.dense.weight[:, lo:hi])
            return out
        return self.dense(z)

    def forward(
        self,
        hidden_states: torch.Tensor,
        residual: torch.Tensor,
        alibi: torch.Tensor,
        attention_mask: torch.Tensor,
        layer_past=None,
        use_cache: bool = False,
        output_attentions: bool = False,
        **kwargs,
    ):
        out, pattern = super().forward(hidden_states, bool_mask(attention_mask, self.mask_checks), cache=layer_past,
                                       alibi=alibi)
        return hf_bloom.dropout_add(out, residual, self.hidden_dropout, self.training), pattern


class BloomAdapter(FamilyAdapter):
    name = "bloom"
    model_classes = MODEL_CLASSES
    attention_class = hf_bloom.BloomAttention
    expected_parameters = EXPECTED_PARAMETERS
    spec = SPECS["bloom"]
    replacement = BloomAttention
    cache_parameters = ("layer_past",)
    extra_steps = ("biased_scores",)
