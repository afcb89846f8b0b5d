"""A run's output folder changes all at once, and a failed run leaves nothing behind.

Reports are written into a hidden sibling folder (``.NAME.staging-*``); once every reporter is done it
takes the output folder's place in one step (Linux's ``renameat2(RENAME_EXCHANGE)``; elsewhere two renames,
with ``recover`` undoing a kill between them). So a kill at any moment leaves either the previous complete
run or the new one, never a mix. A lock beside the folder keeps two runs from publishing at once.

Atomic file writes: a reader never sees half a file, and an interrupted run never leaves one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from filelock import FileLock

from probe.errors import UserError

MARKER = ".probe-run.json"  # in every run folder: says the folder is probe's to replace


def lock_for(output_dir: Path) -> FileLock:
    """The lock two runs writing the same output folder share (a hidden file beside it)."""
    return FileLock(str(output_dir.parent / f".{output_dir.name}.lock"))


def cache_lock(folder: Path, ranks=None):
    """A lock on one cache entry, kept in the cache's ``locks/`` folder. Under torchrun (``ranks``, see
    probe.scale.ranks, of a world over 1) the ranks share entries on purpose and coordinate themselves,
    so none is taken."""
    if ranks is not None and ranks.world > 1:
        return nullcontext()
    locks = folder.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{folder.name}.lock"))


def is_replaceable(output_dir: Path) -> bool:
    """A folder probe may replace as a whole: missing, empty, or a probe run (marker or results.json)."""
    if not output_dir.exists():
        return True
    if not output_dir.is_dir():
        return False
    names = {p.name for p in output_dir.iterdir()}
    return not names or MARKER in names or "results.json" in names


@contextmanager
def staged_output(output_dir: str | Path, run_id: str | None = None) -> Iterator[Path]:
    """``with staged_output(out) as folder:`` write every report into ``folder``; on a clean exit it
    becomes ``out`` (the previous run there, if any, goes), on an error or kill ``out`` is untouched.
    ``run_id``, when given, is kept in the marker (``published_by`` reads it back)."""
    output_dir = Path(output_dir).absolute()
    made = missing_parents(output_dir.parent)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        with lock_for(output_dir):
            recover(output_dir)
            staging = Path(tempfile.mkdtemp(dir=output_dir.parent, prefix=f".{output_dir.name}.staging-"))
            os.chmod(staging, 0o777 & ~umask())  # mkdtemp makes 0700 folders; a run is for everyone to read
            try:
                yield staging
                marker = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **({"run": run_id} if run_id else {})}
                (staging / MARKER).write_text(json.dumps(marker) + "\n")
                publish(staging, output_dir)
            except DiskFull as error:  # name the folder the user gave, not the hidden one it is staged in
                raise DiskFull(str(error).replace(str(staging), str(output_dir))) from error.__cause__
            except OSError as error:
                if is_disk_full(error):
                    raise disk_full(error, output_dir) from error
                raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)  # the new run on failure, the old one on success
    except BaseException:
        if made:  # nobody else can have a lock in a folder this run created
            Path(lock_for(output_dir).lock_file).unlink(missing_ok=True)
        remove_empty(made)
        raise


def published_by(output_dir: Path) -> str | None:
    """The ``run_id`` of the run whose folder ``output_dir`` is now, when it gave one."""
    marker = read_json_or_none(Path(output_dir) / MARKER)
    return marker.get("run") if isinstance(marker, dict) else None


def publish(staging: Path, output_dir: Path) -> None:
    """Put ``staging`` at ``output_dir`` in one step; afterwards ``staging`` holds the previous run."""
    if not output_dir.exists():
        os.rename(staging, output_dir)
        return
    if _exchange(staging, output_dir):
        return
    old = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
    os.rename(output_dir, old)  # a kill right here is undone by recover(): the old run comes back
    os.rename(staging, output_dir)
    os.rename(old, staging)


def recover(output_dir: Path) -> None:
    """Undo what a killed run left (call with the lock held): a previous run moved aside comes back, and
    stale staging folders go."""
    parent, name = output_dir.parent, output_dir.name
    for old in sorted(parent.glob(f".{name}.old-*")):
        if output_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, output_dir)
    for staging in parent.glob(f".{name}.staging-*"):
        shutil.rmtree(staging, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where that is unavailable."""
    libc_name = ctypes.util.find_library("c")
    try:
        renameat2 = ctypes.CDLL(libc_name, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return done == 0


def missing_parents(folder: Path) -> list[Path]:
    """The folders that creating ``folder`` would make, deepest first (to remove them again on failure)."""
    made = []
    folder = Path(folder).absolute()
    while not folder.exists():
        made.append(folder)
        folder = folder.parent
    return made


def remove_empty(folders: list[Path]) -> None:
    """Remove each folder if it is empty (deepest first), so that a failed run leaves no empty folders."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def new_folders(root: Path, before: set[Path]) -> list[Path]:
    """Folders under ``root`` (and ``root`` itself) that were not there ``before``, deepest first."""
    if not root.is_dir():
        return []
    found = [Path(dirpath) for dirpath, _, _ in os.walk(root)]
    return [f for f in sorted(found, key=lambda p: -len(p.parts)) if f not in before]


def folders_under(root: Path) -> set[Path]:
    return {Path(dirpath) for dirpath, _, _ in os.walk(root)} if root.is_dir() else set()


def write_atomic(path: str | Path, write: Callable[[Path], None], size: int | None = None) -> Path:
    """Call ``write(tmp_path)``, then move the finished file onto ``path`` in one step. A full disk (or
    quota) is a DiskFull naming the folder and ``size``, the bytes the file needed when known."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600 files; results are for everyone to read
        os.replace(tmp, path)
    except BaseException as error:
        written = size_or_none(tmp)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(error):
            raise disk_full(error, path.parent, path.name, size, written) from error
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    data = text.encode("utf-8")
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), size=len(data))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_bytes(data), size=len(data))


