"""probe's own reader of a GGUF file (the format llama.cpp publishes: a header, metadata key/values, tensor
infos, then the tensors' data, aligned).

gguf's ``GGUFReader`` builds a Python object per part of every metadata value and slices a numpy memmap per
vocabulary string (SmolLM2: about 150,000 of them, seconds per read); this reader decodes the values once,
straight from the bytes, and leaves each tensor a view of the file's map. Only files in the machine's
little-endian order, versions 2 and 3 (version 1 counted in 32 bits and is no longer written).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from probe.errors import UserError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Metadata value types (the format's numbering): the fixed-size ones and how struct reads them.
STRING, ARRAY = 8, 9
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
NUMPY_SCALARS = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "?", 10: "<u8",
                 11: "<i8", 12: "<f8"}


class GGUFFormatError(UserError, ValueError):
    """The file is not a GGUF file this reader understands."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order: the format lists the fastest-varying dimension first
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass(frozen=True)
class GGUFFile:
    path: Path
    metadata: dict  # key → a Python value: int, float, bool, str, or a list of them for an array
    tensors: tuple[TensorInfo, ...]
    data_start: int

    def tensor_data(self, info: TensorInfo) -> np.ndarray:
        """The stored tensor as gguf's reader gives it: float32/float16 values in ``info.shape``, or for a
        block-quantized type, rows of raw bytes (``shape[:-1] + (bytes per row,)``) for ``gguf.dequantize``."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

        kind = GGMLQuantizationType(info.ggml_type)
        block_size, type_size = GGML_QUANT_SIZES[kind]
        plain = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}.get(kind)
        rows, last = info.shape[:-1], info.shape[-1]
        if plain is not None:
            shape, dtype = info.shape, plain
        else:
            if last % block_size:
                raise GGUFFormatError(f"{self.path}: tensor {info.name} rows of {last} do not split into "
                                      f"{kind.name} blocks of {block_size}")
            shape, dtype = (*rows, last // block_size * type_size), np.uint8
        count = int(np.prod(shape))
        start = self.data_start + info.offset
        mapped = np.memmap(self.path, mode="r", dtype=np.uint8)
        if start + count * np.dtype(dtype).itemsize > len(mapped):
            raise GGUFFormatError(f"{self.path}: the file ends inside tensor {info.name}")
        return np.frombuffer(mapped, dtype=dtype, count=count, offset=start).reshape(shape)


def read_gguf(path: str | Path) -> GGUFFile:
    """The metadata and tensor infos of the GGUF file at ``path`` (the data stays on disk)."""
    path = Path(path)
    reader = _Reader(memoryview(np.memmap(path, mode="r", dtype=np.uint8)) if path.stat().st_size else b"", path)
    if reader.take(4) != MAGIC:
        raise GGUFFormatError(f"{path}: not a GGUF file (it does not start with {MAGIC!r})")
    version = reader.scalar("<I")
    if version not in VERSIONS:
        raise GGUFFormatError(f"{path}: GGUF version {version}; this reader knows versions {VERSIONS}")
    tensor_count, key_count = reader.scalar("<Q"), reader.scalar("<Q")
    metadata = {}
    for _ in range(key_count):
        key = reader.string()
        metadata[key] = reader.value(reader.scalar("<I"))
    tensors = []
    for _ in range(tensor_count):
        name = reader.string()
        dims = [reader.scalar("<Q") for _ in range(reader.scalar("<I"))]
        ggml_type, offset = reader.scalar("<I"), reader.scalar("<Q")
        tensors.append(TensorInfo(name, tuple(reversed(dims)), ggml_type, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    data_start = -(-reader.position // alignment) * alignment
    return GGUFFile(path, metadata, tuple(tensors), data_start)


class _Reader:
    """A position in the file's bytes, and the format's values read from there."""

    def __init__(self, data, path: Path):
        self.data, self.path, self.position = data, path, 0

    def take(self, n: int) -> bytes:
        if self.position + n > len(self.data):
            raise GGUFFormatError(f"{self.path}: the file ends inside its header")
        chunk = bytes(self.data[self.position:self.position + n])
        self.position += n
        return chunk

    def scalar(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.position + size > len(self.data):
            raise GGUFFormatError(f"{self.path}: the file ends inside its header")
        (value,) = struct.unpack_from(fmt, self.data, self.position)
        self.position += size
        return value

    def string(self) -> str:
        return self.take(self.scalar("<Q")).decode("utf-8")

    def value(self, kind: int):
        if kind in SCALARS:
            return self.scalar(SCALARS[kind])
        if kind == STRING:
            return self.string()
        if kind == ARRAY:
            item_kind, count = self.scalar("<I"), self.scalar("<Q")
            if item_kind in NUMPY_SCALARS:  # numbers: one read for the whole array
                items = np.frombuffer(self.data, NUMPY_SCALARS[item_kind], count, self.position)
                self.position += items.nbytes
                return items.tolist()
            return [self.value(item_kind) for _ in range(count)]
        raise GGUFFormatError(f"{self.path}: unknown metadata value type {kind} at byte {self.position}")
