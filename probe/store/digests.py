"""File digests remembered per file version, so that a large file is hashed once, not on every run.

A digest is kept in a memo folder with the file's size, modification time (ns) and inode, and read back
while those are unchanged, as git's index trusts a file's stat. Standard library only: a rerun that
checks its inputs this way imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path


def remembered_sha256(path: Path, memo_folder: Path) -> str:
    """``file_sha256(path)``, hashed once per version of the file: the digest is kept in ``memo_folder`` with the
    file's size, modification time (ns) and inode, and read back while those are unchanged — as git's index
    trusts a file's stat. Hashing reads the whole file (about 1.5 GB/s here: 3 s for a 4 GB GGUF file)."""
    from probe.store.files import read_json_or_none

    path = Path(path).resolve()
    try:
        known = read_json_or_none(_memo(path, memo_folder))
    except OSError:  # a memo this user can't read: hash the file, as if there were none
        known = None
    if isinstance(known, dict) and known.get("file") == _version(path) and isinstance(known.get("sha256"), str):
        return known["sha256"]
    digest = file_sha256(path)
    remember_sha256(path, memo_folder, digest)
    return digest


def remember_sha256(path: Path, memo_folder: Path, digest: str) -> None:
    """Keep ``digest`` as the SHA-256 of the file at ``path`` as it is now (its size, mtime and inode)."""
    from probe.store.files import DiskFull, write_text_atomic

    path = Path(path).resolve()
    with contextlib.suppress(OSError, DiskFull):  # a cache it can't write to: the digest is computed again next time
        write_text_atomic(_memo(path, memo_folder), json.dumps({"file": _version(path), "sha256": digest}))


def _version(path: Path) -> dict:
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def _memo(path: Path, memo_folder: Path) -> Path:
    return Path(memo_folder) / f"{hashlib.sha256(str(path).encode()).hexdigest()[:20]}.json"


def weights_fingerprint(model_path: str | Path, memo_folder: Path) -> str:
    """What a local model's weights are, by content: each file's name and SHA-256 (a folder's files, or the
    one file), hashed once per file version (``remembered_sha256``); empty for a hub name. Other weights of
    the same size and time (a retrained folder, a file copied over) give another fingerprint."""
    path = Path(model_path)
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path] if path.is_file() else []
    return ";".join(f"{p.name}:{remembered_sha256(p, memo_folder)}" for p in files)


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