# ---------------------------------------------------------------- full disks

DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFull(UserError):
    """A write ran out of room (ENOSPC) or quota (EDQUOT): the folder and the bytes needed are named, and it
    is nobody's bug, so no plugin is blamed for it."""


def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, DiskFull) or (isinstance(error, OSError) and error.errno in DISK_FULL)


def disk_full(error: OSError, folder: Path, name: str | None = None, needed: int | None = None,
              written: int | None = None) -> DiskFull:
    """The DiskFull for ``error``, raised writing ``name`` into ``folder``: how much it needed (when known,
    else at least what it had written) and how much is free there now."""
    if isinstance(error, DiskFull):
        return error
    what = "over its disk quota" if error.errno == errno.EDQUOT else "full"
    if needed is not None:
        need = f"needed {human_bytes(needed)}"
    elif written:
        need = f"needed more than the {human_bytes(written)} it wrote before the disk filled"
    else:
        need = "needed room"
    free = free_bytes(folder)
    there = "" if free is None else f", {human_bytes(free)} free there"
    target = f"writing {name}" if name else "a write"
    return DiskFull(f"{folder} is {what} ({errno.errorcode.get(error.errno, error.errno)}): {target} {need}{there}; "
                    "make room there or write elsewhere (--output, --cache-dir)")


def free_bytes(folder: Path) -> int | None:
    """Free bytes on the disk holding ``folder`` (or its nearest existing parent), None if unknown."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def human_bytes(n: float, binary: bool = False) -> str:
    """Bytes in decimal units (980 B, 1.2 MB, 28.3 GB: disks), or binary ones (1.5 GiB: memory)."""
    step, units = (1024, ("B", "KiB", "MiB", "GiB")) if binary else (1000, ("B", "KB", "MB", "GB"))
    for unit in units:
        if n < step or unit == units[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= step
    return f"{n:.1f} {units[-1]}"


def size_or_none(path) -> int | None:
    try:
        return os.path.getsize(path) if path is not None else None
    except OSError:
        return None


def read_json_or_none(path: str | Path | None):
    """A cached JSON value, or None when there is none or it no longer parses (then it is computed again)."""
    import json

    if path is None or not Path(path).exists():
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError:
        return None


def umask() -> int:
    """The process's umask (reading it means setting it: set back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def folder_name(label: str, fallback: str = "experiment") -> str:
    """A name from a config (an experiment's or a sweep's ``name``) as one safe folder name: it is a label,
    never a path, so separators, ``..`` and anything but letters, digits, ``.``, ``_`` and ``-`` become
    ``-`` (one for a run of them), and no leading or trailing dot or dash is kept (``../../x`` → ``x``,
    ``/abs/path`` → ``abs-path``)."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+|\.{2,}", "-", label)
    name = re.sub(r"-{2,}", "-", name).strip(".-")[:100].strip(".-")
    return name or fallback


def default_output(label: str) -> Path:
    """Where a run or sweep named ``label`` writes when no output folder is given: runs/<folder name>."""
    return Path("runs") / folder_name(label)

