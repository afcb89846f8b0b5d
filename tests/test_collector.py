"""probe.scale.collector: what a run's loading blocks leave frozen, what they free, and that a run hands every
frozen object back to the collector (a notebook or a script may run many experiments in one process)."""

from __future__ import annotations

import gc
import weakref

import pytest
from tiny_gpt2 import build_tiny_gpt2

from probe.pipeline.config import validate
from probe.pipeline.run import run_experiment
from probe.scale import collector

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    model = build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=1)
    return validate({"model": str(model), "dataset": "mole", "folds": 3, "controls": [], "reporters": ["json"]})


@pytest.fixture
def nothing_frozen():
    """These tests count what probe freezes, so they start from nothing frozen (one machine's imports had
    frozen 375 objects before any test ran)."""
    gc.unfreeze()


class Node:
    """Something weakref can point at, that can sit in a cycle."""


def test_a_long_lived_block_frees_its_cycles_and_freezes_what_it_keeps(nothing_frozen):
    assert gc.get_freeze_count() == 0
    was_enabled = gc.isenabled()
    kept = Node()
    assert any(x is kept for x in gc.get_objects())
    try:
        with collector.long_lived():
            assert not gc.isenabled()
            cycle = Node()
            cycle.me = cycle  # garbage only the collector can free
            dead = weakref.ref(cycle)
            del cycle
            kept.payload = [Node() for _ in range(10)]
        assert dead() is None
        assert gc.isenabled() == was_enabled
        assert gc.get_freeze_count() > 0
        assert not any(x is kept for x in gc.get_objects())  # frozen: the collector's passes skip it
    finally:
        gc.unfreeze()


def test_a_run_unfreezes_what_it_froze(config, tmp_path, nothing_frozen):
    assert gc.get_freeze_count() == 0
    frozen_during = []
    real = collector.long_lived

    def spy():
        frozen_during.append(gc.get_freeze_count())
        return real()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(collector, "long_lived", spy)
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    assert len(frozen_during) == 2 and frozen_during[1] > 0  # the second block began with the first's frozen
    assert gc.get_freeze_count() == 0


def test_objects_frozen_before_a_run_stay_frozen_and_the_run_freezes_nothing(config, tmp_path):
    gc.freeze()  # a server that forks workers does this
    try:
        before = gc.get_freeze_count()
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
        assert 0 < gc.get_freeze_count() <= before  # not thawed, nothing added (some frozen ones died)
    finally:
        gc.unfreeze()
