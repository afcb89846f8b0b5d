"""One layer's vectors as one file in dataset order, read back memory-mapped: fitting reads what it needs
from the page cache instead of holding every layer's (rows × width) matrix in the process.

A matrix is built once from its feature chunks (chunk by chunk, so building it needs no more memory than
a chunk) and proves what it is, as every cache entry does: beside ``NAME.npy`` lies ``NAME.json`` with the
key it was written under (its folder's name and its own), the SHA-256 of the file, and the digest of the
chunks it was built from. A matrix whose file, key or chunks differ is named in a warning and built again.

``read_rows`` reads a block of rows through a map of just their span, dropped once they are copied: a
streaming fit over a memory-mapped matrix then keeps one block resident, not the whole file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from probe.store.chunks import chunk_key
from probe.store.files import read_json_or_none, write_atomic, write_text_atomic

log = logging.getLogger("probe")


def open_matrix(path: Path, sources: str) -> np.memmap | None:
    """The matrix at ``path`` mapped read-only, if it proves to be the one built from ``sources`` (the
    digest of its chunks); None when it is missing, and when it is damaged (then with a warning, removed)."""
    proof = read_json_or_none(_proof_path(path))
    if not path.exists() or proof is None:
        return None
    why = None
    if proof.get("key") != chunk_key(path):
        why = "it was written under another key"
    elif proof.get("sources") != sources:
        why = "its feature chunks were extracted again since"
    elif proof.get("sha256") != file_digest(path):
        why = "its contents differ from the checksum recorded when it was written"
    if why is not None:
        log.warning("feature matrix %s can't be used (%s); building it again from the chunks", path, why)
        path.unlink(missing_ok=True)
        return None
    return np.load(path, mmap_mode="r")


def write_matrix(path: Path, shape: tuple[int, int], blocks: Iterable[tuple[np.ndarray, np.ndarray]],
                 sources: str) -> np.memmap:
    """Fill a float32 matrix of ``shape`` from ``blocks`` of (row numbers, vectors), write it atomically
    with its proof, and map it; each block is written as it comes."""

    def fill(tmp: Path) -> None:
        # Written with positioned writes, not through a writable map: a map's dirty pages count in this
        # process's resident memory until it is closed (the whole matrix, 154 MB at 100,000 rows).
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": tuple(shape)}
        row_bytes = 4 * int(np.prod(shape[1:], dtype=np.int64))
        with open(tmp, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, header)
            start = handle.tell()
            handle.truncate(start + shape[0] * row_bytes)
            for rows, vectors in blocks:
                _write_rows(handle, start, row_bytes, np.asarray(rows), vectors)

    write_atomic(path, fill)
    proof = {"key": chunk_key(path), "sha256": file_digest(path), "sources": sources}
    write_text_atomic(_proof_path(path), json.dumps(proof, sort_keys=True))
    return np.load(path, mmap_mode="r")


def _write_rows(handle, start: int, row_bytes: int, rows: np.ndarray, vectors: np.ndarray) -> None:
    """Write ``vectors`` at their ``rows`` of the matrix whose data begins at byte ``start``: the rows sorted,
    and each run of consecutive rows in one write."""
    if len(rows) == 0:
        return
    order = np.argsort(rows, kind="stable")
    rows, vectors = rows[order], np.ascontiguousarray(vectors[order], dtype=np.float32)
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    for first, end in zip([0, *breaks.tolist()], [*breaks.tolist(), len(rows)]):
        handle.seek(start + int(rows[first]) * row_bytes)
        handle.write(memoryview(vectors[first:end]).cast("B"))


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes, read a block at a time (the file is never mapped whole)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _proof_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``X[rows]`` as an array in memory. For a matrix mapped whole from its file (``open_matrix``), only the
    span from the first to the last of ``rows`` is mapped, and unmapped once they are copied, so the pages
    read do not stay in this process."""
    rows = np.asarray(rows)
    if len(rows) == 0 or not _mapped_whole(X):
        return np.asarray(X[rows])
    first, last = int(rows.min()), int(rows.max())
    row_bytes = X.dtype.itemsize * int(np.prod(X.shape[1:], dtype=np.int64))
    span = np.memmap(X.filename, dtype=X.dtype, mode="r", offset=X.offset + first * row_bytes,
                     shape=(last - first + 1, *X.shape[1:]))
    block = np.array(span[rows - first])
    del span  # the last reference: the span is unmapped here
    return block


def _mapped_whole(X) -> bool:
    """Whether ``X`` is a memmap of a whole file (as ``np.load(..., mmap_mode)`` gives), not a view of one,
    whose ``offset`` would not be where its first row starts."""
    return isinstance(X, np.memmap) and isinstance(X.base, mmap.mmap) and X.filename is not None \
        and X.flags.c_contiguous


def blocks_of(rows: np.ndarray, block_rows: int) -> list[np.ndarray]:
    """``rows`` cut in order into blocks of at most ``block_rows``."""
    return [rows[start : start + block_rows] for start in range(0, len(rows), block_rows)]
