"""The whole pipeline on the two real pretrained models that install offline (issue: main command).

Both models are probed on the built-in mole set with probe's reimplemented attention; the best layer
must be far above the majority-class baseline. SmolLM2 is probed at a few layers only, to keep the
suite quick: extraction stops after the deepest one.
"""

import pytest

from probe.pipeline.config import validate
from probe.pipeline.run import run_experiment

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


@pytest.mark.parametrize(
    "model, layers",
    [
        ("minilm-l6", "all"),
        pytest.param("smollm2-135m", [0, 4, 8], marks=pytest.mark.xdist_group("smollm2")),
    ],
)
def test_mole_senses_are_found_far_above_the_majority_baseline(model, layers, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = validate({
        "name": f"mole-{model}", "model": model, "dataset": "mole", "layers": layers, "folds": 3,
        "controls": ["majority", "shuffled"], "reporters": ["json", "summary"], "batch_size": 32,
    })
    results = run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)

    majority = results.baseline("majority").accuracy
    rows = results.rows
    best = max(rows, key=lambda r: r.accuracy)
    assert best.layer > 0, "context must add something over the bare embedding"
    assert best.accuracy > majority + 0.35, (model, best.accuracy, majority)
    assert best.selectivity > 0.3
    assert rows[0].accuracy < majority + 0.15  # layer 0: one vector per word form, no context
    assert (tmp_path / "out" / "summary.md").exists()
