"""Which device a run uses: ``auto`` (CUDA if present, then Apple's MPS, else the CPU), ``cpu``,
``cuda``, ``cuda:N`` or ``mps`` — checked before any model work, with a message naming the option."""

from __future__ import annotations

import re

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
DTYPE_NAMES = ("float32", "float16", "bfloat16")


def parse_dtype(name: str):
    """The torch dtype a config's ``dtype`` names, or a ValueError listing the names."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def resolve_device(spec: str, option: str = "device"):
    """The torch.device ``spec`` names on this machine, or a ValueError naming ``option`` and what exists."""
    import torch

    if not DEVICE_PATTERN.fullmatch(spec):
        raise ValueError(f"{option}: {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if spec.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= count:
            have = f"{count} CUDA device(s) (cuda:0..cuda:{count - 1})" if count else "no CUDA device"
            raise ValueError(f"{option}: {spec!r} asked for, but this machine has {have}; use auto or cpu")
    if spec == "mps" and not _mps_available():
        raise ValueError(f"{option}: 'mps' asked for, but Apple's MPS is not available here; use auto or cpu")
    return torch.device(spec)


def _mps_available() -> bool:
    import torch

    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def device_of(model):
    """Where a model's inputs go: the device of its first parameter (the embeddings), or, for a model
    accelerate spread over devices, the first device of its map that is not the disk."""
    import torch

    placed = [d for d in (getattr(model, "hf_device_map", None) or {}).values() if d != "disk"]
    if getattr(model, "hf_device_map", None):
        first = placed[0] if placed else "cpu"
        return torch.device(f"cuda:{first}" if isinstance(first, int) else first)
    return next(model.parameters()).device


def on_device(tensors: dict, device) -> dict:
    """A batch's named tensors (input_ids, attention_mask, …) moved to ``device``."""
    return {name: values.to(device) for name, values in tensors.items()}


def check_dtype(dtype: str, device, option: str = "dtype") -> None:
    """A ValueError naming ``option`` when ``device`` cannot compute in ``dtype`` (bfloat16 on a GPU older
    than Ampere, or on an MPS device whose macOS lacks it); the CPU does every dtype probe offers."""
    import torch

    if dtype != "bfloat16" or device.type == "cpu":
        return
    if device.type == "cuda" and not torch.version.hip and torch.cuda.get_device_capability(device)[0] < 8:
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"{option}: {device} ({name}) cannot compute in bfloat16 (it needs an Ampere GPU or "
                         "newer); use float16 or float32")
    if device.type == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device) * 2
        except (RuntimeError, TypeError):
            raise ValueError(f"{option}: this MPS device cannot compute in bfloat16; use float16 or float32") from None
