"""The universal path: the core's steps 2–5 (scores → mask → softmax → pattern·v) as a Hugging Face
attention function.

transformers 5.x attention modules compute queries, keys and values (with rotary and the KV cache),
then call ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation](module, q, k, v, mask, scaling=…)``.
Registering ``attend`` under the name "probe" and switching a model to it puts the core in that
call for every architecture that dispatches through the interface. Each attention module carries its
own core (hook points named ``blocks.{i}.attn.*``), found through ``module._probe_core``.

How a family's eager function does its arithmetic (softmax in fp32 or not, scores in fp32) is learned
once per family by running that function and the core side by side on a tiny input (``numerics_of``),
so the core repeats the same ops.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

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
    if not core.kv_hooked_by_cache:  # no cache this call: keys and values pass their hook points here
        key, value = core.hook_k(key), core.hook_v(value)
    core.kv_hooked_by_cache = False
    mask, bias = _mask_and_bias(attention_mask, key.shape[-2], core.mask_checks)
    if bias is not None:
        position_bias = bias if position_bias is None else position_bias + bias
    z, pattern = core.attend(
        core.hook_q(query),
        key,
        value,
        mask,
        # Hugging Face's mask already holds causal/padding/windows (a biased one too, at the dtype's minimum)
        causal=attention_mask is None and core.causal,
        softcap=softcap,
        score_bias=position_bias,
        sinks=s_aux if s_aux is not None else kwargs.get("sinks"),
        dropout=lambda p: nn.functional.dropout(p, p=dropout, training=module.training),
        scale=query.shape[-1] ** -0.5 if scaling is None else scaling,
        training=module.training and dropout > 0,
    )
    core.last_z = z if core.hook_head_out.active else None  # for head_out, around W_O
    return z.transpose(1, 2).contiguous(), pattern


def _mask_and_bias(attention_mask: torch.Tensor | None, n_keys: int, checks=None):
    """(bool mask, additive bias), cut to ``n_keys`` keys (some families hand over a mask as long as the
    static cache). A mask that only allows or blocks keys becomes a bool mask; one that also carries
    position biases (Falcon's ALiBi from transformers 5.25) is added to the scores whole, as eager adds it."""
    from probe.core.adapters.base import bool_mask

    if attention_mask is not None and attention_mask.shape[-1] != n_keys:
        attention_mask = attention_mask[..., :n_keys]
    try:
        return bool_mask(attention_mask, checks), None
    except ValueError:
        return None, attention_mask


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


# The core's arithmetic switches a family's eager function may call for, in the order they are tried.
CANDIDATE_NUMERICS = (
    {"softmax_in_float32": True, "scores_in_float32": False},  # Llama & co.
    {"softmax_in_float32": False, "scores_in_float32": False},
    {"softmax_in_float32": True, "scores_in_float32": "matmul"},  # GPT-J-like: q and k upcast first
    {"softmax_in_float32": False, "scores_in_float32": "matmul"},
)
# Each choice above rounds differently in half precision (forward or backward), so tiny inputs in these
# dtypes tell them apart. Not autocast: there the eager mask's dtype decides the softmax's, which probe's
# bool mask does not repeat (nor does the parity suite test it).
TRIAL_DTYPES = (torch.bfloat16, torch.float16)
TRIAL_QUERIES = 5


@dataclass(frozen=True)
class Trial:
    """What an attention module hands its attention function, as far as the arithmetic goes."""

    n_heads: int
    n_kv_heads: int
    head_dim: int
    scaling: float
    softcap: float | None
    sinks: bool

    @classmethod
    def of(cls, attention: nn.Module) -> "Trial":
        config = getattr(attention, "config", None)
        n_heads = getattr(attention, "num_heads", None) or getattr(config, "num_attention_heads", 1)
        head_dim = getattr(attention, "head_dim", None) or getattr(attention, "attention_head_size", None)
        head_dim = head_dim or getattr(config, "hidden_size", n_heads) // n_heads
        scaling = getattr(attention, "scaling", None)
        return cls(
            n_heads=n_heads,
            n_kv_heads=n_heads // getattr(attention, "num_key_value_groups", 1),
            head_dim=head_dim,
            scaling=head_dim**-0.5 if not isinstance(scaling, float) else scaling,
            softcap=getattr(attention, "attn_logit_softcapping", None) or None,
            sinks=isinstance(getattr(attention, "sinks", None), torch.Tensor),
        )


_LEARNED: dict[tuple, dict] = {}  # (attention class, Trial) → numerics: every block asks, one trial answers


def numerics_of(attention: nn.Module) -> dict:
    """How ``attention``'s family computes eager attention, learned from what its eager function does.

    Its eager function and the core each attend over the same tiny random queries, keys and values (in
    the half dtypes); the first of CANDIDATE_NUMERICS whose output, pattern and gradients equal eager's
    bit for bit is the answer. Returns the core's switches (``softmax_in_float32``,
    ``scores_in_float32``); raises UnsupportedNumerics when none reproduces the family.
    """
    key = (type(attention), Trial.of(attention))
    if key not in _LEARNED:
        _LEARNED[key] = learn_numerics(attention, eager_function_of(type(attention)))
    return dict(_LEARNED[key])


def learn_numerics(attention: nn.Module, eager) -> dict:
    """The core's switches that make it attend as ``eager`` (a Hugging Face attention function) does for
    ``attention``, tried on a tiny input; UnsupportedNumerics when none does."""
    name, trial = type(attention).__name__, Trial.of(attention)
    generator = torch.Generator().manual_seed(0)  # its own generator: the global random state stays as it was
    cases = [_trial_inputs(trial, dtype, generator) for dtype in TRIAL_DTYPES]
    try:
        expected = [_observe(i, _call_eager, eager, TrialModule(attention, i["sinks"]), trial) for i in cases]
    except Exception as error:  # a family's own function: whatever it raises means it can't be learned
        raise UnsupportedNumerics(f"{name}'s eager attention could not run on a tiny input: {error}") from error
    for numerics in CANDIDATE_NUMERICS:
        core = InterfaceCore(attention, numerics).eval()
        got = (_observe(i, _call_core, core, trial) for i in cases)
        if all(_same(a, b) for a, b in zip(expected, got)):
            return numerics
    raise UnsupportedNumerics(
        f"{name}'s eager attention does arithmetic probe's core does not reproduce "
        "(none of its softmax/score precisions gives the same output on a tiny input)"
    )


def _trial_inputs(trial: Trial, dtype, generator) -> dict:
    def normal(*shape, dtype=dtype):
        return (torch.randn(*shape, generator=generator) * 2).to(dtype)

    n, heads = TRIAL_QUERIES, trial.n_heads
    causal = torch.ones(n, n, dtype=torch.bool).tril()[None, None]
    return {
        "query": normal(1, heads, n, trial.head_dim),
        "key": normal(1, trial.n_kv_heads, n, trial.head_dim),
        "value": normal(1, trial.n_kv_heads, n, trial.head_dim),
        "allowed": causal,
        # Hugging Face's eager masks are additive: 0 where a key is allowed, the dtype's lowest value elsewhere.
        "additive": torch.zeros(causal.shape, dtype=dtype).masked_fill(~causal, torch.finfo(dtype).min),
        "sinks": normal(heads) if trial.sinks else None,
        # Weights of a loss on the output and the pattern, whose gradients are compared too.
        "out_weights": normal(1, n, heads, trial.head_dim, dtype=torch.float32),
        "pattern_weights": normal(1, heads, n, n, dtype=torch.float32),
    }


def _call_eager(inputs: dict, eager, module, trial: Trial):
    extra = {"softcap": trial.softcap} if trial.softcap else {}
    if trial.sinks:
        extra["s_aux"] = inputs["sinks"]
    q, k, v, mask = (inputs[n] for n in ("query", "key", "value", "additive"))
    return eager(module, q, k, v, mask, scaling=trial.scaling, dropout=0.0, **extra)


def _call_core(inputs: dict, core: "InterfaceCore", trial: Trial):
    q, k, v, allowed = (inputs[n] for n in ("query", "key", "value", "allowed"))
    z, pattern = core.attend(q, k, v, allowed, causal=False, softcap=trial.softcap, sinks=inputs["sinks"],
                             scale=trial.scaling, training=False)
    return z.transpose(1, 2).contiguous(), pattern


def _observe(inputs: dict, call, *args) -> tuple:
    """What ``call`` gives: its output and pattern, and the gradients a loss on them sends back to q, k
    and v. The gradients tell a softmax in float32 from one in the half dtype even where the CPU rounds
    their outputs alike (the backward reads the unrounded float32 pattern)."""
    leaves = {n: inputs[n].detach().clone().requires_grad_() for n in ("query", "key", "value")}
    with torch.enable_grad():
        out, pattern = call({**inputs, **leaves}, *args)
        loss = (out.float() * inputs["out_weights"]).sum() + (pattern.float() * inputs["pattern_weights"]).sum()
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return (out.detach(), pattern.detach(), *grads)


def _same(a: tuple, b: tuple) -> bool:
    return all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b, strict=True))


class TrialModule:
    """The attention module as its eager function sees it during a trial: the module's own attributes,
    but not training (no dropout, no random numbers drawn) and the trial's sinks, on the CPU."""

    def __init__(self, module: nn.Module, sinks: torch.Tensor | None):
        self.module, self.sinks, self.training = module, sinks, False

    def __getattr__(self, name):  # only for what __init__ did not set
        return getattr(self.module, name)


@functools.lru_cache(maxsize=None)
def eager_function_of(attention_class: type):
    """The ``eager_attention_forward`` beside an attention class, which its forward falls back on."""
    eager = getattr(inspect.getmodule(attention_class), "eager_attention_forward", None)
    if eager is None:
        raise UnsupportedNumerics(f"{attention_class.__name__}'s module has no eager_attention_forward to follow")
    return eager


@functools.lru_cache(maxsize=None)  # asked for every block of every model: read each class's source once
def calls_the_interface(attention_class: type) -> bool:
    """Whether this attention module's forward dispatches through Hugging Face's attention interface."""
    try:
        source = inspect.getsource(attention_class.forward)
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source
