"""Hook points beyond attention, named the same in every family through its spec.

    embed                  token embeddings (before any position embedding is added)
    blocks.{i}.ln1.out     the norm in front of attention
    blocks.{i}.resid_mid   between attention and MLP: resid_pre + attn.out (sequential pre-norm blocks)
    blocks.{i}.ln2.out     the norm in front of the MLP
    blocks.{i}.mlp.out     the MLP's output, before it joins the residual stream
    ln_final.out           the norm after the last block

Each point reads and may replace its tensor. A point exists only where the family's spec names the
module (its FamilySpec, probe/core/adapters/spec.py): a parallel block (GPT-J, Phi) has no resid_mid and no ln2.
"""

from __future__ import annotations

from torch import nn

from probe.core.adapters.spec import SPECS, FamilySpec, module_at
from probe.core.hooks import HookPoint


def spec_of(model: nn.Module, adapter) -> FamilySpec | None:
    """The spec ``adapter`` swaps ``model`` by; an adapter that has none: probe's for the model type."""
    if hasattr(adapter, "spec_for"):
        return adapter.spec_for(model)
    return SPECS.get(getattr(getattr(model, "config", None), "model_type", None))


def add_model_points(model: nn.Module, adapter, state) -> None:
    base = getattr(model, "base_model", model)
    spec = spec_of(model, adapter)
    embeddings = base.get_input_embeddings() if hasattr(base, "get_input_embeddings") else None
    _output_point(embeddings, "embed", state)
    if spec is None:
        return
    _output_point(module_at(base, spec.final_norm), "ln_final.out", state)
    for i, block in enumerate(adapter.blocks(model)):
        for field in ("ln1", "ln2", "mlp"):
            _output_point(module_at(block, getattr(spec, field)), f"blocks.{i}.{field}.out", state)
        ln2 = module_at(block, spec.ln2)
        if spec.sequential_pre_norm and ln2 is not None:
            _resid_mid_point(block, ln2, f"blocks.{i}.resid_mid", state)


def _output_point(module: nn.Module | None, name: str, state) -> None:
    if module is None:
        return
    point = HookPoint(name)
    module.__dict__["_probe_out_point"] = point
    state.hook_points[name] = point
    state.torch_handles.append(module.register_forward_hook(_fire_on_output))
    state.undo.append(lambda: module.__dict__.pop("_probe_out_point", None))


def _fire_on_output(module, args, output):
    point = module.__dict__.get("_probe_out_point")
    if point is None or not point.active:
        return None
    if isinstance(output, tuple):  # mixtures of experts also return their router logits
        return (point(output[0]), *output[1:])
    return point(output)


def _resid_mid_point(block: nn.Module, ln2: nn.Module, name: str, state) -> None:
    """Read at ln2's input, which is exactly resid_pre + attn.out. A replacement goes into ln2 as it is,
    and into the residual stream as a correction added to the block's output (one rounding)."""
    point = HookPoint(name)

    def read(module, args):
        if not point.active:
            return None
        mid = args[0]
        edited = point(mid)
        if edited is mid:
            return None
        block.__dict__["_probe_mid_delta"] = edited - mid
        return (edited, *args[1:])

    def correct(module, args, output):
        delta = block.__dict__.pop("_probe_mid_delta", None)
        if delta is None:
            return None
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    state.hook_points[name] = point
    state.torch_handles.append(ln2.register_forward_pre_hook(read))
    state.torch_handles.append(block.register_forward_hook(correct))
