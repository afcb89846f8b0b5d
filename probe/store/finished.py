"""Finished runs kept whole, so that a rerun with nothing to compute only copies them back.

An entry is a folder ``runs/<key>/`` in the cache: the run's output files as it published them (the
``.probe-run.json`` marker left out: a rerun writes its own) and ``entry.json``, which holds the key, each
file's SHA-256 and a ``record`` (what the run read and printed; see probe/pipeline/finished.py). Entries
are written into a temporary folder and renamed into place, and prove what they are on every read: an
entry kept under another key, with files missing, extra or changed, is named in a warning, removed, and
the run computes again. Nothing here imports more than the standard library.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from probe.store.files import MARKER, disk_full, is_disk_full, read_json_or_none, umask

MANIFEST = "entry.json"


def entry_folder(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / "runs" / key


def load_finished(cache_dir: Path, key: str) -> dict | None:
    """The manifest of the entry kept under ``key`` (its ``files`` and ``record``), or None when there is
    none or it does not prove it is ``key``'s (then it is named in a warning and removed)."""
    entry = entry_folder(cache_dir, key)
    if not entry.is_dir():
        return None
    manifest = read_json_or_none(entry / MANIFEST)
    reason = _damage(entry, key, manifest)
    if reason is not None:
        logging.getLogger("probe").warning("cached run %s is not what its name says (%s); running again", entry,
                                           reason)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return manifest


def _damage(entry: Path, key: str, manifest) -> str | None:
    """Why ``entry`` is not ``key``'s as it was kept, or None."""
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "it carries no manifest"
    if manifest.get("key") != key:
        return "it was kept under another key"
    if not isinstance(manifest.get("record"), dict):
        return "its manifest has no record of the run"
    if set(_files(entry)) != set(manifest["files"]):
        return "its files are not the ones it was kept with"
    for name, digest in manifest["files"].items():
        if file_digest(entry / name) != digest:
            return f"{name} differs from the digest recorded when it was kept"
    return None


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` as a relative POSIX path, the manifest left out."""
    found = [p.relative_to(folder).as_posix() for p in sorted(folder.rglob("*")) if p.is_file()]
    return [name for name in found if name != MANIFEST]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class EntryChanged(Exception):
    """The entry changed between its check and its copy (another run kept a new one under the same key)."""


def copy_finished(cache_dir: Path, key: str, into: Path, files: dict[str, str]) -> None:
    """Copy ``files`` (name → SHA-256, the manifest ``load_finished`` checked) of the entry under ``key`` into
    the folder ``into``; EntryChanged when a copy is not the file that was checked."""
    entry = entry_folder(cache_dir, key)
    for name, digest in files.items():
        target = Path(into) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(entry / name, target)
        except FileNotFoundError as error:
            raise EntryChanged(f"{entry / name} is gone") from error
        if file_digest(target) != digest:
            raise EntryChanged(f"{entry / name} changed since it was checked")


def keep_finished(cache_dir: Path, key: str, output_dir: Path, record: dict) -> None:
    """Keep the files of the published run ``output_dir`` under ``key`` with ``record``: copied into a
    temporary folder, which then takes the place of any older entry. A full disk is said; any other
    failure is not an error (the run has its outputs; the next one computes them again)."""
    entry = entry_folder(cache_dir, key)
    if (Path(output_dir) / MANIFEST).exists():  # a reporter's file by that name would be taken for the manifest
        return
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}."))
        kept = {}
        for name in _files(output_dir):
            if name == MARKER:
                continue
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(output_dir / name, tmp / name)
            kept[name] = file_digest(tmp / name)
        (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": kept, "record": record}), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes a private folder; a cache is for everyone
        _replace(tmp, entry)
    except OSError as error:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(error):
            raise disk_full(error, entry.parent, key) from error


def _replace(new: Path, entry: Path) -> None:
    """Put ``new`` at ``entry``; an older entry there is moved aside first, then removed."""
    if entry.exists():
        old = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.old-"))
        os.replace(entry, old / entry.name)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(new, entry)
