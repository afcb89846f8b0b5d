"""The progress of probe's long phases (extraction, probe fits, head ablation, causal tracing, steering,
erasure): a bar with its rate and the time left, or under ``--quiet`` (``progress="line"``) one short line
per phase, rewritten in place, that says how far it is and when it will end. A quiet line appears only on a
terminal (a log file gets no carriage returns) and only once its phase has run ``QUIET_AFTER_S`` seconds, so a
quick run stays silent and a long one still shows its ETA."""

from __future__ import annotations

import sys
from collections.abc import Iterable

# What a run's ``progress`` may be: True (bars), "line" (--quiet: one line per long phase), False (nothing).
LINE = "line"
LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit}s ({percentage:.0f}%) in {elapsed}, ETA {remaining}"
QUIET_AFTER_S = 5.0


def progress_bar(progress: bool | str, *, desc: str, unit: str, total: int | None = None,
                 iterable: Iterable | None = None):
    """A tqdm bar for one phase, as ``progress`` asks; with ``iterable``, iterating it advances the bar."""
    from tqdm.auto import tqdm

    if progress == LINE and on_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, bar_format=LINE_FORMAT, delay=QUIET_AFTER_S,
                    mininterval=1.0)
    shown = bool(progress) and progress != LINE
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not shown)


def on_terminal() -> bool:
    """Whether the bars' stream (standard error) is a terminal."""
    return sys.stderr.isatty()
