"""BLAS held to one thread around small numeric work (one probe fit, one PCA), where threaded BLAS only
adds synchronisation, and on a busy machine spins."""

from __future__ import annotations

import functools


def one_thread():
    """A context manager: inside it, every BLAS and OpenMP pool this process has loaded runs one thread."""
    return _controller().limit(limits=1)


@functools.cache
def _controller():
    """threadpoolctl's view of the loaded libraries, found once per process: finding them reads
    /proc/self/maps, about 3 ms, which ``threadpool_limits`` did on every call (0.5 s over 155 fits)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()
