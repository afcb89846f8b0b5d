"""The typed pipeline and its Python API: Results and its tidy table, probe.run / probe.load_results, results
that do not depend on n_jobs, the cache key, rerunning from a block, and head ablation's uncertainty."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_gpt2 import build_tiny_gpt2

import probe
import probe.notebook
import probe.pipeline.run
from probe import plugins
from probe.pipeline.config import validate
from probe.pipeline.results import TABLE_COLUMNS, Results, load_results
from probe.pipeline.run import run_experiment

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=1)


pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


def small(model, **fields):
    raw = {"model": str(model), "dataset": "mole", "folds": 3, "controls": ["majority", "shuffled"],
           "reporters": ["json"], "split_by": "cue", **fields}
    return validate(raw)


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_PLUGINS", "")
        plugins.reset_plugin_manager()
        results = run_experiment(small(tiny_model), base / "out", cache_dir=base / "cache", progress=False, n_jobs=1)
        plugins.reset_plugin_manager()
    return {"out": base / "out", "cache": base / "cache", "results": results}


def test_the_tidy_table_has_one_row_per_layer_position_subset(run_dir):
    results = run_dir["results"]
    table = results.layers
    assert list(table.columns[: len(TABLE_COLUMNS)]) == list(TABLE_COLUMNS)
    assert {"balanced_accuracy", "cohen_kappa"} <= set(table.columns)  # scalar metrics become columns
    assert len(table) == 3 * 4  # layers 0..2 × subsets all, both, left, right
    assert not table.duplicated(["layer", "position", "subset"]).any()
    row = table[(table.layer == 1) & (table.subset == "all")].iloc[0]
    typed = next(r for r in results.rows if r.layer == 1 and r.subset == "all")
    assert row.accuracy == typed.accuracy and row.selectivity == typed.accuracy - typed.shuffled_accuracy
    assert table.random_weights_accuracy.isna().all()  # a control that did not run is missing, not 0


def test_best_is_the_highest_accuracy_per_position_and_subset(run_dir):
    results = run_dir["results"]
    best = results.best()
    assert len(best) == 4 and set(best.subset) == {"all", "both", "left", "right"}
    table = results.layers
    for _, row in best.iterrows():
        rows = table[(table.position == row.position) & (table.subset == row.subset)]
        assert row.accuracy == rows.accuracy.max()
    assert results.baseline("majority", "left").accuracy == results.to_dict()["baselines"]["majority[left]"]["accuracy"]


def test_results_round_trip_through_results_json(run_dir):
    results = run_dir["results"]
    again = load_results(run_dir["out"])
    assert again == results and again.to_dict() == results.to_dict()
    on_disk = json.loads((run_dir["out"] / "results.json").read_text())
    assert on_disk == results.to_dict()
    assert set(Results.model_json_schema()["properties"]) == set(on_disk)
    with pytest.raises(FileNotFoundError, match="results.json"):
        load_results(run_dir["out"] / "nowhere")


def test_plot_returns_a_figure_with_a_panel_per_subset(run_dir, tmp_path):
    figure = probe.notebook.plot(run_dir["results"], tmp_path / "accuracy.png")
    assert len([ax for ax in figure.axes if ax.get_visible()]) == 4  # split_by panels wrap after three
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("n_jobs, worth", [(2, None), (None, 0), (None, float("inf"))])
def test_results_do_not_depend_on_n_jobs(run_dir, tiny_model, tmp_path, monkeypatch, n_jobs, worth):
    """By default small batches of fits run in this process, big ones in worker processes; explicitly
    asked-for jobs always get them: the same numbers either way."""
    import probe.science.probes

    if worth is not None:
        monkeypatch.setattr(probe.science.probes, "LOKY_WORTH", worth)
    parallel = run_experiment(small(tiny_model), tmp_path / "out", cache_dir=tmp_path / "fresh", progress=False,
                              n_jobs=n_jobs)
    assert parallel.to_dict()["layers"] == run_dir["results"].to_dict()["layers"]
    assert parallel.baselines == run_dir["results"].baselines


def test_a_rerun_on_cached_vectors_fits_no_probe(run_dir, tiny_model, tmp_path, monkeypatch):
    import probe.science.probes

    def no_fit(*args):
        raise AssertionError("a probe was fitted although its predictions are cached")

    monkeypatch.setattr(probe.science.probes, "_fit_predict", no_fit)
    again = run_experiment(small(tiny_model), tmp_path / "out", cache_dir=run_dir["cache"], progress=False)
    assert again.to_dict()["layers"] == run_dir["results"].to_dict()["layers"]
    # A different probe setting is a different key: it is fitted.
    with pytest.raises(AssertionError, match="a probe was fitted"):
        run_experiment(small(tiny_model, probe={"name": "logreg", "C": 0.5}), tmp_path / "c", progress=False,
                       cache_dir=run_dir["cache"], n_jobs=1)


def test_a_reporters_options_do_not_change_the_feature_cache_key(run_dir, tiny_model, tmp_path):
    """mole-heads differs from mole only in reporters and their options: it reuses mole's vectors."""
    before = sorted(p.name for p in (run_dir["cache"] / "features").iterdir())
    config = small(tiny_model, reporters=["json", "attention-report"], options={"attention_report": {"top_k": 2}})
    plugins.load_plugin_file(ROOT / "plugins" / "attention_report.py")
    run_experiment(config, tmp_path / "out", cache_dir=run_dir["cache"], progress=False)
    assert sorted(p.name for p in (run_dir["cache"] / "features").iterdir()) == before
    assert (tmp_path / "out" / "attention_report.md").exists()


