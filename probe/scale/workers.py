"""joblib's worker processes in a process that multiprocessing started (a sweep's cell, a user's pool).

joblib keeps its workers 300 s for reuse and stops them in exit handlers. A process multiprocessing started
runs no exit handlers and waits for its children when it ends: it sat idle 300 s after its last probe fit
(a sweep of two cells took five minutes longer). A multiprocessing finalizer, which runs before the children
are waited for, stops them.

BLAS held to one thread around small numeric work (one probe fit, one PCA), where threaded BLAS only
adds synchronisation, and on a busy machine spins.
"""

from __future__ import annotations

import functools


def stop_at_exit() -> None:
    """In a process multiprocessing started, stop joblib's workers (and run the exit handlers) as it ends;
    elsewhere exit handlers run anyway. Once per process."""
    import multiprocessing
    from multiprocessing.util import Finalize

    if multiprocessing.parent_process() is not None:
        Finalize(None, _stop_workers, exitpriority=100)


def _stop_workers() -> None:
    """joblib's workers stopped, then the exit handlers this process would have run: among them joblib's
    removal of the folders it shares arrays through (else its resource tracker warns of leaked folders)."""
    import atexit

    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)
    atexit._run_exitfuncs()


def one_thread():
    """A context manager: inside it, every BLAS and OpenMP pool this process has loaded runs one thread."""
    return _controller().limit(limits=1)


@functools.cache
def _controller():
    """threadpoolctl's view of the loaded libraries, found once per process: finding them reads
    /proc/self/maps, about 3 ms, which ``threadpool_limits`` did on every call (0.5 s over 155 fits)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
