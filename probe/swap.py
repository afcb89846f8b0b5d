"""Swap a loaded model's attention modules for probe's reimplementation, and back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn

from probe.attention import STEPS
from probe.hooks import HookPoint

# PyTorch keeps a module's hooks in these dicts; a swap carries them over so that Hugging Face's
# output_attentions recorder (and any user hook) keeps firing on the replacement.
_TORCH_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
)


@dataclass
class SwapState:
    originals: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)
    hook_points: dict[str, HookPoint] = field(default_factory=dict)
    torch_handles: list = field(default_factory=list)
    blocks: list = field(default_factory=list)


def swap_attention(model: nn.Module) -> nn.Module:
    """Replace every attention module of ``model`` with probe's; parameters are shared, not copied.

    Either every attention module is replaced or none is. Returns the model (swapped in place).
    """
    from probe.adapters import adapter_for  # imports transformers' model code: only when swapping

    if getattr(model, "_probe_swap", None) is not None:
        raise ValueError(f"{type(model).__name__}'s attention is already swapped")
    adapter = adapter_for(model)
    adapter.check()
    _install_hf_output_recorders(model)

    # Build every replacement before touching the model, so a failure leaves it as it was.
    state = SwapState()
    replacements = []
    for slot in adapter.slots(model):
        original = getattr(slot.parent, slot.attr)
        if not isinstance(original, slot.expected_class):
            raise TypeError(
                f"{slot.prefix}: expected {slot.expected_class.__name__}, found {type(original).__name__}"
            )
        new = adapter.replace(original)
        for step in STEPS:
            point = getattr(new, f"hook_{step}")
            point.name = f"{slot.prefix}.{step}"
            state.hook_points[point.name] = point
        replacements.append((slot, original, new))

    for slot, original, new in replacements:
        for name in _TORCH_HOOK_DICTS:
            getattr(new, name).update(getattr(original, name))
        setattr(slot.parent, slot.attr, new)
        state.originals.append((slot.parent, slot.attr, original))
    for i, block in enumerate(adapter.blocks(model)):
        _add_residual_points(block, i, state)
    model._probe_swap = state
    return model


def restore_attention(model: nn.Module) -> nn.Module:
    """Put the original attention modules back and drop probe's hook points."""
    state = getattr(model, "_probe_swap", None)
    if state is None:
        raise ValueError(f"{type(model).__name__}'s attention is not swapped")
    for parent, attr, original in state.originals:
        setattr(parent, attr, original)
    for handle in state.torch_handles:
        handle.remove()
    for block in state.blocks:
        del block._probe_resid_pre, block._probe_resid_post
    del model._probe_swap
    return model


@contextmanager
def swapped_attention(model: nn.Module) -> Iterator[nn.Module]:
    """``with swapped_attention(model): ...`` runs the block on probe's attention, then restores."""
    swap_attention(model)
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


def _install_hf_output_recorders(model: nn.Module) -> None:
    """Let transformers attach its output_attentions recorders now, so the swap can carry them over."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:  # older layouts record attentions from the return value instead
        return
    base = getattr(model, "base_model", model)
    if hasattr(type(base), "_can_record_outputs"):
        maybe_install_capturing_hooks(base)
