"""Out-of-fold predictions cached on disk, so a rerun on cached vectors fits nothing again.

A fit's key is everything its predictions depend on: the feature matrix's bytes, the labels, the folds,
the estimator's class and parameters (``get_params``), and scikit-learn's version. An estimator without
``get_params`` is never cached. Files are written atomically, one per (task, its folds).

Figures drawn once: a rerun whose inputs are unchanged copies the files drawn last time instead of
drawing them again (drawing was most of a cached rerun's time). Keyed by everything a figure is drawn
from, the drawing code included; entries are folders written whole, so a reader never sees half of one.

Every entry proves what it is: it carries the key it was written under and a digest of its content, both
checked on read. An entry renamed, copied over another or damaged is named in a warning, removed, and
computed again, never used as if it were the entry asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from probe.store.files import disk_full, is_disk_full, read_json_or_none, umask, write_atomic
from probe.store.usage import touch


def fit_key(probe, X: np.ndarray, y: np.ndarray, folds, seen: dict | None = None) -> str | None:
    """The key of one cross-validation. ``seen`` (a dict kept for one batch of tasks) remembers the hash
    of each matrix already read, so the many tasks sharing one X (a permutation test) hash it once."""
    described = describe(probe)
    if described is None:
        return None
    digest = _with_features(described, X, {} if seen is None else seen)
    digest.update("\x1f".join(map(str, y.tolist())).encode())
    for train, test in folds:
        digest.update(np.asarray(train, dtype=np.int64).tobytes() + b"|" + np.asarray(test, dtype=np.int64).tobytes())
    return digest.hexdigest()[:24]


def _with_features(described: str, X: np.ndarray, seen: dict):
    """The hash state after the probe and the features; from ``seen`` when this very X was hashed."""
    import sklearn

    known = seen.get((described, id(X)))
    if known is None or known[0] is not X:
        digest = hashlib.sha256(f"{described}|sklearn {sklearn.__version__}|{X.dtype}{X.shape}".encode())
        _update_by_blocks(digest, X)
        known = seen[(described, id(X))] = (X, digest)
    return known[1].copy()


def _update_by_blocks(digest, X: np.ndarray, block_rows: int = 4096) -> None:
    """``digest.update(X.tobytes())`` a block of rows at a time: a memory-mapped matrix is hashed without a
    copy of it, or its pages, staying in memory (the digest is the same as the whole bytes')."""
    from probe.store.matrices import read_rows

    if X.ndim == 0 or len(X) == 0:
        digest.update(np.ascontiguousarray(X).tobytes())
        return
    for start in range(0, len(X), block_rows):
        digest.update(np.ascontiguousarray(read_rows(X, np.arange(start, min(start + block_rows, len(X))))).tobytes())


def describe(probe) -> str | None:
    """The estimator's class and its parameters, nested estimators named by class; None if it has none."""
    if not hasattr(probe, "get_params"):
        return None
    params = {name: _plain(value) for name, value in sorted(probe.get_params(deep=True).items())}
    return f"{type(probe).__module__}.{type(probe).__qualname__}{params}"


def _plain(value):
    if hasattr(value, "get_params"):
        return f"{type(value).__module__}.{type(value).__qualname__}"
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def load(folder: Path, key: str) -> list[np.ndarray] | None:
    """The fold predictions kept under ``key``, or None (see ``load_arrays``)."""
    return load_arrays(folder / f"{key}.npz", key, "cached fit", "fitting again")


def load_arrays(path: Path, key: str, what: str, redo: str) -> list[np.ndarray] | None:
    """The arrays kept at ``path`` under ``key``, or None. An entry proves what it is: it holds the key it was
    written under and a digest of its arrays; one that is damaged, written under another key (a file
    renamed or copied over) or by an older probe is named in a warning (``what`` it is, and ``redo``: what
    happens instead), removed, and made again by the caller."""
    if not path.exists():
        return None
    try:  # npz is a zip: a truncated or overwritten file fails its CRC here instead of giving wrong numbers
        with np.load(path) as saved:
            folds = [saved[f"fold{i}"] for i in range(sum(name.startswith("fold") for name in saved.files))]
            recorded_key = str(saved["key"]) if "key" in saved.files else None
            recorded_digest = str(saved["digest"]) if "digest" in saved.files else None
    except Exception as error:
        return _drop(path, f"it can't be read ({type(error).__name__}: {error})", what, redo)
    if recorded_key != key:
        return _drop(path, "it was written under another key" if recorded_key else "it carries no key", what, redo)
    if recorded_digest != predictions_digest(folds):
        return _drop(path, "its arrays differ from the digest recorded when it was written", what, redo)
    touch(path)  # last use, for `probe cache --prune`
    return folds


def _drop(path: Path, reason: str, what: str, redo: str) -> None:
    logging.getLogger("probe").warning("%s %s is not what its name says (%s); %s", what, path, reason, redo)
    path.unlink(missing_ok=True)
    return None


def predictions_digest(fold_predictions: list[np.ndarray]) -> str:
    """SHA-256 over each fold's dtype, shape and bytes, in fold order."""
    digest = hashlib.sha256()
    for predictions in fold_predictions:
        predictions = np.ascontiguousarray(predictions)
        digest.update(f"{predictions.dtype}|{predictions.shape}|".encode())
        digest.update(predictions.tobytes())
    return digest.hexdigest()


def save(folder: Path, key: str, fold_predictions: list[np.ndarray]) -> None:
    save_arrays(folder / f"{key}.npz", key, fold_predictions)


def save_arrays(path: Path, key: str, arrays: list[np.ndarray]) -> None:
    """``arrays`` at ``path`` with the key they are kept under and their digest (what ``load_arrays`` checks)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, key=np.array(key), digest=np.array(predictions_digest(arrays)),
                     **{f"fold{i}": a for i, a in enumerate(arrays)})

    write_atomic(path, write)


_DRAWING_MODULES = ("report/writers.py", "report/legend.py", "report/extras.py", "builtin/reporters.py")


def drawing_code() -> str:
    """A digest of the source that draws the figures: a change to it draws them anew."""
    root = Path(__file__).resolve().parent.parent  # probe/
    digest = hashlib.sha256()
    for name in _DRAWING_MODULES:
        digest.update((root / name).read_bytes())
    return digest.hexdigest()[:16]


MANIFEST = "entry.json"  # in each figures entry: the key it was kept under and each file's SHA-256


def drawn_before(cache_dir: Path, key: str, output_dir: Path) -> bool:
    """Copy the figures kept under ``key`` into ``output_dir``; False when there are none, or when the entry
    does not prove it is ``key``'s (then it is named, removed, and the figures are drawn again)."""
    entry = Path(cache_dir) / "figures" / key
    if not entry.is_dir():
        return False
    reason = entry_damage(entry, key)
    if reason is not None:
        logging.getLogger("probe").warning("cached figures %s are not what their name says (%s); drawing them "
                                           "again", entry, reason)
        shutil.rmtree(entry, ignore_errors=True)
        return False
    touch(entry)
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in entry.iterdir():
        if path.name != MANIFEST:
            shutil.copyfile(path, output_dir / path.name)
    return True


def entry_damage(entry: Path, key: str) -> str | None:
    """Why the figures entry ``entry`` is not ``key``'s as it was kept, or None."""
    manifest = read_json_or_none(entry / MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return "it carries no manifest"
    if manifest.get("key") != key:
        return "it was kept under another key"
    present = {p.name for p in entry.iterdir() if p.name != MANIFEST}
    if present != set(manifest["files"]):
        return "its files are not the ones it was kept with"
    for name, digest in manifest["files"].items():
        if file_digest(entry / name) != digest:
            return f"{name} differs from the digest recorded when it was kept"
    return None


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def keep_drawn(cache_dir: Path, key: str, files: list[Path]) -> None:
    """Keep ``files`` under ``key``, with a manifest of the key and their digests: copied into a temporary
    folder, which is then renamed into place. A full disk is said; any other failure to keep them is not an
    error (the run has its figures; the next one draws them again)."""
    entry = Path(cache_dir) / "figures" / key
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{key}."))
        kept = {}
        for path in files:
            if path.exists():
                shutil.copyfile(path, tmp / path.name)
                kept[path.name] = file_digest(tmp / path.name)
        (tmp / MANIFEST).write_text(json.dumps({"key": key, "files": kept}), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes a private folder; a cache is for everyone
        os.replace(tmp, entry)
    except OSError as error:  # another run kept the same figures first: theirs are as good
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_disk_full(error):
            raise disk_full(error, entry.parent, key) from error


# ---------------------------------------------------------------- JSON entries (the attention viewer's)


def load_json_entry(path: Path | None):
    """The value kept at ``path`` by ``save_json_entry``, or None. The entry's key is its file name's stem;
    one that holds another key, no key, or a value that differs from its digest is named in a warning,
    removed, and computed again."""
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    try:
        header, _, body = path.read_bytes().partition(b"\n")
        header = json.loads(header)
    except (OSError, ValueError) as error:
        return _drop_entry(path, f"it can't be read ({type(error).__name__})")
    if not isinstance(header, dict) or "digest" not in header:
        return _drop_entry(path, "it carries no key (written by an older probe)")
    if header.get("key") != path.stem:
        return _drop_entry(path, "it was written under another key")
    if header["digest"] != hashlib.sha256(body).hexdigest():
        return _drop_entry(path, "its value differs from the digest recorded when it was written")
    try:
        value = json.loads(body)
    except ValueError as error:  # only a digest of damaged JSON would match: not probe's writing
        return _drop_entry(path, f"it can't be read ({type(error).__name__})")
    touch(path)
    return value


def save_json_entry(path: Path, value) -> None:
    """``value`` as JSON under a first line holding the key (``path``'s stem) and the value's SHA-256: the
    check on read hashes the bytes, it does not serialize the value again."""
    body = json.dumps(value, separators=(",", ":")).encode()
    header = json.dumps({"key": Path(path).stem, "digest": hashlib.sha256(body).hexdigest()}).encode()
    write_atomic(path, lambda tmp: tmp.write_bytes(header + b"\n" + body), size=len(header) + 1 + len(body))


def _drop_entry(path: Path, reason: str) -> None:
    logging.getLogger("probe").warning("cache entry %s is not what its name says (%s); computing it again",
                                       path, reason)
    path.unlink(missing_ok=True)
    return None
