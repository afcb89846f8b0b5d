"""Figures drawn once: a rerun whose inputs are unchanged copies the files drawn last time instead of
drawing them again (drawing was most of a cached rerun's time). Keyed by everything a figure is drawn
from, the drawing code included; entries are folders written whole, so a reader never sees half of one."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from probe.io import umask

_DRAWING_MODULES = ("probe/report.py", "probe/report_data.py", "probe/builtin/reporters.py")


def drawing_code() -> str:
    """A digest of the source that draws the figures: a change to it draws them anew."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for name in _DRAWING_MODULES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


def drawn_before(cache_dir: Path, key: str, output_dir: Path) -> bool:
    """Copy the figures kept under ``key`` into ``output_dir``; False when there are none."""
    entry = Path(cache_dir) / "figures" / key
    if not entry.is_dir():
        return False
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in entry.iterdir():
        shutil.copyfile(path, output_dir / path.name)
    return True


def keep_drawn(cache_dir: Path, key: str, files: list[Path]) -> None:
    """Keep ``files`` under ``key``: copied into a temporary folder, which is then renamed into place."""
    entry = Path(cache_dir) / "figures" / key
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}."))
    try:
        for path in files:
            if path.exists():
                shutil.copyfile(path, tmp / path.name)
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes a private folder; a cache is for everyone
        os.replace(tmp, entry)
    except OSError:  # another run kept the same figures first: theirs are as good
        shutil.rmtree(tmp, ignore_errors=True)
