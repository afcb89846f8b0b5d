"""``max_memory`` checked before any weights are read: each device it names exists, each size parses, and
together they can hold the model (its size estimated from its config, on the meta device: no weights).

Disk offload is asked for by naming ``disk``: ``{0: 20GiB, cpu: 60GiB, disk: 200GiB}`` lets accelerate
put what the GPU and the CPU cannot hold in a folder of the cache; without ``disk``, the limits given must
hold the whole model, or the run is refused with the numbers.
"""

from __future__ import annotations

from probe.store.files import human_bytes

NAMED_DEVICES = ("cpu", "mps", "disk")


def check_max_memory(max_memory: dict, model_config, dtype: str, option: str = "max_memory") -> dict[str, int]:
    """Each entry in bytes; a ValueError naming ``option`` when an entry is malformed, names a device this
    machine lacks, or the entries cannot hold the model in ``dtype``."""
    limits = {key: _bytes(key, value, option) for key, value in max_memory.items()}
    for key in limits:
        _check_device(key, option)
    needed = model_bytes(model_config, dtype)
    total = sum(limits.values())
    if total < needed:
        given = ", ".join(f"{key}: {human_bytes(size, binary=True)}" for key, size in limits.items())
        hint = "raise a limit" if "disk" in limits else "raise a limit, or add a disk entry to offload the rest"
        raise ValueError(
            f"{option} ({given}) holds {human_bytes(total, binary=True)} in all, but the model needs about {human_bytes(needed, binary=True)} in "
            f"{dtype}; {hint}"
        )
    return limits


def model_bytes(model_config, dtype: str) -> int:
    """The base model's parameters and buffers in ``dtype``, from an empty-weights model (nothing is read)."""
    from accelerate import init_empty_weights
    from accelerate.utils import compute_module_sizes
    from transformers import AutoModel

    from probe.scale.devices import parse_dtype

    with init_empty_weights(include_buffers=False):
        model = AutoModel.from_config(model_config)
    return int(compute_module_sizes(model, dtype=parse_dtype(dtype))[""])


def _bytes(key, value, option: str) -> int:
    from accelerate.utils import convert_file_size_to_int

    try:
        size = convert_file_size_to_int(value)
    except (ValueError, TypeError):
        size = -1
    if size < 0:
        raise ValueError(f"{option}[{key!r}]: {value!r} is not a size; write e.g. 20GiB, 500MB or 1024")
    return size


def _check_device(key, option: str) -> None:
    import torch

    if isinstance(key, int):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not 0 <= key < count:
            have = f"{count} CUDA device(s) (0..{count - 1})" if count else "no CUDA device"
            raise ValueError(f"{option} names GPU {key}, but this machine has {have}")
    elif key not in NAMED_DEVICES:
        raise ValueError(f"{option} names {key!r}; name a GPU by its number, or cpu, mps or disk")
    elif key == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"{option} names 'mps', but Apple's MPS is not available here")
