"""BERT adapter: maps Hugging Face's BertAttention (self- or cross-attention plus its output block) onto the core.

Where the output projection lives. Hugging Face splits BERT's attention in two modules:
``BertSelfAttention`` (q, k, v, softmax, weighted sum; returns the concatenated heads) and
``BertSelfOutput`` (``dense`` = W_O, dropout, residual add, post-LayerNorm). probe replaces their parent,
``BertAttention``, so that the hook points mean the same thing as for every other family:

    blocks.{i}.attn.z    each head's weighted sum of values            (batch, head, pos, d_head)
    blocks.{i}.attn.out  concat(heads)·W_O + b_O, i.e. BertSelfOutput.dense's output, before dropout,
                         the residual add and the LayerNorm                 (batch, pos, d_model)

The replacement returns what ``BertAttention`` returns: ``(LayerNorm(dropout(out) + hidden_states), pattern)``.
It keeps the original submodules under their original names (``self.query/key/value`` in a plain container,
``output.dense/dropout/LayerNorm``), so parameters are shared, not copied, and state_dict keys do not change.
Forward hooks on the original ``BertSelfAttention`` / ``BertCrossAttention`` (Hugging Face's
``output_attentions`` recorder among them) move to the replacement, whose output[1] is the same pattern;
pre-hooks on them, and any hook on ``BertSelfOutput``, do not fire while swapped (the replacement calls
neither module's forward; BertSelfOutput's is written out in ``forward``).

Encoders (BertModel, MiniLM, …) are non-causal; BERT used as a decoder (``is_decoder``) is causal, with a KV
cache, and may have cross-attention (hook prefix ``blocks.{i}.cross_attn``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.bert import modeling_bert as hf_bert

from probe.core.adapters.base import (
    FamilyAdapter,
    bool_mask,
    cached_cross_layer,
    update_kv_cache,
)
from probe.core.adapters.spec import SPECS, Numerics
from probe.core.attention import MaskedMultiHeadAttention

MODEL_CLASSES = (
    hf_bert.BertModel,
    hf_bert.BertForPreTraining,
    hf_bert.BertForMaskedLM,
    hf_bert.BertLMHeadModel,
    hf_bert.BertForNextSentencePrediction,
    hf_bert.BertForSequenceClassification,
    hf_bert.BertForMultipleChoice,
    hf_bert.BertForTokenClassification,
    hf_bert.BertForQuestionAnswering,
)

# How BertLayer calls BertAttention (transformers 5.x); `cache` was `past_key_values` before 5.24.
EXPECTED_PARAMETERS = ("hidden_states", "attention_mask", "encoder_hidden_states", "encoder_attention_mask")


class BertAttention(MaskedMultiHeadAttention):
    """The core, fed by BERT's query/key/value linears and finished by BertSelfOutput's W_O and LayerNorm."""

    def __init__(self, original: hf_bert.BertAttention, numerics: Numerics = SPECS["bert"].numerics):
        inner = original.self  # BertSelfAttention, or BertCrossAttention when is_cross_attention
        super().__init__(
            n_heads=inner.num_attention_heads,
            d_head=inner.attention_head_size,
            scale=inner.scaling,  # attention_head_size**-0.5
            causal=inner.is_causal,  # config.is_decoder for self-attention; never for cross-attention
            attn_dropout=inner.dropout,
            **numerics.switches(),
        )
        self.config = inner.config
        self.layer_idx = inner.layer_idx
        self.is_cross_attention = original.is_cross_attention
        self.self = nn.Module()  # keeps the state_dict keys attention.self.{query,key,value}.*
        self.self.query, self.self.key, self.self.value = inner.query, inner.key, inner.value
        self.output = original.output  # BertSelfOutput: dense (W_O), dropout, LayerNorm

    def project_qkv(self, x, context, cache=None, **plumbing):
        q = self.self.query(x)
        if not self.is_cross_attention:
            return q, self.self.key(x), self.self.value(x)
        if cached_cross_layer(cache, self.layer_idx) is not None:
            return q, None, None  # the encoder's keys/values come from the cache
        return q, self.self.key(context), self.self.value(context)

    def cache_kv(self, k, v, cache=None, **plumbing):
        return update_kv_cache(cache, k, v, self.layer_idx, self.is_cross_attention)

    def output_projection(self):
        return self.output.dense

    def project_out(self, z):
        return self.output.dense(z)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        cache=None,
        past_key_values=None,  # the name transformers < 5.24 used for `cache`
        **kwargs,
    ):
        cache = cache if cache is not None else past_key_values
        if self.is_cross_attention:
            context, mask = encoder_hidden_states, encoder_attention_mask
        else:
            context, mask = None, attention_mask
        out, pattern = super().forward(hidden_states, bool_mask(mask, self.mask_checks), context=context, cache=cache)
        # The rest of BertSelfOutput, in its order: dropout, residual add, post-LayerNorm.
        return self.output.LayerNorm(self.output.dropout(out) + hidden_states), pattern


class BertAdapter(FamilyAdapter):
    name = "bert"
    model_classes = MODEL_CLASSES
    attention_class = hf_bert.BertAttention
    expected_parameters = EXPECTED_PARAMETERS
    spec = SPECS["bert"]

    def replace(self, original: nn.Module) -> MaskedMultiHeadAttention:
        new = BertAttention(original, self.spec.numerics)
        # Forward hooks on the inner BertSelfAttention (HF's output_attentions recorder reads its output[1],
        # the pattern) move to the replacement, whose output[1] is the same pattern. Pre-hooks do not: they
        # would see BertAttention's arguments, not BertSelfAttention's.
        for name in _FORWARD_HOOK_DICTS:
            getattr(new, name).update(getattr(original.self, name))
        return new


_FORWARD_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
