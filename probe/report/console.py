"""What reaches the console besides probe's own lines: the progress bars of the libraries probe drives
(transformers' loading bars, datasets' map/filter bars, huggingface_hub's download bars).

Each library has a public switch; ``--quiet`` turns all three off for the command and back afterwards, so
that a notebook or a test that ran a quiet command keeps its bars."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _switches() -> list[tuple[str, Callable[[], bool], Callable[[], None], Callable[[], None]]]:
    """(library, is on, turn off, turn on) for each library's progress bars, through its public API."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as transformers_logging

    return [
        ("huggingface_hub", lambda: not hub.are_progress_bars_disabled(), hub.disable_progress_bars,
         hub.enable_progress_bars),
        ("transformers", transformers_logging.is_progress_bar_enabled, transformers_logging.disable_progress_bar,
         transformers_logging.enable_progress_bar),
        ("datasets", datasets.is_progress_bar_enabled, datasets.disable_progress_bars, datasets.enable_progress_bars),
    ]


def quiet_progress_bars() -> Callable[[], None]:
    """Switch every library's progress bars off; returns what switches back on those that were on."""
    was_on = []
    for _, is_on, turn_off, turn_on in _switches():
        if is_on():
            was_on.append(turn_on)
        turn_off()

    def restore() -> None:
        for turn_on in was_on:
            turn_on()

    return restore


@contextmanager
def progress_bars_off(quiet: bool = True) -> Iterator[None]:
    """Within the block, no library progress bars when ``quiet``; as they were afterwards."""
    if not quiet:
        yield
        return
    restore = quiet_progress_bars()
    try:
        yield
    finally:
        restore()
