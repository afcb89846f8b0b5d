"""Out-of-fold predictions cached on disk, so a rerun on cached vectors fits nothing again.

A fit's key is everything its predictions depend on: the feature matrix's bytes, the labels, the folds,
the estimator's class and parameters (``get_params``), and scikit-learn's version. An estimator without
``get_params`` is never cached. Files are written atomically, one per (task, its folds).

Figures drawn once: a rerun whose inputs are unchanged copies the files drawn last time instead of
drawing them again (drawing was most of a cached rerun's time). Keyed by everything a figure is drawn
from, the drawing code included; entries are folders written whole, so a reader never sees half of one.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from probe.store.files import umask, write_atomic


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
        digest.update(np.ascontiguousarray(X).tobytes())
        known = seen[(described, id(X))] = (X, digest)
    return known[1].copy()


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
    path = folder / f"{key}.npz"
    if not path.exists():
        return None
    try:  # npz is a zip: a truncated or overwritten file fails its CRC here instead of giving wrong numbers
        with np.load(path) as saved:
            return [saved[f"fold{i}"] for i in range(len(saved.files))]
    except Exception as error:
        logging.getLogger("probe").warning("cached fit %s is damaged (%s); fitting again", path, error)
        path.unlink(missing_ok=True)
        return None


def save(folder: Path, key: str, fold_predictions: list[np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **{f"fold{i}": p for i, p in enumerate(fold_predictions)})

    write_atomic(folder / f"{key}.npz", write)


_DRAWING_MODULES = ("report/writers.py", "report/legend.py", "report/extras.py", "builtin/reporters.py")


def drawing_code() -> str:
    """A digest of the source that draws the figures: a change to it draws them anew."""
    root = Path(__file__).resolve().parent.parent  # probe/
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
