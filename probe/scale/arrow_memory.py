"""Arrow's allocator for the ``probe`` command: jemalloc, which hands freed memory back to the system at
once, where this pyarrow has it.

Arrow's default allocator on Linux, mimalloc, kept memory resident after the rows were loaded and freed, in
proportion to the rows: a whole run peaked 50–60 MiB higher than on jemalloc at 100,000 rows, about 20 at
10,000 (docs/benchmarks.md, "Data larger than memory"). The command is the application, so it chooses;
a library call (``probe.run``) leaves the choice to the program that imports it. A pool the user names in
``ARROW_DEFAULT_MEMORY_POOL`` is kept."""

from __future__ import annotations

import os


def prefer_jemalloc() -> str:
    """Make jemalloc Arrow's default pool unless ``ARROW_DEFAULT_MEMORY_POOL`` names one or this build of
    pyarrow lacks it (Windows wheels); returns the backend in use."""
    import pyarrow

    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pyarrow.set_memory_pool(pyarrow.jemalloc_memory_pool())
        except NotImplementedError:  # built without jemalloc: Arrow's default stays
            pass
    return pyarrow.default_memory_pool().backend_name
