"""The whole pipeline, every first-party plugin included, on ``pytest --device`` (the CPU by default).

On a GPU machine ``pytest --device cuda tests/test_on_device.py tests/test_parity_architectures.py`` checks
that nothing assumes the CPU or float32: extraction, controls, head ablation, erasure, the attention
report and the HTML page all run with the model on that device.
"""

from __future__ import annotations

import json

import pytest

from probe import plugins
from probe.config import validate
from probe.experiment import run_experiment
from tiny_gpt2 import build_tiny_gpt2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=1)


@pytest.fixture(autouse=True)
def fresh_plugins():
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def config(model, device, **fields):
    return validate({
        "model": str(model), "dataset": "mole", "folds": 3, "controls": ["majority", "shuffled", "random_weights"],
        "device": str(device), **fields,
    })


def test_every_first_party_reporter_runs_on_the_device(tiny_model, device, tmp_path):
    run = config(tiny_model, device, reporters=["json", "plots", "html", "head-ablation", "erasure",
                                                "attention-report"],
                 options={"head_ablation": {"probe_layer": 2}, "erasure": {"layer": 1, "draws": 1}})
    results = run_experiment(run, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert results.settings["device"] == str(device)
    assert all(0.0 <= row.accuracy <= 1.0 for row in results.rows)
    heads = json.loads((tmp_path / "out" / "head_ablation.json").read_text())["heads"]
    assert len(heads) == 2 * 4 and all(0 <= head["p_value"] <= 1 for head in heads)
    erased = json.loads((tmp_path / "out" / "erasure.json").read_text())
    assert erased and (tmp_path / "out" / "report.html").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "attention_report.json").read_text())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_both_attentions_give_the_same_vectors_on_the_device(tiny_model, device, dtype, tmp_path):
    run = config(tiny_model, device, attention="both", dtype=dtype, reporters=["json"])
    results = run_experiment(run, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert results.settings["dtype"] == dtype
    assert [row.max_abs_diff_vs_reference for row in results.rows] == [0.0] * len(results.rows)
    assert all(row.accuracy == row.reference_accuracy for row in results.rows)
