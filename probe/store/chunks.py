"""Feature-cache chunks that can't lie: each file carries the SHA-256 of its tensors and the key it was
written under (its folder's name, which is the cache key, and its own name), recorded when it is written and
checked before a run uses it. A truncated, overwritten, foreign or moved chunk is named, removed and
extracted again; it is never read as if nothing happened."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save

from probe.store.files import write_bytes_atomic, write_text_atomic

# The safetensors metadata entry holding, as one JSON object (one entry: safetensors writes several in no
# fixed order, and a chunk's bytes must not depend on the process), the key and the tensors' checksum.
PROOF = "probe"
log = logging.getLogger("probe")


def write_chunk(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write ``tensors`` with their checksum and key, atomically: readers see the whole chunk or none. Made
    in memory, then written by Python, so that a full disk is an OSError (DiskFull), not safetensors' own."""
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    proof = json.dumps({"key": chunk_key(path), "sha256": tensors_digest(tensors)}, sort_keys=True)
    write_bytes_atomic(path, save(tensors, metadata={PROOF: proof}))


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
            proof = (chunk.metadata() or {}).get(PROOF)
            tensors = {name: chunk.get_tensor(name) for name in chunk.keys()}
    except Exception as error:  # truncated or garbled: safetensors can't even parse it
        return f"it can't be read ({type(error).__name__}: {error})"
    try:
        proof = json.loads(proof) if proof is not None else {}
    except ValueError:
        proof = None
    if not isinstance(proof, dict) or "sha256" not in proof:
        return "it carries no checksum (written by an older probe)"
    if proof.get("key") != chunk_key(path):
        return "it was written under another key" if proof.get("key") else "it carries no key (an older probe's)"
    if tensors_digest(tensors) != proof["sha256"]:
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
