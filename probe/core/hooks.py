"""Named hook points: places on the forward path where a function can read or replace a tensor.

A hook function is called as ``fn(tensor, name)``. It may return ``None`` (only look) or a tensor of the
same shape (replace). A hook point with no functions attached returns its input untouched and keeps
nothing, so an unhooked model does no extra work.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch

from probe.errors import UserError

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


class HookError(UserError, ValueError):
    """A hook function returned something its hook point can't use; the message names the hook."""


class HookPoint:
    """An identity on the forward path that hook functions can watch or rewrite."""

    def __init__(self, name: str = ""):
        self.name = name
        self.fns: list[HookFn] = []

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            replacement = fn(tensor, self.name)
            if replacement is not None:
                if not isinstance(replacement, torch.Tensor) or replacement.shape != tensor.shape:
                    got = getattr(replacement, "shape", type(replacement).__name__)
                    raise HookError(
                        f"hook {_who(fn)} on {self.name!r} must return None or a tensor of shape "
                        f"{tuple(tensor.shape)}, got {got}"
                    )
                if replacement.dtype != tensor.dtype or replacement.device != tensor.device:
                    raise HookError(
                        f"hook {_who(fn)} on {self.name!r} returned a {replacement.dtype} tensor on "
                        f"{replacement.device}; it must keep its input's dtype and device ({tensor.dtype} on "
                        f"{tensor.device}), e.g. return new.to(tensor)"
                    )
                tensor = replacement
        return tensor

    @property
    def active(self) -> bool:
        return bool(self.fns)

    def add(self, fn: HookFn) -> "HookHandle":
        self.fns.append(fn)
        return HookHandle(self, fn)

    def __repr__(self) -> str:
        return f"HookPoint({self.name!r}, {len(self.fns)} hooks)"


def _who(fn) -> str:
    """A hook function's name for an error: the plugin that owns it, else its qualified name."""
    return getattr(fn, "probe_owner", None) or getattr(fn, "__qualname__", None) or repr(fn)


class HookHandle:
    """Returned by ``add_hook``; ``remove()`` detaches the function again."""

    def __init__(self, point: HookPoint, fn: HookFn):
        self.point, self.fn = point, fn

    def remove(self) -> None:
        if self.fn in self.point.fns:
            self.point.fns.remove(self.fn)


def hook_points(model: torch.nn.Module) -> dict[str, HookPoint]:
    """All hook points of a model whose attention was swapped by ``probe.swap_attention``."""
    state = getattr(model, "_probe_swap", None)
    if state is None:
        raise ValueError(
            "this model has no probe hook points: call probe.swap_attention(model) first"
        )
    return state.hook_points


def resolve(model: torch.nn.Module, pattern: str) -> list[HookPoint]:
    """Hook points whose name equals ``pattern`` or matches it as a glob (``blocks.*.attn.pattern``)."""
    points = hook_points(model)
    if pattern in points:
        return [points[pattern]]
    matched = [point for name, point in points.items() if fnmatch.fnmatchcase(name, pattern)]
    if not matched:
        raise KeyError(unknown_name_message(pattern, points))
    return matched


def unknown_name_message(name: str, points: Mapping[str, HookPoint]) -> str:
    near = difflib.get_close_matches(name, list(points), n=3)
    kinds = sorted({_kind(n) for n in points})
    hint = f" Did you mean {', '.join(near)}?" if near else ""
    return (
        f"no hook point named {name!r}.{hint} This model has {len(points)} hook points: "
        f"blocks.0..{_n_blocks(points) - 1} × {', '.join(kinds)} (see probe.hook_points(model))."
    )


def _kind(name: str) -> str:
    return name.split(".", 2)[2] if name.startswith("blocks.") else name


def _n_blocks(points: Iterable[str]) -> int:
    return 1 + max((int(n.split(".")[1]) for n in points if n.startswith("blocks.")), default=-1)


def add_hook(model: torch.nn.Module, name: str, fn: HookFn) -> list[HookHandle]:
    """Attach ``fn`` to every hook point that ``name`` names (an exact name or a glob)."""
    return [point.add(fn) for point in resolve(model, name)]


@contextmanager
def hooks(model: torch.nn.Module, fns: Mapping[str, HookFn]) -> Iterator[None]:
    """Attach hook functions by name for the duration of a ``with`` block."""
    handles: list[HookHandle] = []
    try:
        for name, fn in fns.items():
            handles += add_hook(model, name, fn)
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(
    model: torch.nn.Module, names: str | Iterable[str], detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the tensors at the named hook points: ``with capture(m, "blocks.*.attn.pattern") as seen``.

    Each name maps to the tensor of the last forward call that passed it.
    """
    seen: dict[str, torch.Tensor] = {}

    def record(tensor: torch.Tensor, name: str) -> None:
        seen[name] = tensor.detach() if detach else tensor

    names = [names] if isinstance(names, str) else list(names)
    with hooks(model, {name: record for name in names}):
        yield seen
