"""Where probe's fits run, and how many BLAS threads each uses.

Fits go to joblib: on loky's worker processes, which joblib keeps 300 s for reuse and stops, with the
folders it shares arrays through, in exit handlers. A process that multiprocessing started (a sweep's cell,
a user's pool) runs no exit handlers and waits for its children as it ends: it would sit idle 300 s after
its last fit and leave those folders to loky's tracker. There the fits run on threads instead (joblib's
threading backend: no processes, no folders), with BLAS held to one thread for the whole batch.

BLAS held to one thread around small numeric work (one probe fit, one PCA), where threaded BLAS only
adds synchronisation, and on a busy machine spins.
"""

from __future__ import annotations

import functools


def run_parallel(jobs, n_jobs: int):
    """joblib's ``Parallel(n_jobs)(jobs)``, results yielded in order as they come: on loky's processes, or
    on threads in a process that multiprocessing started (see the module's docstring)."""
    import multiprocessing

    from joblib import Parallel

    if n_jobs == 1 or multiprocessing.parent_process() is None:
        yield from Parallel(n_jobs=n_jobs, return_as="generator")(jobs)
        return
    # One limit for the batch: threads entering and leaving their own limits would restore each other's.
    with one_thread():
        yield from Parallel(n_jobs=n_jobs, backend="threading", return_as="generator")(jobs)


def one_thread():
    """A context manager: inside it, every BLAS and OpenMP pool this process has loaded runs one thread."""
    return _controller().limit(limits=1)


@functools.cache
def _controller():
    """threadpoolctl's view of the loaded libraries, found once per process: finding them reads
    /proc/self/maps, about 3 ms, which ``threadpool_limits`` did on every call (0.5 s over 155 fits)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
