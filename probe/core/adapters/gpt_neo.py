"""GPT-Neo adapter: maps Hugging Face's GPTNeoSelfAttention (separate q/k/v projections, alternating global
and local layers, unscaled fp32 scores) onto the core.

    scores    q·kᵀ in float32 (queries and keys upcast first) and NOT scaled: scale = 1.0
    local     on the layers config.attention_layers marks "local", a query also skips keys that lie
              window_size or more positions back: part of the boolean mask handed to the core
    pattern   softmax in float32 (the scores are float32), cast to the values' dtype

The replacement keeps GPTNeoSelfAttention's own submodules under their own names (q_proj, k_proj,
v_proj, out_proj, attn_dropout, resid_dropout), so parameters are shared and state_dict keys unchanged.
"""

from __future__ import annotations

import torch
from transformers.models.gpt_neo import modeling_gpt_neo as hf_gpt_neo

from probe.core.adapters.base import FamilyAdapter, bool_mask
from probe.core.adapters.spec import SPECS, Numerics
from probe.core.attention import MaskedMultiHeadAttention

MODEL_CLASSES = (
    hf_gpt_neo.GPTNeoModel,
    hf_gpt_neo.GPTNeoForCausalLM,
    hf_gpt_neo.GPTNeoForSequenceClassification,
    hf_gpt_neo.GPTNeoForTokenClassification,
    hf_gpt_neo.GPTNeoForQuestionAnswering,
)

# How GPTNeoAttention calls GPTNeoSelfAttention (transformers 5.x); the cache comes as `layer_past`.
EXPECTED_PARAMETERS = ("hidden_states", "attention_mask")


class GPTNeoAttention(MaskedMultiHeadAttention):
    """The core, fed by GPT-Neo's q/k/v projections; local layers see a sliding window of keys."""

    def __init__(self, original: hf_gpt_neo.GPTNeoSelfAttention, numerics: Numerics = SPECS["gpt_neo"].numerics):
        config = original.config
        super().__init__(
            n_heads=original.num_heads,
            d_head=original.head_dim,
            scale=1.0,  # GPT-Neo does not scale its scores
            causal=True,
            attn_dropout=original.attn_dropout,
            **numerics.switches(),  # queries and keys upcast to fp32 before the product
        )
        self.config = config
        self.layer_idx = original.layer_id  # GPT-Neo's name for the block index
        self.attention_type = original.attention_type
        self.window_size = config.window_size if original.attention_type == "local" else None
        # In Hugging Face's order (k, v, q), so that state_dict keys come in the same order too.
        self.k_proj, self.v_proj, self.q_proj = original.k_proj, original.v_proj, original.q_proj
        self.out_proj = original.out_proj
        self.resid_dropout = original.resid_dropout

    def project_qkv(self, x, context, **plumbing):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)


    def output_projection(self):
        return self.out_proj

    def project_out(self, z):
        return self.out_proj(z)

    def attend(self, q, k, v, attention_mask, **kwargs):
        # Local layers: query i (at cache index n_past + i) sees key j only when i − j < window_size,
        # as the `bias` buffer of Hugging Face's local layers does; the causal half is the core's.
        if self.window_size is not None:
            n_q, n_k = q.shape[-2], k.shape[-2]
            window = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).triu(n_k - n_q - self.window_size + 1)
            attention_mask = window[None, None] if attention_mask is None else attention_mask & window
        return super().attend(q, k, v, attention_mask, **kwargs)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        layer_past=None,
        use_cache: bool = False,
        output_attentions: bool = False,
        **kwargs,
    ):
        out, pattern = super().forward(hidden_states, bool_mask(attention_mask, self.mask_checks), cache=layer_past)
        return self.resid_dropout(out), pattern


class GPTNeoAdapter(FamilyAdapter):
    name = "gpt_neo"
    model_classes = MODEL_CLASSES
    attention_class = hf_gpt_neo.GPTNeoSelfAttention
    expected_parameters = EXPECTED_PARAMETERS
    spec = SPECS["gpt_neo"]
    replacement = GPTNeoAttention
    cache_parameters = ("layer_past",)
