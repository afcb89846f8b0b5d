"""Python's cycle collector, kept from rescanning what a run loads once.

Loading a run imports torch, transformers and scikit-learn and reads the model's config, tokenizer and rows:
about half a million objects that live as long as the run. The collector's full pass scans every object
each time the heap has grown by a quarter, so while they are created it rescans them again and again: on
SmolLM2's mole run (vectors not cached), nine full passes and 1.4 s of an 11 s run. ``long_lived`` runs
such a block with the collector off, then collects once and freezes what is left (``gc.freeze``: later
passes skip it); ``for_one_run`` hands the frozen objects back to the collector when the run ends, so
nothing a run froze outlives it (a notebook or a script may run many experiments in one process).
"""

from __future__ import annotations

import contextlib
import gc


@contextlib.contextmanager
def long_lived():
    """Within the block the collector is off; after it, one pass frees the block's cyclic garbage (a GGUF
    conversion leaves a whole model in cycles) and everything still alive is frozen."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        if enabled:
            gc.enable()


@contextlib.contextmanager
def for_one_run():
    """Yields ``long_lived`` for the run's loading blocks; after the block every object they froze is
    collectable again. If something outside probe froze objects before (a server that forks), it yields a
    block that does nothing, and probe leaves the collector alone."""
    if gc.get_freeze_count():
        yield contextlib.nullcontext
        return
    try:
        yield long_lived
    finally:
        gc.unfreeze()
