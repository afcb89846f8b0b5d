"""How converted GGUF checkpoints are named and recognised in a cache, apart from the conversion itself so
that `probe cache` can list them without importing torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def is_converted(folder: Path) -> bool:
    """Whether ``folder`` is a finished conversion: it appears in one rename, complete, config.json and all."""
    return (folder / "config.json").exists()


def conversion_key(digest: str) -> str:
    """The end of a converted folder's name: the GGUF file's SHA-256 and the transformers version that
    converted it (another version may convert differently)."""
    from importlib.metadata import version

    return hashlib.sha256(f"{digest}:{version('transformers')}".encode()).hexdigest()[:20]


def conversion_sources(cache_root: Path) -> dict[str, str]:
    """``conversion_key`` → the GGUF file it was made from, for the files whose digest ``cache_root`` remembers."""
    sources = {}
    for memo in (Path(cache_root) / "digests").glob("*.json"):
        try:
            known = json.loads(memo.read_text(encoding="utf-8"))
            if str(known["file"]["path"]).endswith(".gguf"):  # the others are of converted or local weights
                sources[conversion_key(known["sha256"])] = known["file"]["path"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sources