def test_a_measures_options_do_not_change_the_feature_cache_key(tiny_model, tmp_path, monkeypatch):
    """With an activation plugin loaded, options count in the key, but not those only a measure reads."""
    monkeypatch.setattr(probe.pipeline.run, "activation_plugins", lambda: ["an-activation-plugin"])
    plugins.load_plugin_file(ROOT / "plugins" / "mdl.py")
    cache = tmp_path / "cache"
    run_experiment(small(tiny_model, layers=[0, 1]), tmp_path / "a", cache_dir=cache, progress=False, n_jobs=1)
    before = sorted(p.name for p in (cache / "features").iterdir())
    config = small(tiny_model, layers=[0, 1], measures=["mdl"], options={"mdl": {"fractions": [0.5, 1.0]}})
    results = run_experiment(config, tmp_path / "b", cache_dir=cache, progress=False, n_jobs=1)
    assert sorted(p.name for p in (cache / "features").iterdir()) == before
    assert all("codelength" in row.measures["mdl"] for row in results.rows)


@pytest.mark.parametrize("n_jobs", [None, 2])
def test_measures_do_not_depend_on_n_jobs(tiny_model, tmp_path, n_jobs):
    """Measures run in this process by default when they are few (as the fits do), in workers when asked:
    the same code lengths either way."""
    plugins.load_plugin_file(ROOT / "plugins" / "mdl.py")
    config = small(tiny_model, layers=[0, 2], measures=["mdl"], controls=[])
    cache = tmp_path / "cache"
    alone = run_experiment(config, tmp_path / "a", cache_dir=cache, progress=False, n_jobs=1)
    other = run_experiment(config, tmp_path / "b", cache_dir=cache, progress=False, n_jobs=n_jobs)
    assert [row.measures for row in other.rows] == [row.measures for row in alone.rows]
    assert all(row.measures["mdl"]["codelength"] > 0 for row in alone.rows)


