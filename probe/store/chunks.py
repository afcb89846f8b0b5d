"""Feature-cache chunks that can't lie: each file carries the SHA-256 of its tensors and the key it was
written under (its folder's name, which is the cache key, and its own name), recorded when it is written and
checked before a run uses it. A truncated, overwritten, foreign or moved chunk is named, removed and
extracted again; it is never read as if nothing happened."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from probe.store.files import write_bytes_atomic, write_text_atomic

DIGEST = "sha256"  # the safetensors metadata key holding the tensors' checksum
KEY = "key"  # and the one holding the key it was written under
log = logging.getLogger("probe")


def write_chunk(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` with their checksum and key, atomically: readers see the whole chunk or none. Made
    in memory, then written by Python, so that a full disk is an OSError (DiskFull), not safetensors' own."""
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    write_bytes_atomic(path, save(tensors, metadata={DIGEST: tensors_digest(tensors), KEY: chunk_key(path)}))


def chunk_key(path: Path) -> str:
    """What a chunk proves it is: its cache folder's name (the features' key) and its own name."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}"


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over each tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def damage(path: Path) -> str | None:
    """Why the chunk at ``path`` can't be trusted, or None when its tensors match their checksum."""
    try:
        with safe_open(str(path), framework="pt") as chunk:
            metadata = chunk.metadata() or {}
            recorded = metadata.get(DIGEST)
            tensors = {name: chunk.get_tensor(name) for name in chunk.keys()}
    except Exception as error:  # truncated or garbled: safetensors can't even parse it
        return f"it can't be read ({type(error).__name__}: {error})"
    if recorded is None:
        return "it carries no checksum (written by an older probe)"
    if metadata.get(KEY) != chunk_key(path):
        return "it was written under another key" if metadata.get(KEY) else "it carries no key (an older probe's)"
    if tensors_digest(tensors) != recorded:
        return "its contents differ from the checksum recorded when it was written"
    return None


def drop_damaged(folder: Path, pattern: str = "chunk-*.safetensors") -> list[Path]:
    """Check every chunk in ``folder``; remove the damaged ones (and the folder's ``complete.json``, so
    they are extracted again), warning with each one's name. Returns the chunks removed."""
    removed = []
    for path in sorted(folder.glob(pattern)):
        reason = damage(path)
        if reason is not None:
            log.warning("cache chunk %s is damaged (%s); extracting its rows again", path, reason)
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        (folder / "complete.json").unlink(missing_ok=True)
    return removed


def mark_complete(folder: Path, text: str) -> None:
    write_text_atomic(folder / "complete.json", text)  # creates the folder if need be
