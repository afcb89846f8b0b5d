"""Swap a loaded model's attention modules for probe's reimplementation, and back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from probe.core.hooks import HookPoint
from probe.core.points import add_model_points


@dataclass
class SwapState:
    adapter: object = None
    originals: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    hook_points: dict[str, HookPoint] = field(default_factory=dict)
    torch_handles: list = field(default_factory=list)
    blocks: list = field(default_factory=list)
    undo: list = field(default_factory=list)  # what restore must run, besides putting modules back
    cores: list = field(default_factory=list)  # the core of every attention, in block order
    mask_checks: object = None  # the float masks checked in the forward under way (adapters.base.MaskChecks)


def swap_attention(model: nn.Module, fast: bool = False, adapters=None) -> nn.Module:
    """Replace every attention module of ``model`` with probe's; parameters are shared, not copied.

    Either every attention module is replaced or none is. Returns the model (swapped in place).
    ``fast``: see ``set_fast_attention``; the exact path, bit-identical to eager, is the default.
    ``adapters``: the adapters to ask, in order (default: probe's built-ins; ``probe.swap_attention``
    passes the registered ones, plugins' first).
    """
    from probe.core.adapters import (
        adapter_for,  # imports transformers' model code: only when swapping
    )
    from probe.core.adapters.base import MaskChecks, scope_mask_checks

    if getattr(model, "_probe_swap", None) is not None:
        raise ValueError(f"{type(model).__name__}'s attention is already swapped")
    refuse_foreign_implementation(model)
    adapter = adapter_for(model, adapters)
    state = SwapState(adapter=adapter, mask_checks=MaskChecks())
    adapter.install(model, state)  # all or nothing: raises before touching the model
    for core in state.cores:
        core.mask_checks = state.mask_checks
    add_model_points(model, adapter, state)
    for i, block in enumerate(adapter.blocks(model)):
        _add_residual_points(block, i, state)
    state.torch_handles += scope_mask_checks(model)
    model._probe_swap = state
    return set_fast_attention(model, fast)


def set_fast_attention(model: nn.Module, enabled: bool = True) -> nn.Module:
    """While ``enabled``, each core computes steps 2–5 with torch's scaled_dot_product_attention whenever
    no hook listens to scores, masked_scores, pattern (or a family's score steps) and dropout is off:
    equal to the exact path up to rounding, faster on GPUs, and with no attention weights returned."""
    state = getattr(model, "_probe_swap", None)
    if state is None:
        raise ValueError(f"{type(model).__name__}'s attention is not swapped: call probe.swap_attention first")
    for core in state.cores:
        core.fast = enabled
    return model


# The attn_implementation values transformers itself ships; anything else was put there by another tool.
HF_IMPLEMENTATIONS = {None, "eager", "sdpa", "flex_attention", "paged|eager"} | {f"flash_attention_{n}" for n in (2, 3, 4)}


def refuse_foreign_implementation(model: nn.Module) -> None:
    current = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if current not in HF_IMPLEMENTATIONS:
        raise ValueError(
            f"{type(model).__name__}'s attention was already replaced by another tool "
            f"(attn_implementation={current!r}); load the model afresh to swap it with probe"
        )


def restore_attention(model: nn.Module) -> nn.Module:
    """Put the original attention modules back and drop probe's hook points."""
    state = getattr(model, "_probe_swap", None)
    if state is None:
        raise ValueError(f"{type(model).__name__}'s attention is not swapped")
    for parent, attr, original in state.originals:
        setattr(parent, attr, original)
    for undo in state.undo:
        undo()
    for handle in state.torch_handles:
        handle.remove()
    for block in state.blocks:
        del block._probe_resid_pre, block._probe_resid_post
    del model._probe_swap
    return model


@contextmanager
def swapped_attention(model: nn.Module, adapters=None) -> Iterator[nn.Module]:
    """``with swapped_attention(model): ...`` runs the block on probe's attention, then restores."""
    swap_attention(model, adapters=adapters)
    try:
        yield model
    finally:
        restore_attention(model)


def is_swapped(model: nn.Module) -> bool:
    return getattr(model, "_probe_swap", None) is not None


def _add_residual_points(block: nn.Module, i: int, state: SwapState) -> None:
    """blocks.{i}.resid_pre / resid_post: the residual stream entering and leaving block i."""
    # The points live on the block and the hooks find them through it, so a deepcopy of the model
    # gets points of its own.
    block._probe_resid_pre = HookPoint(f"blocks.{i}.resid_pre")
    block._probe_resid_post = HookPoint(f"blocks.{i}.resid_post")
    state.torch_handles.append(block.register_forward_pre_hook(_resid_pre_hook, with_kwargs=True))
    state.torch_handles.append(block.register_forward_hook(_resid_post_hook))
    state.hook_points[block._probe_resid_pre.name] = block._probe_resid_pre
    state.hook_points[block._probe_resid_post.name] = block._probe_resid_post
    state.blocks.append(block)


def _resid_pre_hook(block, args, kwargs):
    point = block._probe_resid_pre
    if not point.active:
        return None
    if args:
        return (point(args[0]), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": point(kwargs["hidden_states"])}


def _resid_post_hook(block, args, output):
    point = block._probe_resid_post
    if not point.active:
        return None
    if isinstance(output, tuple):
        return (point(output[0]), *output[1:])
    return point(output)
