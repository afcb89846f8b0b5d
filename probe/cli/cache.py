"""What a cache folder holds and how much disk each part takes (`probe cache`): converted GGUF checkpoints
are float32, four to eight times their file, and extracted vectors grow with rows × layers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

# One cache per user, shared by runs from any folder (probe.store.usage says where).
cache_dir_option = click.option(
    "--cache-dir", type=click.Path(file_okay=False),
    help="Cache folder [default: $PROBE_CACHE, else $XDG_CACHE_HOME/probe, else ~/.cache/probe].",
)

# What each top-level folder of a cache holds, for the listing.
PARTS = {
    "models": "GGUF checkpoints converted to safetensors",
    "features": "extracted vectors, one folder per model × rows × settings",
    "probes": "cross-validated predictions of fitted probes",
    "attention": "attention patterns of the example sentences",
    "figures": "drawn figures",
    "offload": "weights accelerate offloaded to disk",
    "locks": "lock files of runs sharing the cache",
}


@dataclass(frozen=True)
class Part:
    name: str
    bytes: int
    entries: int
    what: str


@dataclass(frozen=True)
class ConvertedModel:
    folder: Path
    bytes: int
    source: str | None  # the GGUF file it was converted from, when this cache remembers it


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def parts(cache_dir: Path) -> list[Part]:
    """Each top-level folder of the cache, the known ones first, in PARTS' order; an entry is what the folder
    holds (models: converted checkpoints), hidden files left out."""
    order = list(PARTS)
    folders = sorted((p for p in cache_dir.iterdir() if p.is_dir()),
                     key=lambda p: (order.index(p.name) if p.name in PARTS else len(order), p.name))
    return [Part(p.name, folder_bytes(p), _entries(p), PARTS.get(p.name, "")) for p in folders]


def _entries(folder: Path) -> int:
    if folder.name == "models":
        return len(_converted_folders(folder))
    return sum(1 for p in folder.iterdir() if not p.name.startswith("."))


def _converted_folders(models: Path) -> list[Path]:
    from probe.store.conversions import is_converted

    return [p for p in models.iterdir() if p.is_dir() and is_converted(p)]


def converted_models(cache_dir: Path) -> list[ConvertedModel]:
    """The converted checkpoints in ``cache_dir/models``, largest first, each with the GGUF file it came from
    when the digest memo that named it is there (for this transformers version)."""
    from probe.store.conversions import conversion_sources

    models = cache_dir / "models"
    if not models.is_dir():
        return []
    sources = conversion_sources(models)
    found = [ConvertedModel(p, folder_bytes(p), sources.get(p.name.rsplit("-", 1)[-1]))
             for p in _converted_folders(models)]
    return sorted(found, key=lambda m: -m.bytes)


def human(n: float) -> str:
    """Bytes in decimal units: 980 B, 1.2 MB, 28.3 GB."""
    for unit in ("B", "KB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"
