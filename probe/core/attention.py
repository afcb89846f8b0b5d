"""Masked multi-head attention, written out step by step.

    q, k, v  = x·W_Q, x·W_K, x·W_V, split into heads     hook points  q, k, v   (k, v before the cache)
    scores   = q·kᵀ · scale                                            scores
    [capped  = c·tanh(scores / c)]           Gemma 2's soft-capping    capped_scores
    [biased  = scores + bias]                ALiBi, position biases    biased_scores
    masked   = scores with future keys and padding at −∞               masked_scores
    [sinks   = one learned logit per head joins each softmax row]       sink_logits
    pattern  = softmax(masked)  (a row with nothing to attend to → 0)  pattern
    z        = pattern·v  (each head on its own)                       z
    out      = concat(heads)·W_O                                       out
               (each head's share z_h·W_O[:, h], only while listened to)  head_out

Two ways in. The *full path* (``forward``): a model family supplies its projections, positions and
cache plumbing (``project_qkv``, ``position``, ``cache_kv``, ``project_out``) and the core runs every
step. The *universal path* (``attend``, steps 2–5): Hugging Face's attention interface hands over
queries, keys and values after rotary and cache, and the core runs the rest (probe/interface.py).
The steps stay here, in this order, with the same torch ops Hugging Face's eager attention uses —
that is what makes the outputs bit-identical.
"""

from __future__ import annotations

import torch
from torch import nn

from probe.core.heads import per_head_output, sum_heads, unchanged
from probe.core.hooks import HookPoint

STEPS = ("q", "k", "v", "scores", "masked_scores", "pattern", "z", "head_out", "out")
# Steps only some families take, each with a hook point of its own where it runs.
OPTIONAL_STEPS = ("capped_scores", "biased_scores", "sink_logits")
# What only the exact path computes: a hook on any of these keeps a core off its fast path.
PATTERN_STEPS = ("scores", "capped_scores", "biased_scores", "masked_scores", "pattern", "sink_logits")