def test_probe_run_takes_a_path_a_dict_or_overrides(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = probe.run(ROOT / "experiments" / "mole.yaml", model=str(tiny_model), folds=3, controls=["majority"],
                        reporters=["json"], layers=[0, 2])
    assert isinstance(results, Results) and results.settings["folds"] == 3
    assert (tmp_path / "runs" / "mole" / "results.json").exists()  # default output: runs/NAME
    from_dict = probe.run({"model": str(tiny_model), "dataset": "mole", "folds": 3, "controls": [],
                           "reporters": []}, layers=[2], output=tmp_path / "d")
    assert list(from_dict.layers.layer) == [2]


def test_rerunning_from_a_block_gives_the_extracted_vectors(tiny_model, tmp_path):
    """Bit for bit at each batch size: reruns batch rows as extraction does (sorted by length, padded)."""
    from transformers import GPT2Model

    from probe.pipeline.extract import extract
    from probe.pipeline.models import load_tokenizer
    from probe.pipeline.partial import capture_block_inputs, vectors_at

    model = probe.swap_attention(GPT2Model.from_pretrained(tiny_model, attn_implementation="eager").eval())
    tokenizer = load_tokenizer(str(tiny_model))
    texts = ["The gardener trapped the mole.", "One mole of gas fills the flask.", "A mole.", "The spy mole hid.",
             "The old mole dug.", "The new mole ran.", "A mole hid."]
    spans = [(t.index("mole"), t.index("mole") + 4) for t in texts]
    for batch_size in (1, 2, 16):
        whole = extract(lambda: (model, tokenizer), texts, spans, layers=[1, 2], folder=tmp_path / f"f{batch_size}",
                        batch_size=batch_size, progress=False)
        inputs = capture_block_inputs(model, tokenizer, texts, spans, block=1, batch_size=batch_size, whole_rows=True)
        for position in ("target", "last"):
            np.testing.assert_array_equal(vectors_at(model, inputs, 1, 2, position), whole.layer(position, 2))
    # Only the target asked for: GPT-2 is causal, so extraction and the rerun both stop at the target.
    cut = extract(lambda: (model, tokenizer), texts, spans, layers=[1, 2], folder=tmp_path / "cut",
                  positions=["target"], batch_size=2, progress=False)
    inputs = capture_block_inputs(model, tokenizer, texts, spans, block=1, batch_size=2)
    np.testing.assert_array_equal(vectors_at(model, inputs, 1, 2), cut.layer("target", 2))
    with pytest.raises(ValueError, match="whole_rows"):
        vectors_at(model, inputs, 1, 2, "last")
    with probe.hooks(model, {"blocks.1.attn.z": lambda z, name: z * 0}):
        ablated = vectors_at(model, inputs, 1, 2)
    assert not np.allclose(ablated, cut.layer("target", 2))
    with pytest.raises(ValueError, match="nothing to rerun"):
        vectors_at(model, inputs, 1, 1)


def test_mcnemar_counts_only_the_rows_that_changed():
    from probe_plugins.head_ablation import mcnemar

    same = np.array([True, False, True, True])
    assert mcnemar(same, same) == 1.0
    before = np.array([True] * 20)
    assert mcnemar(before, np.array([True] * 18 + [False] * 2)) == 0.5  # 2 rows: noise
    assert mcnemar(before, np.array([False] * 12 + [True] * 8)) < 0.001  # 12 broken, none fixed


def test_head_ablation_reports_each_drop_with_its_uncertainty(tiny_model, tmp_path, caplog):
    from probe.pipeline.config import load_config

    plugins.load_plugin_file(ROOT / "plugins" / "head_ablation.py")
    config = load_config(ROOT / "experiments" / "mole-heads.yaml", {
        "model": str(tiny_model), "folds": 3, "controls": ["majority"], "reporters": ["json", "head-ablation"],
        "options": {"head_ablation": {"probe_layer": 2}},
    })
    run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    table = json.loads((tmp_path / "out" / "head_ablation.json").read_text())
    assert [(h["block"], h["head"]) for h in table["heads"]] == [(b, h) for b in (0, 1) for h in range(4)]
    for head in table["heads"]:
        assert head["drop_std"] >= 0 and 0 <= head["p_value"] <= 1
    cached = sorted(p.name for p in (tmp_path / "cache" / "ablation").iterdir())
    assert len(cached) == 2 + 8  # per block unablated, per head ablated
    run_experiment(config, tmp_path / "again", cache_dir=tmp_path / "cache", progress=False)
    assert json.loads((tmp_path / "again" / "head_ablation.json").read_text()) == table
    # Two cached entries swapped by name: each is named, removed and computed again; the table is the same.
    first, second = (tmp_path / "cache" / "ablation" / name for name in cached[:2])
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    with caplog.at_level("WARNING", logger="probe"):
        run_experiment(config, tmp_path / "swapped", cache_dir=tmp_path / "cache", progress=False)
    assert caplog.text.count("written under another key") == 2 and "cached ablation vectors" in caplog.text
    assert json.loads((tmp_path / "swapped" / "head_ablation.json").read_text()) == table
    # One copy per forward instead of every head's together (a fresh cache): the same table.
    one_by_one = load_config(ROOT / "experiments" / "mole-heads.yaml", {
        "model": str(tiny_model), "folds": 3, "controls": ["majority"], "reporters": ["json", "head-ablation"],
        "options": {"head_ablation": {"probe_layer": 2, "copies_per_forward": 1}},
    })
    run_experiment(one_by_one, tmp_path / "single", cache_dir=tmp_path / "single-cache", progress=False)
    assert json.loads((tmp_path / "single" / "head_ablation.json").read_text()) == table


def test_results_show_the_report_in_a_notebook_cell(run_dir):
    from probe.notebook import report_html
    from probe.pipeline.results import load_results

    for results in (run_dir["results"], load_results(run_dir["out"])):
        assert results.run_dir == run_dir["out"]
        html = report_html(results)
        assert "<html" not in html.lower()[:200]  # a fragment, not a page: several can share a notebook
        assert results.experiment in html and "plotly" in html.lower()
    detached = type(run_dir["results"]).from_dict(run_dir["results"].to_dict())  # no run folder known
    assert detached.run_dir is None and detached.experiment in report_html(detached)


def test_a_run_on_an_explicit_device_in_bfloat16(tiny_model, tmp_path):
    results = run_experiment(small(tiny_model, device="cpu", dtype="bfloat16"), tmp_path / "out",
                             cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    assert results.settings["device"] == "cpu" and results.settings["dtype"] == "bfloat16"
    assert all(0.0 <= row.accuracy <= 1.0 for row in results.rows)


def test_a_device_the_machine_lacks_is_refused_before_any_model_work(tiny_model, tmp_path):
    from probe.pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="device: 'cuda:99'"):
        run_experiment(small(tiny_model, device="cuda:99"), tmp_path / "out", cache_dir=tmp_path / "cache",
                       progress=False, n_jobs=1)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_a_model_spread_to_disk_by_device_map_gives_the_same_vectors(tiny_model, tmp_path, caplog):
    import numpy as np

    plain = run_experiment(small(tiny_model, device="cpu"), tmp_path / "plain", cache_dir=tmp_path / "cache-plain",
                           progress=False, n_jobs=1)
    spread_config = small(tiny_model, device_map="auto", max_memory={"cpu": "40KB", "disk": "1GB"})
    spread = run_experiment(spread_config, tmp_path / "spread", cache_dir=tmp_path / "cache-spread",
                            progress=False, n_jobs=1)
    assert "offloaded to the disk" in caplog.text  # accelerate really put some weights on disk
    assert [r.accuracy for r in plain.rows] == [r.accuracy for r in spread.rows]
    plain_chunks = sorted((tmp_path / "cache-plain").rglob("chunk-*.safetensors"))
    spread_chunks = sorted((tmp_path / "cache-spread").rglob("chunk-*.safetensors"))
    from safetensors.numpy import load_file

    assert len(plain_chunks) == len(spread_chunks) > 0
    for a, b in zip(plain_chunks, spread_chunks):
        x, y = load_file(a), load_file(b)
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def test_mlflow_gets_every_numeric_column_of_the_tidy_table(run_dir):
    """A sweep's MLflow metrics are the table's columns (controls, extra metrics, measures), not a copy."""
    from probe.sweep.tracking import layer_metrics

    table = run_dir["results"].layers
    shown = {column for column in table.columns
             if column not in ("layer", "position", "subset") and table[column].notna().any()}
    logged = {name.split("/", 2)[2] for name, _, _ in layer_metrics(run_dir["results"]) if not name.startswith("best/")}
    assert "macro_f1_std" in shown and logged == shown


def test_splits_folds_name_the_subsets_there_are(tiny_model, tmp_path):
    from probe.pipeline.run import load_dataset, make_splits

    config = small(tiny_model)
    rows, _ = load_dataset(config)
    splits = make_splits(rows, config)
    assert len(splits.folds()) == 3 and len(splits.folds("left")) == 3
    with pytest.raises(ValueError, match="no subset 'middle'.*its subsets: all, both, left, right"):
        splits.folds("middle")


def test_the_services_and_the_stage_values_are_read_only(tiny_model, tmp_path):
    """A stage can't fill in what another stage made: assigning to a field raises."""
    import dataclasses

    from probe.pipeline.context import Services
    from probe.pipeline.run import load_dataset, make_splits

    config = small(tiny_model)
    services = Services(config, str(tiny_model), tmp_path, False)
    splits = make_splits(load_dataset(config)[0], config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        services.cache_dir = tmp_path / "elsewhere"
    with pytest.raises(dataclasses.FrozenInstanceError):
        splits.subsets[0].folds = []
    assert services.n_blocks == 2 and services.loads == 0  # the depth is read from config.json: no weights
