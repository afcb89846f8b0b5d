"""Where the cache lives, when each entry was last used, and freeing what no run has used for a while.

One cache per user: ``$PROBE_CACHE``, else ``$XDG_CACHE_HOME/probe``, else ``~/.cache/probe`` (``--cache-dir``
and ``cache_dir=`` override all three). Runs from any folder share converted checkpoints, vectors and fits.

Last use is an entry's own modification time: a run touches each entry it reads (one ``utime`` call), and
writing an entry sets it anyway, so nothing else is recorded. A run holds a lock file in ``locks/`` for as
long as it runs; pruning keeps every entry used since the oldest running run started and every entry whose
lock (``cache_lock``) someone holds, so it never deletes what a running process reads or writes.
"""

from __future__ import annotations

import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

ENVIRONMENT = "PROBE_CACHE"
LOCKS = "locks"
RUN_LOCK_PREFIX = "run-"
# Kept whatever their age: lock files, and the memo of file digests (small, and it saves rehashing weights).
KEPT = {(LOCKS,), ("models", "digests")}


def default_cache_dir() -> Path:
    """The user's cache: ``$PROBE_CACHE``, else ``$XDG_CACHE_HOME/probe``, else ``~/.cache/probe``. Read at
    each call, so that a changed environment counts. XDG says a relative ``XDG_CACHE_HOME`` is ignored."""
    chosen = os.environ.get(ENVIRONMENT, "").strip()
    if chosen:
        return Path(chosen).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg).expanduser() if xdg and Path(xdg).expanduser().is_absolute() else Path.home() / ".cache"
    return base / "probe"


def cache_dir_or_default(cache_dir: str | Path | None) -> Path:
    """``cache_dir`` as a Path, or the user's cache when it is None."""
    return default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()


def touch(entry: Path) -> None:
    """Record that ``entry`` was used now (its mtime). A cache someone else owns, read-only here, stays as it is."""
    try:
        os.utime(entry)
    except OSError:
        pass


@contextmanager
def running_on(cache_dir: Path) -> Iterator[None]:
    """Hold a lock file in the cache's ``locks/`` for the duration of a run; its mtime is when the run began,
    so pruning keeps what the run used. Removed at the end."""
    locks = Path(cache_dir) / LOCKS
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / f"{RUN_LOCK_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
    lock = FileLock(str(path))
    with lock:
        try:
            yield
        finally:
            path.unlink(missing_ok=True)


def oldest_running_start(cache_dir: Path, now: float | None = None) -> float | None:
    """When the oldest run still holding its lock in ``cache_dir`` began, or None. A run lock nobody holds
    is removed once it is a minute old (its process was killed); a younger one may be a run between creating
    its lock file and locking it, so it counts as running."""
    now = time.time() if now is None else now
    starts = []
    for path in sorted((Path(cache_dir) / LOCKS).glob(f"{RUN_LOCK_PREFIX}*.lock")):
        try:
            started = path.stat().st_mtime
            if now - started < 60:
                starts.append(started)
                continue
            with FileLock(str(path), timeout=0):
                path.unlink(missing_ok=True)  # acquired: no process holds it
        except Timeout:
            starts.append(started)
        except OSError:
            continue  # gone meanwhile: that run ended
    return min(starts, default=None)


@dataclass(frozen=True)
class Entry:
    path: Path
    part: str  # the top-level folder it is in: models, features, probes…
    last_used: float  # seconds since the epoch
    bytes: int


def folder_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def entries(cache_dir: Path) -> list[Entry]:
    """Every entry of the cache (what each top-level folder holds, one level down), oldest use first.
    Hidden names are left out: they are writes in progress."""
    found = []
    for part in sorted(p for p in Path(cache_dir).iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (part.name,) in KEPT:
            continue
        for path in part.iterdir():
            if path.name.startswith(".") or (part.name, path.name) in KEPT:
                continue
            try:
                found.append(Entry(path, part.name, path.lstat().st_mtime, folder_bytes(path)))
            except OSError:
                continue  # removed meanwhile
    return sorted(found, key=lambda entry: entry.last_used)


@dataclass
class Pruned:
    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)  # old enough, but a running process holds them

    @property
    def freed(self) -> int:
        return sum(entry.bytes for entry in self.removed)


def check_days(days) -> float:
    """``days`` as a float ≥ 0, or a ValueError that says what is accepted."""
    try:
        value = float(days)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number of days (e.g. 30 or 0.5), got {days!r}") from None
    if math.isnan(value) or value < 0:
        raise ValueError(f"expected a number of days ≥ 0 (e.g. 30 or 0.5), got {days!r}")
    return value


def prune(cache_dir: Path, days: float, dry_run: bool = False, now: float | None = None) -> Pruned:
    """Remove every entry of ``cache_dir`` last used more than ``days`` ago, except those a running process
    holds: used since the oldest running run began, or locked (an extraction, a conversion)."""
    cutoff = (time.time() if now is None else now) - check_days(days) * 86400
    busy_since = oldest_running_start(cache_dir, now)
    result = Pruned()
    for entry in entries(cache_dir):
        if entry.last_used >= cutoff:
            break  # sorted by last use: the rest are newer
        if busy_since is not None and entry.last_used >= busy_since:
            result.in_use.append(entry)
        elif dry_run:
            result.removed.append(entry)
        elif _remove_unless_held(cache_dir, entry, cutoff):
            result.removed.append(entry)
        else:
            result.in_use.append(entry)
    return result


def _remove_unless_held(cache_dir: Path, entry: Entry, cutoff: float) -> bool:
    """Remove ``entry`` under its lock, when nobody holds that lock and nobody used it since it was listed.
    Renamed aside first, so that a reader finds the whole entry or none. The lock file stays: removing one
    that another process waits on would let a third take the same lock at once."""
    (Path(cache_dir) / LOCKS).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(Path(cache_dir) / LOCKS / f"{entry.path.name}.lock"))
    try:
        with lock.acquire(timeout=0):
            try:
                if entry.path.lstat().st_mtime >= cutoff:
                    return False  # a run touched it after the listing
                aside = entry.path.with_name(f".pruned-{entry.path.name}-{os.getpid()}")
                os.replace(entry.path, aside)
            except FileNotFoundError:
                return False
            if aside.is_dir():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.unlink(missing_ok=True)
            return True
    except Timeout:
        return False