class MaskedMultiHeadAttention(nn.Module):
    """Multi-head attention whose every intermediate tensor passes a named hook point.

    Standalone use: ``MaskedMultiHeadAttention(n_heads=4, d_head=16, d_model=64)`` owns plain linear
    projections. Adapters for Hugging Face models pass no ``d_model`` and override the projections.
    """

    def __init__(
        self,
        n_heads: int,
        d_head: int,
        *,
        d_model: int | None = None,
        n_kv_heads: int | None = None,
        scale: float | None = None,
        causal: bool = True,
        attn_dropout: nn.Module | float = 0.0,
        scores_in_float32: bool | str = False,
        softmax_in_float32: bool = False,
    ):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.n_kv_heads = n_kv_heads or n_heads
        self.scale = d_head**-0.5 if scale is None else scale
        self.causal = causal
        self.layer_idx = None  # adapters set the block's index, which is how Hugging Face's cache knows it
        # A blocked key's score: −∞ (GPT-2, BERT and the other hand-written adapters), or the dtype's lowest
        # value as Hugging Face's masks use it (mapped and universal paths), where a query with nothing to
        # attend to spreads evenly, as in eager.
        self.blocked_score = "-inf"
        self.fast = False  # steps 2–5 by scaled_dot_product_attention while no one needs the pattern
        self.mask_checks = None  # swap_attention hands each core its model's record of float masks checked (adapters.base)
        self.scores_in_float32 = scores_in_float32
        self.softmax_in_float32 = softmax_in_float32  # Llama & co.: softmax in fp32 whatever the dtype
        if not isinstance(attn_dropout, nn.Module):
            attn_dropout = nn.Dropout(attn_dropout)
        self.attn_dropout = attn_dropout
        if d_model is not None:
            self.W_qkv = nn.Linear(d_model, (n_heads + 2 * self.n_kv_heads) * d_head)
            self.W_o = nn.Linear(n_heads * d_head, d_model)
        for step in STEPS + OPTIONAL_STEPS:
            setattr(self, f"hook_{step}", HookPoint(step))

    # --- what a model family supplies -------------------------------------------------------------

    def project_qkv(self, x: torch.Tensor, context: torch.Tensor | None, **plumbing):
        """Queries from ``x``; keys and values from ``context`` (cross-attention) or ``x``.

        An adapter may return None for keys and values that ``cache_kv`` will take from its cache."""
        sizes = [self.n_heads * self.d_head, self.n_kv_heads * self.d_head, self.n_kv_heads * self.d_head]
        if context is None:
            return self.W_qkv(x).split(sizes, dim=-1)
        W_q, W_k, W_v = self.W_qkv.weight.split(sizes)
        b_q, b_k, b_v = self.W_qkv.bias.split(sizes)
        return x @ W_q.T + b_q, context @ W_k.T + b_k, context @ W_v.T + b_v

    def project_out(self, z: torch.Tensor) -> torch.Tensor:
        return self.W_o(z)

    def output_projection(self) -> nn.Module | None:
        """The module holding W_O, for per-head outputs (``head_out``); None where there is none."""
        return getattr(self, "W_o", None)

    def split_qkv(self, q, k, v):
        """(batch, pos, heads·d_head) → (batch, head, pos, d_head) each; adapters add per-head norms here."""
        return (split_heads(t, self.d_head) if t is not None else None for t in (q, k, v))

    def position(self, q, k, **plumbing):
        """Adapters add position information to queries and keys here (rotary); by default nothing."""
        return q, k

    def cache_kv(self, k, v, cache=None, cache_kwargs=None, **plumbing):
        """Store this step's keys/values in Hugging Face's KV cache (if one is given) and return all of them."""
        if cache is None:
            return k, v
        return cache.update(k, v, self.layer_idx, kwargs=cache_kwargs or {})

    # --- the attention itself ---------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        **plumbing,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attend from every position of ``x``; returns ``(out, pattern)``.

        ``attention_mask``: bool, True where a query may attend to a key, broadcastable to
        (batch, head, query, key). It carries padding; the causal mask is built here.
        """
        # 1. Project every token into queries, keys and values; split the width into heads.
        q, k, v = self.split_qkv(*self.project_qkv(x, context, **plumbing))
        q, k = self.position(q, k, **plumbing)
        # This step's keys and values pass their hook points before the cache: an edit is what gets cached.
        if k is not None:
            k, v = self.hook_k(k), self.hook_v(v)
        k, v = self.cache_kv(k, v, **plumbing)
        z, pattern = self.attend(self.hook_q(q), k, v, attention_mask, causal=self.causal,
                                 **self.attend_options(**plumbing))

        # 6. Concatenate the heads and mix them with the output projection.
        out = self.hook_out(self.heads_through_w_o(z))
        return out, pattern

    def attend_options(self, **plumbing) -> dict:
        """What this call hands steps 2–5 beyond queries, keys, values and the mask (a family's ALiBi, its
        softmax dtype): an adapter's forward passes them in as plumbing; by default there are none."""
        return {}

    def heads_through_w_o(self, z: torch.Tensor) -> torch.Tensor:
        """concat(heads)·W_O; while someone listens to head_out, each head's share passes its hook point."""
        w_o = self.output_projection() if self.hook_head_out.active else None
        if w_o is None:
            return self.project_out(merge_heads(z))
        per_head = per_head_output(z, w_o)
        edited = self.hook_head_out(per_head)
        return self.project_out(merge_heads(z)) if unchanged(edited, per_head) else sum_heads(edited, w_o)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attention_mask: torch.Tensor | None,
        *,
        causal: bool,
        softcap: float | None = None,
        score_bias: torch.Tensor | None = None,
        sinks: torch.Tensor | None = None,
        dropout=None,
        scale: float | None = None,
        training: bool | None = None,
        call: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Steps 2–5, from queries, keys and values (batch, head, pos, d_head) to ``(z, pattern)``.

        The optional steps are those some families add between the dot product and the softmax:
        ``softcap`` (Gemma 2: c·tanh(scores/c)), ``score_bias`` (ALiBi and other position biases,
        added to the scores), ``sinks`` (one learned logit per head that takes part in the softmax
        but has no value). ``training``: whether attention dropout is on (default: this module's mode).
        ``call``: values of this call that a family's own ``dot_products`` and ``softmax`` read.
        With ``fast`` set, nothing listening to the score or pattern points and no dropout, steps 2–5
        run as one fused kernel instead (``attend_fast``) and the pattern returned is None.
        """
        training = self.training if training is None else training
        # Grouped-query attention: several query heads share one key/value head.
        if k.shape[1] != q.shape[1]:
            k, v = share_kv_heads(k, q.shape[1]), share_kv_heads(v, q.shape[1])
        scale = self.scale if scale is None else scale
        plain = softcap is None and sinks is None and not training
        if self.fast and plain and self.fast_path_ok() and not self.pattern_needed():
            return self.attend_fast(q, k, v, attention_mask, causal, score_bias, scale), None

        # 2. Scores: every query's dot product with every key, scaled.
        call = call or {}
        scores = self.hook_scores(self.dot_products(q, k, scale, **call))
        if softcap is not None:
            scores = self.hook_capped_scores(torch.tanh(scores / softcap) * softcap)
        if score_bias is not None:
            scores = self.hook_biased_scores(scores + score_bias)

        # 3. Mask: a decoder may not look at future keys, and no one looks at padding.
        allowed = self.allowed_keys(q.shape[-2], k.shape[-2], attention_mask, device=q.device, causal=causal)
        blocked = float("-inf") if self.blocked_score == "-inf" else torch.finfo(scores.dtype).min
        masked_scores = scores if allowed is None else scores.masked_fill(~allowed, blocked)
        masked_scores = self.hook_masked_scores(masked_scores)

        # 4. Pattern: softmax over keys. A query with no allowed key gets zeros, not NaN.
        pattern = self.softmax(masked_scores, sinks, **call)
        if self.blocked_score == "-inf" and may_lack_keys(attention_mask, causal, q.shape[-2], k.shape[-2]):
            pattern = zero_rows(pattern, no_key_to_attend(allowed))
        pattern = self.hook_pattern(pattern.to(v.dtype))
        pattern = (dropout or self.attn_dropout)(pattern)

        # 5. Weighted sum of values, per head.
        z = self.hook_z(pattern @ v)
        return z, pattern

    def fast_path_ok(self) -> bool:
        """False where a family computes part of its scores in its own dot_products or softmax (BLOOM's and
        Falcon's ALiBi), which the fused kernel would skip."""
        core = MaskedMultiHeadAttention
        return type(self).dot_products is core.dot_products and type(self).softmax is core.softmax

    def pattern_needed(self) -> bool:
        """Whether a hook listens to a step that only the exact path computes."""
        return any(getattr(self, f"hook_{step}").active for step in PATTERN_STEPS)

    def attend_fast(self, q, k, v, attention_mask, causal, score_bias, scale):
        """Steps 2–5 fused by torch's scaled_dot_product_attention (FlashAttention or memory-efficient
        kernels on a GPU): the same arithmetic in another order, so equal up to rounding, not bitwise."""
        allowed = self.allowed_keys(q.shape[-2], k.shape[-2], attention_mask, device=q.device, causal=causal)
        nothing_to_attend = None
        if may_lack_keys(attention_mask, causal, q.shape[-2], k.shape[-2]):
            nothing_to_attend = no_key_to_attend(allowed)
            allowed = allowed | nothing_to_attend  # a row with no key would be NaN; it is zeroed below
        mask = allowed
        if score_bias is not None:
            blocked = torch.zeros((), dtype=q.dtype, device=q.device) if allowed is None else (
                torch.zeros_like(allowed, dtype=q.dtype).masked_fill(~allowed, float("-inf"))
            )
            mask = score_bias.to(q.dtype) + blocked
        z = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        if nothing_to_attend is not None:
            z = zero_rows(z, nothing_to_attend)
        return self.hook_z(z)

    def softmax(self, masked_scores: torch.Tensor, sinks: torch.Tensor | None, **call) -> torch.Tensor:
        if sinks is None:
            return torch.softmax(masked_scores, dim=-1, dtype=torch.float32 if self.softmax_in_float32 else None)
        # Attention sinks: a per-head logit joins each row's softmax, then its share is dropped.
        sink_column = self.hook_sink_logits(sinks.reshape(1, -1, 1, 1).expand(*masked_scores.shape[:-1], 1))
        logits = torch.cat([masked_scores, sink_column], dim=-1)
        logits = logits - logits.max(dim=-1, keepdim=True).values
        return torch.softmax(logits, dim=-1, dtype=logits.dtype)[..., :-1]

    def dot_products(self, q: torch.Tensor, k: torch.Tensor, scale: float, **call) -> torch.Tensor:
        if self.scores_in_float32 == "matmul":
            # GPT-J & CodeGen: queries and keys upcast to fp32 before the product.
            return torch.matmul(q.to(torch.float32), k.to(torch.float32).transpose(-1, -2)) * scale
        if not self.scores_in_float32:
            return (q @ k.transpose(-1, -2)) * scale
        # GPT-2's reorder_and_upcast_attn: fp32 scores, the scale folded into the matmul.
        batch, heads, n_q, d = q.shape
        n_k = k.shape[-2]
        with torch.autocast(q.device.type, enabled=False):
            scores = torch.empty(batch * heads, n_q, n_k, dtype=torch.float32, device=q.device)
            scores = torch.baddbmm(
                scores,
                q.reshape(-1, n_q, d).float(),
                k.transpose(-1, -2).reshape(-1, d, n_k).float(),
                beta=0,
                alpha=scale,
            )
        return scores.reshape(batch, heads, n_q, n_k)

    def allowed_keys(self, n_q: int, n_k: int, attention_mask: torch.Tensor | None, device, causal=None):
        """Which keys each query may see: causal (offset by the cached length) AND the given mask."""
        allowed = None
        if self.causal if causal is None else causal:
            # Query i sits at absolute position n_past + i and sees keys 0 .. n_past + i.
            n_past = n_k - n_q
            allowed = torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril(diagonal=n_past)
        if attention_mask is not None:
            check_mask(attention_mask, n_q, n_k)
            allowed = attention_mask if allowed is None else allowed & attention_mask
        return allowed


def may_lack_keys(attention_mask, causal: bool, n_q: int, n_k: int) -> bool:
    """Whether some query may have no key to attend to, decided on the host: only a mask (left padding) or
    a causal one with more queries than keys can do that. Which queries is not asked (that would make a
    GPU wait): their rows are zeroed unasked."""
    return attention_mask is not None or (causal and n_q > n_k)


def no_key_to_attend(allowed: torch.Tensor) -> torch.Tensor:
    """(…, query, 1) True where a query may attend to no key."""
    return ~allowed.any(dim=-1, keepdim=True)


def zero_rows(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t`` with ``rows`` set to 0; in place (no second attention-sized tensor) unless autograd needs ``t``."""
    return t.masked_fill(rows, 0.0) if t.requires_grad else t.masked_fill_(rows, 0.0)


def share_kv_heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """(batch, kv_head, pos, d) → (batch, head, pos, d): query head h reads key/value head h // group.

    Expand-then-reshape, as Hugging Face's repeat_kv: where that is a view (one key/value head), the
    matmul that follows takes the same kernel as eager, hence the same rounding."""
    batch, n_kv, pos, d = t.shape
    return t[:, :, None].expand(batch, n_kv, n_heads // n_kv, pos, d).reshape(batch, n_heads, pos, d)


def split_heads(t: torch.Tensor, d_head: int) -> torch.Tensor:
    """(batch, pos, heads·d_head) → (batch, head, pos, d_head)"""
    return t.view(*t.shape[:-1], -1, d_head).transpose(1, 2)


def merge_heads(z: torch.Tensor) -> torch.Tensor:
    """(batch, head, pos, d_head) → (batch, pos, heads·d_head)"""
    z = z.transpose(1, 2)
    return z.reshape(*z.shape[:-2], -1).contiguous()


def check_mask(mask: torch.Tensor, n_q: int, n_k: int) -> None:
    if mask.dtype != torch.bool:
        raise TypeError(f"attention_mask must be a bool tensor (True = may attend), got {mask.dtype}")
    if mask.dim() != 4 or mask.shape[-2] not in (1, n_q) or mask.shape[-1] != n_k:
        raise ValueError(
            f"attention_mask of shape {tuple(mask.shape)} does not fit (batch, heads|1, {n_q}, {n_k}) "
            f"for {n_q} queries and {n_k} keys"
        )
