"""Tables of rows kept on disk: written to a temporary Arrow file a batch at a time and read back
memory-mapped, as ``datasets`` keeps what it loads. A run's rows then take no heap however many there are,
and leave the allocator no scattered live rows to hold freed memory around (at 100,000 rows, one run with
the tables built in memory peaked 23 MiB higher).

The files sit in a temporary folder (under ``$TMPDIR``): the run's own (``rows_folder``), removed when the
run ends, or else one for the process, removed when it exits. A table is not deleted when it is dropped:
``datasets`` copies a table by opening its file again, so a file must last as long as any copy might. A
folder's name carries its process id and machine, so that the folder of a process killed before it could
clean up (``kill -9``) is removed by the next run that starts on that machine."""

from __future__ import annotations

import contextvars
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import datasets
import pyarrow

PREFIX = "probe-rows-"
_run_folder: contextvars.ContextVar[Path | None] = contextvars.ContextVar("probe_rows_folder", default=None)
_process_folder: tempfile.TemporaryDirectory | None = None


def spooled_table(parts: Iterable[pyarrow.Table], features: datasets.Features) -> datasets.Dataset:
    """One memory-mapped Dataset of ``features`` holding the rows of ``parts`` (pyarrow tables of that schema,
    in order), each written to the file as it comes."""
    path = _folder() / f"rows-{uuid.uuid4().hex}.arrow"
    schema = features.arrow_schema
    with pyarrow.OSFile(str(path), "wb") as sink, pyarrow.ipc.new_stream(sink, schema) as writer:
        for part in parts:
            writer.write_table(part)
    return datasets.Dataset.from_file(str(path))


@contextmanager
def rows_folder() -> Iterator[Path]:
    """A temporary folder for the tables made inside the ``with`` block, removed with them when it ends."""
    remove_orphans()
    folder = Path(tempfile.mkdtemp(prefix=_prefix()))
    token = _run_folder.set(folder)
    try:
        yield folder
    finally:
        _run_folder.reset(token)
        shutil.rmtree(folder, ignore_errors=True)  # where a mapped file can't go (Windows), it stays


def remove_orphans() -> None:
    """Remove the rows folders of processes that no longer run (on POSIX, where a process id can be asked
    after without touching the process). A folder whose process can't be asked about is kept."""
    if os.name != "posix":
        return
    for folder in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-{machine_tag()}-*"):
        pid = folder.name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: asks whether the process exists, sends nothing
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _prefix() -> str:
    return f"{PREFIX}{os.getpid()}-{machine_tag()}-"


def machine_tag() -> str:
    """This machine's name in letters and digits: a /tmp shared between machines or containers (each with
    its own process ids) keeps the others' folders."""
    return "".join(character for character in socket.gethostname() if character.isalnum()) or "host"


def _folder() -> Path:
    global _process_folder
    if (folder := _run_folder.get()) is not None:
        return folder
    if _process_folder is None:
        _process_folder = tempfile.TemporaryDirectory(prefix=_prefix(), ignore_cleanup_errors=True)
    return Path(_process_folder.name)
