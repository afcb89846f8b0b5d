"""The universal path: the core's steps 2–5 (scores → mask → softmax → pattern·v) as a Hugging Face
attention function.

transformers 5.x attention modules compute queries, keys and values (with rotary and the KV cache),
then call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k, v, mask, scaling=…)``.
Registering ``attend`` under the name "probe" and switching a model to it puts the core in that
call for every architecture that dispatches through the interface. Each attention module carries its
own core (hook points named ``blocks.{i}.attn.*``), found through ``module._probe_core``.

How a family's eager function does its arithmetic (softmax in fp32 or not, scores in fp32, sinks)
is read off that function once per family (``numerics_of``), so the core repeats the same ops.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from probe.core.attention import MaskedMultiHeadAttention

IMPLEMENTATION = "probe"


def attend(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    softcap: float | None = None,
    position_bias: torch.Tensor | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs,
):
    """Hugging Face's attention-function signature; returns ``(attn_output, attn_weights)`` as eager does."""
    core = module.__dict__.get("_probe_core")
    if core is None:
        raise RuntimeError(
            f"{type(module).__name__} is set to probe's attention but was not swapped by probe.swap_attention; "
            "call probe.swap_attention(model) rather than setting attn_implementation='probe' by hand"
        )
    from probe.core.adapters.base import bool_mask

    if not core.kv_hooked_by_cache:  # no cache this call: keys and values pass their hook points here
        key, value = core.hook_k(key), core.hook_v(value)
    core.kv_hooked_by_cache = False
    mask = bool_mask(attention_mask)
    if mask is not None and mask.shape[-1] != key.shape[-2]:
        mask = mask[..., : key.shape[-2]]  # some families hand over a mask as long as the static cache
    z, pattern = core.attend(
        core.hook_q(query),
        key,
        value,
        mask,
        causal=mask is None and core.causal,  # Hugging Face's mask already holds causal/padding/windows
        softcap=softcap,
        score_bias=position_bias,
        sinks=s_aux if s_aux is not None else kwargs.get("sinks"),
        dropout=lambda p: nn.functional.dropout(p, p=dropout, training=module.training),
        scale=query.shape[-1] ** -0.5 if scaling is None else scaling,
        training=module.training and dropout > 0,
    )
    core.last_z = z if core.hook_head_out.active else None  # for head_out, around W_O
    return z.transpose(1, 2).contiguous(), pattern


class InterfaceCore(MaskedMultiHeadAttention):
    """The core for one Hugging Face attention module: no weights of its own, only the steps and hook points."""

    def __init__(self, module: nn.Module, numerics: dict):
        n_heads = getattr(module, "num_heads", None) or getattr(module.config, "num_attention_heads", 1)
        super().__init__(
            n_heads=n_heads,
            d_head=getattr(module, "head_dim", 1),
            causal=bool(getattr(module, "is_causal", False)),
            **numerics,
        )
        self.blocked_score = "dtype-min"
        self.kv_hooked_by_cache = False
        self.last_z = None


def register() -> None:
    """Make "probe" a valid ``attn_implementation`` (attention function and its mask); idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import (
        ALL_MASK_ATTENTION_FUNCTIONS,
        AttentionMaskInterface,
        sdpa_mask,
    )

    if IMPLEMENTATION in ALL_MASK_ATTENTION_FUNCTIONS:
        return

    def bool_mask_without_skips(*args, **kwargs):
        # A boolean mask (True = may attend), never skipped for plain causal attention, so the core
        # always sees what Hugging Face would mask.
        kwargs["allow_is_causal_skip"] = False
        return sdpa_mask(*args, **kwargs)

    AttentionInterface.register(IMPLEMENTATION, attend)
    AttentionMaskInterface.register(IMPLEMENTATION, bool_mask_without_skips)


class UnsupportedNumerics(ValueError):
    pass


def numerics_of(attention: nn.Module) -> dict:
    """How ``attention``'s family computes eager attention, read off its eager function's source.

    Returns the core's switches (``softmax_in_float32``, ``scores_in_float32``); raises
    UnsupportedNumerics for arithmetic the core does not reproduce.
    """
    source = _eager_source(type(attention))
    for unsupported in ("logsumexp", "maybe_autocast", "sink_scale"):
        if unsupported in source:
            raise UnsupportedNumerics(
                f"{type(attention).__name__}'s eager attention uses {unsupported}, which probe's core does not reproduce"
            )
    return {
        "softmax_in_float32": "softmax(attn_weights, dim=-1, dtype=torch.float32)" in source,
        "scores_in_float32": "matmul" if "query.to(torch.float32)" in source else False,
    }


@functools.lru_cache(maxsize=None)
def _eager_source(attention_class: type) -> str:
    module = inspect.getmodule(attention_class)
    eager = getattr(module, "eager_attention_forward", None)
    if eager is None:
        raise UnsupportedNumerics(f"{attention_class.__name__}'s module has no eager_attention_forward to follow")
    return "".join(line.strip() for line in inspect.getsource(eager).splitlines() if not line.strip().startswith("#"))


@functools.lru_cache(maxsize=None)  # asked for every block of every model: read each class's source once
def calls_the_interface(attention_class: type) -> bool:
    """Whether this attention module's forward dispatches through Hugging Face's attention interface."""
    try:
        source = inspect.getsource(attention_class.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source
