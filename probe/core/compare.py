"""Reimplemented vs reference: run both on the same inputs and report, per transformer block, the max abs
differences of its attention output, its pattern and the hidden state it writes (block i writes layer i + 1)."""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from probe.core.adapters import adapter_for
from probe.core.swap import is_swapped

DEFAULT_TEXTS = (
    "The gardener found a mole tunnelling under the lawn.",
    "One mole of carbon weighs twelve grams.",
    "The agency suspected a mole.",
)


@dataclass
class BlockDiff:
    block: int
    attn_out: float
    pattern: float | None  # None where the reference (sdpa) or probe's fast path returns no attention weights
    hidden_state: float  # of the layer this block writes: layer block + 1

    @property
    def layer(self) -> int:
        """The hidden state whose difference ``hidden_state`` is."""
        return self.block + 1


@dataclass
class Comparison:
    reference: str
    dtype: str
    tolerance: float
    relative: bool = False  # tolerance applies to diff / max(1, largest |reference value|) of each tensor
    blocks: list[BlockDiff] = field(default_factory=list)
    logits: float | None = None
    embeddings: float = 0.0  # layer 0
    max_relative_diff: float = 0.0
    model: str = ""
    fast: bool = False  # probe's fast path ran (scaled_dot_product_attention), not the exact one

    @property
    def max_abs_diff(self) -> float:
        values = [self.embeddings] + [v for d in self.blocks for v in (d.attn_out, d.pattern, d.hidden_state)]
        values.append(self.logits)
        return max(v for v in values if v is not None)

    @property
    def passed(self) -> bool:
        measured = self.max_relative_diff if self.relative else self.max_abs_diff
        return measured <= self.tolerance

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "reference": self.reference,
            "attention_path": "fast" if self.fast else "exact",
            "dtype": self.dtype,
            "tolerance": self.tolerance,
            "tolerance_is_relative": self.relative,
            "max_abs_diff": self.max_abs_diff,
            "max_relative_diff": self.max_relative_diff,
            "passed": self.passed,
            "logits": self.logits,
            "embeddings": self.embeddings,
            "blocks": [{**asdict(d), "layer": d.layer} for d in self.blocks],
        }

    def table(self) -> str:
        rows = [f"{'block':>5}  {'attn out':>11}  {'pattern':>11}  {'writes layer':>12}  {'hidden state':>12}",
                f"{'':>5}  {'':>11}  {'':>11}  {0:>12}  {self.embeddings:>12.3g}  (the embeddings)"]
        for d in self.blocks:
            pattern = "n/a" if d.pattern is None else f"{d.pattern:.3g}"
            rows.append(f"{d.block:>5}  {d.attn_out:>11.3g}  {pattern:>11}  {d.layer:>12}  {d.hidden_state:>12.3g}")
        if self.logits is not None:
            rows.append(f"logits max abs diff: {self.logits:.3g}")
        verdict = "PASS" if self.passed else "FAIL"
        measured = (f"max relative diff {self.max_relative_diff:.3g} (max abs diff {self.max_abs_diff:.3g})"
                    if self.relative else f"max abs diff {self.max_abs_diff:.3g}")
        kind = "relative tolerance" if self.relative else "tolerance"
        path = "probe's fast path" if self.fast else "probe's exact path"
        rows.append(f"{verdict}: {measured}, {path} vs reference {self.reference} ({self.dtype}), {kind} {self.tolerance:g}")
        return "\n".join(rows)


def default_tolerance(reference: str, dtype: torch.dtype, fast: bool = False) -> tuple[float, bool]:
    """(tolerance, relative?): exact against eager at any dtype. sdpa (or probe's fast path) sums in
    another order, so allow rounding noise relative to each tensor's scale: trained models carry
    activations in the thousands."""
    if reference == "eager" and not fast:
        return 0.0, False
    return (1e-5 if dtype == torch.float32 else 1e-2), True


def compare_models(
    reference: nn.Module,
    candidate: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    reference_name: str = "eager",
    tolerance: float | None = None,
    fast: bool = False,
) -> Comparison:
    """Run ``reference`` (HF attention) and ``candidate`` (swapped) and diff them at non-padding positions."""
    if not is_swapped(candidate):
        raise ValueError("the candidate model must have probe's attention: call probe.swap_attention first")
    if is_swapped(reference):
        raise ValueError("the reference model must keep Hugging Face's attention; it is swapped")
    dtype = next(reference.parameters()).dtype
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # right for left and right padding
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if "position_ids" in inspect.signature(reference.forward).parameters:
        inputs["position_ids"] = position_ids

    ref_out, ref_attn = _run(reference, inputs)
    our_out, our_attn = _run(candidate, inputs)

    keep = attention_mask.bool()
    default, relative = default_tolerance(reference_name, dtype, fast)
    result = Comparison(
        reference=reference_name,
        dtype=str(dtype).removeprefix("torch."),
        tolerance=default if tolerance is None else tolerance,
        relative=relative and tolerance is None,
        fast=fast,
    )
    relative_diffs = []

    def _max_diff(a, b, where):
        diff, scale = _diff_and_scale(a, b, where)
        relative_diffs.append(diff / scale)
        return diff

    result.embeddings = _max_diff(ref_out.hidden_states[0], our_out.hidden_states[0], keep)
    ref_patterns = ref_out.attentions or [None] * len(ref_attn)
    our_patterns = our_out.attentions or [None] * len(our_attn)  # the fast path returns none
    for i, (ra, oa, rp, op, rh, oh) in enumerate(
        zip(ref_attn, our_attn, ref_patterns, our_patterns, ref_out.hidden_states[1:], our_out.hidden_states[1:])
    ):
        pattern = None if rp is None or op is None else _max_diff(rp, op, keep[:, None, :, None].expand_as(rp))
        result.blocks.append(BlockDiff(i, _max_diff(ra, oa, keep), pattern, _max_diff(rh, oh, keep)))
    if getattr(ref_out, "logits", None) is not None:
        result.logits = _max_diff(ref_out.logits, our_out.logits, keep)
    result.max_relative_diff = max(relative_diffs)
    return result


def _run(model: nn.Module, inputs: dict) -> tuple:
    """Forward with hidden states and attention weights, plus each self-attention block's output."""
    outputs = []
    handles = [
        module.register_forward_hook(lambda m, a, out: outputs.append(out[0]))
        for module in adapter_for(model).attention_modules(model)
    ]
    try:
        with torch.no_grad():
            out = model(**inputs, output_hidden_states=True, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()
    return out, outputs


def _diff_and_scale(a: torch.Tensor, b: torch.Tensor, keep: torch.Tensor) -> tuple[float, float]:
    """Max abs difference at the kept positions, and the tensor's scale: max(1, largest |a|)."""
    a, b = a.double()[keep], b.double()[keep]
    if not a.numel():
        return 0.0, 1.0
    value = (a - b).abs().max().item()
    return (math.inf if math.isnan(value) else value), max(1.0, a.abs().max().item())
