"""Concept erasure (plugins/erasure.py, probe/erasure.py): the erasers' algebra, and a planted signal
end to end — erasing it drops later-layer accuracy to chance, a random subspace of the same rank does not,
and the model is unchanged afterwards."""

import itertools
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_gpt2 import build_tiny_gpt2

import probe
from probe import plugins
from probe.pipeline.config import load_config
from probe.pipeline.run import run_experiment
from probe.science.erasure import (
    concept_rank,
    erase_hook,
    erase_numpy,
    erasure_point,
    fit_leace,
    random_fitter,
)

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def clusters(seed=0, n=120, d=16, k=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return rng.normal(size=(k, d))[y] * 2 + rng.normal(size=(n, d)), y


def class_mean_spread(X, y):
    return max(np.abs(X[y == label].mean(0) - X.mean(0)).max() for label in np.unique(y))


def test_leace_equalises_class_means_and_the_random_control_does_not():
    X, y = clusters()
    fitter = fit_leace(X, y)
    assert concept_rank(fitter) == 2  # three labels: at most two directions
    assert class_mean_spread(X, y) > 1
    assert class_mean_spread(erase_numpy(fitter.eraser, X), y) < 1e-8
    random = random_fitter(fitter, 2, [0, 0, 0]).eraser
    assert class_mean_spread(erase_numpy(random, X), y) > 0.5
    eye = torch.eye(X.shape[1], dtype=torch.float64)
    assert torch.linalg.matrix_rank(eye - random.P) == torch.linalg.matrix_rank(eye - fitter.eraser.P) == 2
    again = random_fitter(fit_leace(X, y), 2, [0, 0, 0]).eraser  # seeded: the same subspace
    assert torch.allclose(again.P, random.P)
    assert not torch.allclose(random_fitter(fitter, 2, [0, 1, 0]).eraser.P, random.P)


def test_erase_hook_matches_the_eraser_and_keeps_dtype():
    X, y = clusters(d=8)
    eraser = fit_leace(X, y).eraser
    hidden = torch.from_numpy(X).float().reshape(4, 30, 8)  # (batch, pos, d): every position erased
    hook = erase_hook(eraser)
    np.testing.assert_allclose(hook(hidden, "x").reshape(-1, 8).numpy(), erase_numpy(eraser, X), atol=1e-4)
    assert hook(hidden.bfloat16(), "x").dtype == torch.bfloat16


def test_erasure_point_is_the_stream_entering_the_next_block():
    assert erasure_point(0, 6) == "blocks.0.resid_pre" and erasure_point(5, 6) == "blocks.5.resid_pre"
    with pytest.raises(ValueError, match=r"options.erasure.layer is 6.*0\.\.5"):
        erasure_point(6, 6)


def test_fit_leace_needs_two_labels():
    with pytest.raises(ValueError, match="at least two labels"):
        fit_leace(np.ones((4, 3)), ["a"] * 4)


def test_erasure_is_listed_by_probe_plugins():
    from click.testing import CliRunner

    from probe.cli import cli

    plugins.reset_plugin_manager()
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert "erasure\n    register_reporters\n" in result.output
    plugins.lookup("reporter", "erasure")
    plugins.reset_plugin_manager()


# ------------------------------------------------------------------ a planted signal, end to end

PREFIXES = ["The old", "Yesterday a small", "In the garden the", "Near the river one", "A very quiet",
            "Under the bridge the", "Every morning the", "Behind the wall a"]
SUFFIXES = ["was seen.", "slept all day.", "moved again.", "stayed there."]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny random GPT-2 (3 blocks) and rows whose label is which word sits at the target: a signal
    every layer carries linearly, through the word's own residual stream."""
    folder = tmp_path_factory.mktemp("erasure")
    model = build_tiny_gpt2(folder / "model", n_layer=3)
    rows = [{"text": f"{prefix} {word} {suffix}", "target": word, "label": word}
            for word in ("mole", "tower") for prefix, suffix in itertools.product(PREFIXES, SUFFIXES)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return model, folder / "rows.jsonl"


def snapshot_reporter(snapshots: list):
    """A plugin whose reporter records the run's model output on fixed ids, and its attached hook functions."""

    def snapshot(results, output_dir, run):
        model, _ = run.services.load_model()
        with torch.no_grad():
            output = model(torch.tensor([[5, 9, 14, 3, 7]], device=model.device)).last_hidden_state.cpu()
        attached = sum(len(point.fns) for point in probe.hook_points(model).values())
        snapshots.append((output, attached))

    @probe.hookimpl
    def register_reporters(register):
        register("snapshot", snapshot)

    return types.SimpleNamespace(register_reporters=register_reporters)


def test_erasing_a_planted_signal_drops_later_layers_to_chance_and_leaves_the_model_as_it_was(planted, tmp_path):
    model, rows = planted
    snapshots = []
    plugins.reset_plugin_manager()
    plugins.register_plugin(snapshot_reporter(snapshots), "snapshot")
    try:
        config = load_config(EXPERIMENTS / "mole-erasure.yaml", {
            "model": str(model), "dataset": {"name": "file", "path": str(rows)}, "folds": 4,
            "controls": ["majority"], "reporters": ["json", "snapshot", "erasure", "snapshot"],
            "options": {"erasure": {"layer": 1, "draws": 2}},
        })
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    finally:
        plugins.reset_plugin_manager()
    table = json.loads((tmp_path / "out" / "erasure.json").read_text())
    assert table["hook_point"] == "blocks.1.resid_pre" and table["rank"] == [1] * 4
    by_layer = {row["layer"]: row for row in table["layers"]}
    assert sorted(by_layer) == [1, 2, 3]
    for layer, row in by_layer.items():
        assert row["unerased"] > 0.95, layer  # the planted signal is there without erasure
        assert row["random"] > 0.9, layer  # and survives a random direction
        assert row["leace"] <= 0.65, layer  # but not its own erasure (chance: 0.5)
    assert table["majority"] == pytest.approx(0.5, abs=0.05)
    loss = table["loss"]  # GPT-2 has an LM head: the model's own loss is measured
    assert loss["available"] and loss["tokens"] > 0 and np.isfinite(loss["delta_leace"])
    assert len(loss["delta_random_draws"]) == 2
    for name in ("erasure.png", "erasure.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    (before, hooks_before), (after, hooks_after) = snapshots
    assert hooks_before == hooks_after == 0
    assert torch.equal(before, after)  # every erasure hook was removed again


def test_erasure_evaluates_on_the_runs_own_fixed_split(planted, tmp_path):
    """Erasers fitted on the split's train rows, probes scored and the loss measured on its test rows."""
    from probe.pipeline.models import load_tokenizer

    model, rows = planted
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    for n, row in enumerate(lines):
        row["split"] = "test" if n % 3 == 0 else "train"
    (tmp_path / "split.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines))
    config = load_config(EXPERIMENTS / "mole-erasure.yaml", {
        "model": str(model), "dataset": {"name": "file", "path": str(tmp_path / "split.jsonl")},
        "evaluation": {"split_field": "split", "train": "train", "test": "test"}, "controls": ["majority"],
        "reporters": ["json", "erasure"], "options": {"erasure": {"layer": 1, "draws": 2}},
    })
    plugins.reset_plugin_manager()
    try:
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    finally:
        plugins.reset_plugin_manager()
    table = json.loads((tmp_path / "out" / "erasure.json").read_text())
    assert table["folds"] == 1 and len(table["rank"]) == 1
    tokenizer = load_tokenizer(str(model))
    predicted = sum(len(tokenizer(row["text"])["input_ids"]) - 1 for row in lines if row["split"] == "test")
    assert table["loss"]["tokens"] == predicted  # the test rows' next tokens, not every row's


def test_vectors_from_a_block_equal_the_extracted_vectors(planted, tmp_path):
    from transformers import GPT2Model

    from probe.pipeline.extract import extract
    from probe.pipeline.models import load_tokenizer
    from probe.pipeline.partial import capture_block_inputs, vectors_from

    folder, _ = planted
    model = probe.swap_attention(GPT2Model.from_pretrained(folder, attn_implementation="eager").eval())
    tokenizer = load_tokenizer(str(folder))
    texts = [f"{prefix} mole {suffix}" for prefix, suffix in zip(PREFIXES, SUFFIXES * 2)]
    spans = [(text.index("mole"), text.index("mole") + 4) for text in texts]
    store = extract(lambda: (model, tokenizer), texts, spans, layers=[1, 2, 3], folder=tmp_path, batch_size=3,
                    progress=False)
    inputs = capture_block_inputs(model, tokenizer, texts, spans, 1, batch_size=3, whole_rows=True)
    deepest = []
    vectors = vectors_from(model, inputs, 1, [3, 1, 2], on_deepest=lambda batch, hidden: deepest.extend(batch.rows))
    assert sorted(vectors) == [1, 2, 3] and sorted(deepest) == list(range(len(texts)))
    for layer in (1, 2, 3):  # extraction kept whole rows too ("last" was asked for): the same sums
        np.testing.assert_array_equal(vectors[layer], store.layer("target", layer))


def test_bad_erasure_options_name_the_option():
    from probe_plugins.erasure import erasure_settings

    from probe.pipeline.config import validate

    rows = [types.SimpleNamespace(layer=layer, position="target", subset="all", accuracy=accuracy)
            for layer, accuracy in enumerate([0.3, 0.8, 0.9, 0.95])]
    results = types.SimpleNamespace(rows=rows)

    def settings(**options):
        return erasure_settings(results, validate({"model": "x", "dataset": "mole", "options": {"erasure": options}}), 3)

    assert settings()["layer"] == 2  # the best layer with a block after it (layer 3 has none)
    assert settings(layer=0)["hook_point"] == "blocks.0.resid_pre"
    with pytest.raises(ValueError, match="unknown key.*lyer"):
        settings(lyer=1)
    with pytest.raises(ValueError, match="draws must be a positive integer"):
        settings(draws=0)
    with pytest.raises(ValueError, match="layer is 3"):
        settings(layer=3)
    with pytest.raises(ValueError, match="position is 'last'"):
        settings(position="last")
