"""Where probe's fits run, and how many BLAS threads each uses.

Fits go to joblib: on loky's worker processes, which joblib keeps 300 s for reuse and stops, with the
folders it shares arrays through, in exit handlers. A process that multiprocessing started (a sweep's cell,
a user's pool) runs no exit handlers and waits for its children as it ends: it would sit idle 300 s after
its last fit and leave those folders to loky's tracker. There the fits run on threads instead (joblib's
threading backend: no processes, no folders), with BLAS held to one thread for the whole batch.

BLAS held to one thread around small numeric work (one probe fit, one PCA), where threaded BLAS only
adds synchronisation, and on a busy machine spins.

A worker ends when the process that started it dies (``end_with_parent``): a kill -9 of ``probe run`` or
``probe sweep`` would otherwise leave loky's workers idle for 300 s and a sweep's cells running to the end,
holding cache locks a rerun would wait for. A watchdog thread in the worker looks twice a second whether
that process is still running (and whether the worker's parent changed: an orphan is adopted by init or a
subreaper). It is portable, and follows a sweep's cells through the fork server that starts them, where
Linux's ``PR_SET_PDEATHSIG`` would tie a worker to its direct parent's thread instead.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from pathlib import Path

PARENT_CHECK_SECONDS = 0.5  # how often a worker looks whether its parent is still there


def run_parallel(jobs, n_jobs: int):
    """joblib's ``Parallel(n_jobs)(jobs)``, results yielded in order as they come: on loky's processes, or
    on threads in a process that multiprocessing started (see the module's docstring)."""
    import multiprocessing

    from joblib import Parallel

    if n_jobs == 1:
        yield from Parallel(n_jobs=1, return_as="generator")(jobs)
        return
    if multiprocessing.parent_process() is None:
        # The same initializer and arguments every time, so that loky keeps reusing its workers.
        yield from Parallel(n_jobs=n_jobs, return_as="generator", initializer=end_with_parent,
                            initargs=(os.getpid(),))(jobs)
        return
    # One limit for the batch: threads entering and leaving their own limits would restore each other's.
    with one_thread():
        yield from Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")(jobs)


def end_with_parent(owner_pid: int) -> None:
    """Call in a worker process as it starts: it ends (exit status 1, no cleanup: it may be mid-job) soon
    after the process ``owner_pid`` does (the one that asked for the worker: its parent, or for a worker a
    fork server started, the fork server's parent; a fork server outlives its owner while its workers live)."""
    threading.Thread(target=_exit_after, args=(owner_pid, os.getppid()), name="probe-end-with-parent",
                     daemon=True).start()


def _exit_after(owner_pid: int, parent_pid: int) -> None:
    while os.getppid() == parent_pid and is_running(owner_pid):
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def is_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a killed process stays a zombie until its own
    parent reaps it; on Linux /proc tells them apart)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):  # no /proc here, or it ended just now (the next look says)
        return True
    return state != "Z"


def one_thread():
    """A context manager: inside it, every BLAS and OpenMP pool this process has loaded runs one thread."""
    return _controller().limit(limits=1)


@functools.cache
def _controller():
    """threadpoolctl's view of the loaded libraries, found once per process: finding them reads
    /proc/self/maps, about 3 ms, which ``threadpool_limits`` did on every call (0.5 s over 155 fits)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
