"""run_experiment and `probe run` end to end, on a tiny random-init GPT-2 built offline.

What is checked: the files a run writes and their schema, determinism under a seed, the feature cache
(reuse without model work, resume after an interruption), a planted left-context signal that the probe
must find while the shuffled-label control stays at chance, attention: both, split_by / filter, and
how bad data rows are reported or skipped.
"""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from conftest import fake_gguf_conversion, shared_folder
from PIL import Image
from tiny_gpt2 import build_tiny_gpt2

import probe.pipeline.extract
import probe.pipeline.models
import probe.pipeline.run
from probe import plugins
from probe.cli import cli
from probe.pipeline.config import validate
from probe.pipeline.context import Rows, Services
from probe.pipeline.extract import FeatureStore, extract
from probe.pipeline.results import without_provenance
from probe.pipeline.run import run_experiment
from probe.report.writers import CSV_COLUMNS
from probe.store.files import MARKER

ROOT = Path(__file__).resolve().parent.parent
MOLE_YAML = ROOT / "experiments" / "mole.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Words that are one token of the tiny tokenizer after a space: every planted target sits at one position.
FILLER = (
    "about across after air all and been built can card desk every from had hand has her his into its "
    "light off one out over than that three under was who with year you"
).split()
CUES = {"animal": "land", "unit": "chemist"}  # the word just LEFT of the target decides the sense


# ---------------------------------------------------------------- fixtures and helpers




@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    # seed=1: a model whose weights differ from the random_weights control's (torch.manual_seed(config.seed=0)).
    folder = shared_folder(tmp_path_factory, "tiny-gpt2-n2-d32-s1",
                           lambda f: build_tiny_gpt2(f / "model", n_layer=2, n_embd=32, seed=1))
    return folder / "model"


def isolated(produce):
    """Run ``produce`` with only the built-in plugins, like the autouse fixture below does for tests."""

    def run(folder):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PROBE_PLUGINS", "")
            plugins.reset_plugin_manager()
            try:
                produce(folder)
            finally:
                plugins.reset_plugin_manager()

    return run


pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


def write_planted(path: Path, n_per_label: int = 100, seed: int = 0, cues=("left",)) -> Path:
    """"Then <filler> the <cue word> mole <filler...>." — the sense is decided only by the word left of "mole".

    Every word after "Then" is one token, so the target sits at the same position in every row.

    The ``cue`` column cycles through ``cues`` (one value per pair of rows), for split_by / filter tests.
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n_per_label):
        for label, word in CUES.items():
            before = rng.choice(FILLER)
            after = " ".join(rng.choice(FILLER) for _ in range(rng.randint(1, 3)))
            rows.append({"text": f"Then {before} the {word} mole {after}.", "target": "mole", "label": label,
                         "cue": cues[i % len(cues)]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def config_for(model: Path, dataset, **fields):
    raw = {"model": str(model), "dataset": dataset, "folds": 3, "controls": ["majority"], "reporters": ["json"]}
    raw.update(fields)
    return validate(raw)


def planted_config(model: Path, data: Path, **fields):
    return config_for(model, {"name": "file", "path": str(data)}, **fields)


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"PROBE_PLUGINS": ""})


def feature_folders(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "features").iterdir() if p.is_dir())


def count_model_loads(monkeypatch) -> list:
    """Every call of probe.pipeline.models.load_model from now on, recorded (and passed through)."""
    calls = []
    real = probe.pipeline.models.load_model
    monkeypatch.setattr(probe.pipeline.models, "load_model", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path.name} is not a PNG"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
    assert width > 100 and height > 100, f"{path.name} is {width}x{height}"


def load_and_swap(model_path: Path):
    """What run_experiment's loader does for attention: reimplemented, without the config plumbing."""
    from transformers import AutoModel

    from probe.core.swap import swap_attention
    from probe.pipeline.models import load_model, load_tokenizer

    model = load_model(str(model_path), model_class=AutoModel)
    swap_attention(model)
    return model, load_tokenizer(str(model_path))


# ---------------------------------------------------------------- `probe run experiments/mole.yaml`


def test_probe_run_mole_yaml_writes_every_report(tiny_model, tmp_path):
    """`probe run experiments/mole.yaml --model TINY ...`: every control and every reporter.

    One test on purpose: the run is the expensive part, the checks below are cheap.
    """
    out = tmp_path / "out"
    result = invoke("run", MOLE_YAML, "--model", tiny_model, "--output", out, "--cache-dir", tmp_path / "cache",
                    "--quiet", "--set", "folds=3")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "mole [target, all]: best layer" in result.output
    assert f"results, plots and summary in {out}" in result.output

    names = {p.name for p in out.iterdir()}
    assert {"results.json", "results.csv", "accuracy.png", "pca.png", "attention.png", "summary.md"} <= names
    assert not [n for n in names if n.startswith(".") and n != MARKER], "temporary files left behind"
    for png in ("accuracy.png", "pca.png", "attention.png"):
        assert_png(out / png)

    results = json.loads((out / "results.json").read_text())
    check_results_json(results, tiny_model)
    check_results_csv(out / "results.csv", results)
    check_summary(out / "summary.md", results)


def check_results_json(results: dict, tiny_model: Path) -> None:
    assert {"experiment", "model", "settings", "versions", "layers", "baselines"} <= set(results)
    assert results["experiment"] == "mole"
    assert results["model"]["name"] == str(tiny_model)
    assert results["model"]["layers"] == 2
    settings = results["settings"]
    assert settings["folds"] == 3  # the --set override is what was run and recorded
    assert settings["model"] == str(tiny_model)
    assert settings["dataset"] == "mole" and settings["seed"] == 0
    assert {"probe", "torch", "transformers", "scikit-learn", "python"} <= set(results["versions"])
    assert results["versions"]["torch"] == torch.__version__
    assert results["provenance"]["timestamp"].endswith("+00:00")  # UTC, ISO-8601
    assert results["dataset"]["rows"] == 192
    assert results["dataset"]["labels"] == ["animal", "skin", "spy", "unit"]

    # mole.yaml probes the word and the last token, on all rows and per cue
    assert {(row["position"], row["subset"]) for row in results["layers"]} == {
        (position, subset) for position in ("target", "last") for subset in ("all", "both", "left", "right")}
    rows = [row for row in results["layers"] if (row["position"], row["subset"]) == ("target", "all")]
    # One row per hidden state: the embeddings (layer 0) first, then one per block.
    assert [row["layer"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0
        assert len(row["fold_accuracies"]) == 3
        assert row["accuracy"] == pytest.approx(np.mean(row["fold_accuracies"]))
        assert sum(map(sum, row["confusion"])) == 192
        # mole.yaml's controls: majority, shuffled, random_weights
        assert 0.0 <= row["shuffled_accuracy"] <= 1.0
        assert row["selectivity"] == pytest.approx(row["accuracy"] - row["shuffled_accuracy"])
        assert 0.0 <= row["random_weights_accuracy"] <= 1.0
    assert results["baselines"]["layer0_target"]["accuracy"] == rows[0]["accuracy"]
    majority = results["baselines"]["majority"]
    assert majority["accuracy"] == pytest.approx(0.25, abs=0.02)  # four balanced senses


def check_results_csv(path: Path, results: dict) -> None:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        fieldnames = tuple(reader.fieldnames)
        csv_rows = list(reader)
    # The fixed columns, then one per metric (built-ins: balanced_accuracy, cohen_kappa).
    metric_names = sorted(results["layers"][0]["metrics"])
    assert {"balanced_accuracy", "cohen_kappa"} <= set(metric_names)
    recalls = tuple(f"recall_{label}" for label in results["layers"][0]["per_sense_recall"])  # all rows: every label
    assert fieldnames == CSV_COLUMNS + recalls + tuple(metric_names)
    json_rows = results["layers"]
    assert len(csv_rows) == len(json_rows)
    for csv_row, json_row in zip(csv_rows, json_rows):
        assert int(csv_row["layer"]) == json_row["layer"]
        assert (csv_row["position"], csv_row["subset"]) == (json_row["position"], json_row["subset"])
        for column in ("accuracy", "macro_f1", "shuffled_accuracy", "random_weights_accuracy"):
            assert float(csv_row[column]) == json_row[column], column
        for name in metric_names:
            assert float(csv_row[name]) == json_row["metrics"][name], name
        assert csv_row["reference_accuracy"] == ""  # attention: reimplemented has no reference column
        assert [float(csv_row["accuracy_ci_low"]), float(csv_row["accuracy_ci_high"])] == json_row["accuracy_ci"]
        for label, recall in json_row["per_sense_recall"].items():
            assert float(csv_row[f"recall_{label}"]) == recall


def check_summary(path: Path, results: dict) -> None:
    summary = path.read_text()
    best = max((r for r in results["layers"] if (r["position"], r["subset"]) == ("target", "all")),
               key=lambda r: r["accuracy"])
    assert summary.startswith("# mole\n")
    assert "| position | subset | best layer |" in summary
    low, high = best["accuracy_ci"]  # the interval is the headline; the fold std stays in results.json
    assert f"| target | all | {best['layer']} | {best['accuracy']:.3f} [{low:.3f}, {high:.3f}] |" in summary
    assert "## Best layer, chosen without peeking" in summary
    assert f"majority baseline accuracy: {results['baselines']['majority']['accuracy']:.3f}" in summary
    assert "Skipped" not in summary


def test_changing_the_data_invalidates_the_cache(tiny_model, tmp_path, monkeypatch):
    data = write_planted(tmp_path / "planted.jsonl", n_per_label=10)
    cache = tmp_path / "cache"
    run_experiment(planted_config(tiny_model, data), tmp_path / "a", cache_dir=cache, progress=False)
    calls = count_model_loads(monkeypatch)
    write_planted(data, n_per_label=10, seed=1)  # same size, different sentences
    run_experiment(planted_config(tiny_model, data), tmp_path / "b", cache_dir=cache, progress=False)
    assert len(calls) == 1
    assert len(feature_folders(cache)) == 2


# ---------------------------------------------------------------- resuming an interrupted extraction


class Interrupted(RuntimeError):
    pass


@pytest.mark.parametrize("positions", [("target", "last"), ("target",)])  # whole sentences; cut at the target
def test_the_batch_size_moves_the_vectors_by_rounding_only(tiny_model, tmp_path, positions):
    """Rows sorted by length, right-padded: for one batch size the same bits run after run; between batch
    sizes the matrix-multiply kernels round differently, nothing more."""
    data = write_planted(tmp_path / "planted.jsonl", n_per_label=12)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    texts = [row["text"] for row in rows]
    spans = [(row["text"].index(" mole ") + 1, row["text"].index(" mole ") + 5) for row in rows]
    stores = [extract(lambda: load_and_swap(tiny_model), texts, spans, folder=tmp_path / f"batch-{size}-{n}",
                      layers=[0, 1, 2], positions=positions, batch_size=size, progress=False)
              for n, size in enumerate((5, 5, 1, 64))]
    for position in positions:
        for layer in (0, 1, 2):
            first = stores[0].layer(position, layer)
            assert np.array_equal(first, stores[1].layer(position, layer))
            for store in stores[2:]:
                np.testing.assert_allclose(store.layer(position, layer), first, rtol=1e-5, atol=1e-5)


def test_the_batch_size_is_part_of_the_feature_cache_key(tiny_model, tmp_path):
    config = validate({"model": str(tiny_model), "dataset": "mole", "reporters": ["json"], "controls": []})
    services = Services(config, str(tiny_model), tmp_path, False)
    rows = Rows(probe.pipeline.run.load_dataset(config)[0])
    other = Services(config.model_copy(update={"batch_size": 3}), str(tiny_model), tmp_path, False)
    key = probe.pipeline.run.feature_key
    assert key(services, rows, [1], "reimplemented") != key(other, rows, [1], "reimplemented")


def test_extraction_batches_are_the_batches_extract_runs(tiny_model, tmp_path, monkeypatch):
    """Reruns from a block (probe/partial.py) batch rows with extraction_batches: it must mirror extract's
    chunks and batches, or a rerun would differ from the extracted vectors in the last bits."""
    data = write_planted(tmp_path / "planted.jsonl", n_per_label=20)  # 40 rows: chunks of 8 cut length runs
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    texts = [row["text"] for row in rows]
    spans = [(row["text"].index(" mole ") + 1, row["text"].index(" mole ") + 5) for row in rows]
    ran, real = [], probe.pipeline.extract._extract_batch

    def recording(model, tokenizer, batch_texts, *args, **kwargs):
        ran.append([texts.index(text) for text in batch_texts])
        return real(model, tokenizer, batch_texts, *args, **kwargs)

    monkeypatch.setattr(probe.pipeline.extract, "_extract_batch", recording)
    assert len(set(texts)) == len(texts)
    extract(lambda: load_and_swap(tiny_model), texts, spans, folder=tmp_path / "f", layers=[1], batch_size=3,
            chunk_rows=8, progress=False)
    order, _ = probe.pipeline.extract.length_sorted(load_and_swap(tiny_model)[1], texts, spans, cut=False)
    assert ran == probe.pipeline.extract.extraction_batches(order, 3, chunk_rows=8)
    unchunked = [batch.tolist() for _, batch in probe.pipeline.extract.sorted_batches(order, 3)]
    assert ran != unchunked  # the chunk boundaries did change the batches


def test_extract_resumes_at_the_first_missing_chunk(tiny_model, tmp_path):
    data = write_planted(tmp_path / "planted.jsonl", n_per_label=20)  # 40 rows
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    texts = [row["text"] for row in rows]
    spans = [(row["text"].index(" mole ") + 1, row["text"].index(" mole ") + 5) for row in rows]
    kwargs = dict(layers=[0, 1, 2], pooling="mean", batch_size=4, chunk_rows=8, progress=False)  # 5 chunks

    reference = extract(lambda: load_and_swap(tiny_model), texts, spans, folder=tmp_path / "whole", **kwargs)

    forwards = {"n": 0}

    def counting_load(fail_at=None):
        model, tokenizer = load_and_swap(tiny_model)

        def count(module, args, kwargs):
            forwards["n"] += 1
            if forwards["n"] == fail_at:
                raise Interrupted(f"killed during batch {fail_at}")

        model.register_forward_pre_hook(count, with_kwargs=True)
        return model, tokenizer

    per_chunk = [2] * 5  # each chunk of 8 rows in two batches of 4
    folder = tmp_path / "resumable"
    # Killed in chunk 2's last batch: chunks 0 and 1 are finished.
    with pytest.raises(Interrupted):
        extract(lambda: counting_load(fail_at=sum(per_chunk[:3])), texts, spans, folder=folder, **kwargs)
    assert sorted(p.name for p in folder.iterdir()) == ["chunk-00000.safetensors", "chunk-00001.safetensors"]
    finished = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}

    forwards["n"] = 0
    loads = []
    store = extract(lambda: loads.append(1) or counting_load(), texts, spans, folder=folder, **kwargs)
    assert loads == [1]
    assert forwards["n"] == sum(per_chunk[2:])  # chunks 2, 3, 4; chunks 0 and 1 are not redone
    for name, (content, mtime) in finished.items():
        assert (folder / name).read_bytes() == content and (folder / name).stat().st_mtime_ns == mtime
    assert len(store.chunks()) == 5 and (folder / "complete.json").exists()
    for position in ("target", "last"):
        for layer in (0, 1, 2):
            np.testing.assert_array_equal(store.layer(position, layer), reference.layer(position, layer))

    # Complete: a third call never loads the model.
    def must_not_load():
        raise AssertionError("load() called for a complete cache")

    again = extract(must_not_load, texts, spans, folder=folder, **kwargs)
    np.testing.assert_array_equal(again.layer("target", 2), reference.layer("target", 2))


def test_run_experiment_resumes_an_interrupted_extraction(tiny_model, tmp_path, monkeypatch):
    data = write_planted(tmp_path / "planted.jsonl", n_per_label=40)  # 80 rows
    config = planted_config(tiny_model, data, batch_size=8)
    monkeypatch.setitem(probe.pipeline.extract.extract.__kwdefaults__, "chunk_rows", 16)  # 5 chunks of 2 batches
    real_batch = probe.pipeline.extract._extract_batch
    batches = []

    def batch(model, tokenizer, texts, *args):
        batches.append(len(texts))
        if fail_at is not None and len(batches) == fail_at:
            raise Interrupted("killed")
        return real_batch(model, tokenizer, texts, *args)

    monkeypatch.setattr(probe.pipeline.extract, "_extract_batch", batch)
    cache = tmp_path / "cache"

    fail_at = 7  # first batch of chunk 3: chunks 0..2 are on disk
    with pytest.raises(Interrupted):
        run_experiment(config, tmp_path / "out", cache_dir=cache, progress=False)
    (folder,) = feature_folders(cache)
    assert len(FeatureStore(folder, [0, 1, 2], 80).chunks()) == 3
    assert not (folder / "complete.json").exists()
    assert not (tmp_path / "out" / "results.json").exists()

    fail_at, batches[:] = None, []
    resumed = run_experiment(config, tmp_path / "out", cache_dir=cache, progress=False)
    assert sum(batches) == 80 - 3 * 16  # only the missing chunks' rows
    assert feature_folders(cache) == [folder]

    # The resumed cache holds what an uninterrupted extraction of the same rows gives, bit for bit.
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    spans = [(row["text"].index(" mole ") + 1, row["text"].index(" mole ") + 5) for row in rows]
    monkeypatch.setattr(probe.pipeline.extract, "_extract_batch", real_batch)
    whole = extract(Services(config, str(tiny_model)).load_model,
                    [row["text"] for row in rows], spans, layers=[0, 1, 2], folder=tmp_path / "whole",
                    positions=["target"], batch_size=8, chunk_rows=256, progress=False)
    store = FeatureStore(folder, [0, 1, 2], 80, positions=("target",))
    for position in ("target",):
        for layer in (0, 1, 2):
            np.testing.assert_array_equal(store.layer(position, layer), whole.layer(position, layer))
    assert [row.layer for row in resumed.rows] == [0, 1, 2]


# ---------------------------------------------------------------- a planted left-context signal


PLANTED_FIELDS = dict(attention="both", controls=["majority", "shuffled"], reporters=["json", "csv"])


@pytest.fixture(scope="module")
def planted_run(tiny_model, tmp_path_factory):
    """200 rows whose sense is given only by the word left of "mole"; attention: both, shuffled control."""

    def produce(base):
        data = write_planted(base / "planted.jsonl", n_per_label=100, seed=0)
        results = run_experiment(planted_config(tiny_model, data, **PLANTED_FIELDS), base / "out",
                                 cache_dir=base / "cache", progress=False)
        assert results.rows

    base = shared_folder(tmp_path_factory, "planted-run", isolated(produce))
    return {"results": json.loads((base / "out" / "results.json").read_text()), "out": base / "out",
            "cache": base / "cache", "data": base / "planted.jsonl",
            "config": planted_config(tiny_model, base / "planted.jsonl", **PLANTED_FIELDS)}


def test_planted_left_cue_is_found_after_attention_and_not_before(planted_run):
    """The tiny GPT-2 has random weights, but attention still mixes the cue word into the target's vector.

    Measured margins (model seeds 0-2 × data seeds 0-2): layers 1 and 2 score 1.0, layer 0 0.495, the
    shuffled control 0.44-0.56. The run is deterministic; the thresholds leave room for library drift.
    """
    rows = {row["layer"]: row for row in planted_run["results"]["layers"]}
    assert sorted(rows) == [0, 1, 2]
    # Layer 0 is "mole"'s embedding at a fixed position: the same vector in every row, so chance.
    for folder in feature_folders(planted_run["cache"]):
        layer0 = FeatureStore(folder, [0, 1, 2], 200).layer("target", 0)
        assert (layer0 == layer0[0]).all()
    assert rows[0]["accuracy"] < 0.6
    # After one block, attention has carried the cue word's identity into the target's vector.
    assert rows[1]["accuracy"] > 0.95 and rows[2]["accuracy"] > 0.95, rows
    for row in rows.values():
        assert 0.35 < row["shuffled_accuracy"] < 0.65, row  # the control stays near chance (0.5)
    assert rows[1]["selectivity"] > 0.3 and rows[2]["selectivity"] > 0.3
    assert planted_run["results"]["baselines"]["majority"]["accuracy"] == pytest.approx(0.5, abs=0.02)


def test_attention_both_reports_the_reference_and_a_zero_difference(planted_run):
    rows = planted_run["results"]["layers"]
    assert [row["layer"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert row["max_abs_diff_vs_reference"] == 0.0
        assert row["reference_accuracy"] == row["accuracy"]  # bit-identical vectors, same probe, same folds
    with open(planted_run["out"] / "results.csv", newline="") as handle:
        for csv_row in csv.DictReader(handle):
            assert float(csv_row["max_abs_diff_vs_reference"]) == 0.0
            assert csv_row["reference_accuracy"] != ""


def test_attention_both_extracts_twice_from_one_load(planted_run, tiny_model, tmp_path, monkeypatch):
    """One store per mode — the reference (Hugging Face attention), then the reimplemented one — from one
    model load, and the plots reporter's attention figure uses that same model."""
    loads = count_model_loads(monkeypatch)
    data = write_planted(tmp_path / "planted.jsonl", n_per_label=5)
    config = planted_config(tiny_model, data, attention="both", controls=["majority", "random_weights"],
                            reporters=["json", "plots"])
    run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "c", progress=False)
    assert len(loads) == 1
    assert len(feature_folders(tmp_path / "c")) == 3  # reference, reimplemented, random weights
    assert_png(tmp_path / "out" / "attention.png")


@pytest.mark.xdist_group("smollm2")
def test_a_gguf_checkpoint_is_converted_once_and_read_back(tmp_path, monkeypatch):
    """A .gguf file is parsed once into a cached safetensors folder keyed by its hash; the folder gives the
    same config, tensors and tokenizer as transformers' own GGUF loading (which probe's own reader of the
    file stands in for)."""
    from probe.builtin.models import packaged_model_path
    from probe.pipeline.models import gguf_folder, load_model, load_tokenizer

    gguf = packaged_model_path("smollm2-135m")
    folder = gguf_folder(gguf, tmp_path / "models")
    assert (folder / "config.json").exists() and (folder / "model.safetensors").exists()
    loads = count_model_loads(monkeypatch)
    assert gguf_folder(gguf, tmp_path / "models") == folder and not loads  # second time: nothing parsed
    monkeypatch.undo()
    text = "The mole dug a tunnel under the lawn."
    assert load_tokenizer(str(folder))(text)["input_ids"] == load_tokenizer(gguf)(text)["input_ids"]
    converted_model, direct_model = load_model(str(folder)), load_model(gguf)
    # Loaded from the file itself, a model names no architecture and carries the gguf quantizer's marker.
    differ = {"_name_or_path": None, "architectures": None, "quantization_config": None}
    configs = [{**model.config.to_dict(), **differ} for model in (converted_model, direct_model)]
    assert configs[0] == configs[1] and converted_model.config.architectures == ["LlamaForCausalLM"]
    converted, direct = converted_model.state_dict(), direct_model.state_dict()
    assert converted.keys() == direct.keys()
    assert all(torch.equal(converted[name], direct[name]) for name in direct)


def test_a_conversion_that_cannot_be_written_says_where_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk while the converted weights are written (safetensors raises its own error type) is a
    ConfigError naming the cache folder, not "can't be read as a GGUF checkpoint"; no half folder stays."""
    from probe.pipeline import models
    from probe.pipeline.config import ConfigError

    def full_disk(model, folder):
        from safetensors import SafetensorError

        (Path(folder) / "model.safetensors").write_bytes(b"half of it")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    fake_gguf_conversion(monkeypatch, full_disk)
    checkpoint = tmp_path / "checkpoints" / "model.gguf"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"GGUF, or so it says")
    services = Services(validate({"model": str(checkpoint), "dataset": "mole"}), str(checkpoint), tmp_path / "cache")
    with pytest.raises(ConfigError) as raised:
        _ = services.source
    message = str(raised.value)
    assert "could not be written to" in message and str(tmp_path / "cache" / "models") in message
    assert "No space left on device" in message and "can't be read" not in message
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == ["digests"]

    def a_bug(model, folder):
        raise AttributeError("a bug in saving, not a full disk")

    monkeypatch.setattr(models, "_save_dequantized", a_bug)
    with pytest.raises(AttributeError, match="a bug in saving"):  # not blamed on the disk
        models.gguf_folder(checkpoint, tmp_path / "cache" / "models")


def test_conversions_left_by_killed_processes_are_removed(tmp_path):
    """A conversion killed mid-write leaves a hidden folder named after its host and process; the next
    conversion of that checkpoint removes those whose process is gone, on this host only."""
    import socket
    import subprocess
    import sys

    from probe.pipeline.models import _process_space, remove_abandoned_conversions

    folder = tmp_path / "models" / "model.v1-0123"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    here, dead = _process_space(), int(gone.stdout)
    names = {"dead": f".{folder.name}.{here}.{dead}.x1y2", "running": f".{folder.name}.{here}.{os.getpid()}.ab_c",
             "elsewhere": f".{folder.name}.other-host-0.{dead}.q9",
             "another container": f".{folder.name}.{socket.gethostname()}-1.{dead}.q8",
             "other model": f".model.v2-9999.{here}.{dead}.zz", "older probe": f".{folder.name}.k3j4"}
    for name in names.values():
        (tmp_path / "models" / name).mkdir(parents=True)
        (tmp_path / "models" / name / "model.safetensors").write_bytes(b"half")
    remove_abandoned_conversions(folder)
    left = {what for what, name in names.items() if (tmp_path / "models" / name).exists()}
    assert left == {"running", "elsewhere", "another container", "other model", "older probe"}


def test_a_files_digest_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    """gguf_folder's key hashes the whole file; the digest is kept under the file's size, mtime and inode, so
    a rerun hashes nothing, and a rewritten file (or a damaged memo) is hashed again."""
    import os

    from probe.pipeline import models
    from probe.store import digests

    checkpoint, memos = tmp_path / "model.gguf", tmp_path / "digests"
    checkpoint.write_bytes(b"weights, version one")
    first = models.remembered_sha256(checkpoint, memos)
    assert first == models.file_sha256(checkpoint)
    hashed = []
    monkeypatch.setattr(digests, "file_sha256", lambda path: hashed.append(path) or "fresh")
    assert models.remembered_sha256(checkpoint, memos) == first and not hashed  # read back, not hashed
    checkpoint.write_bytes(b"weights, version two!")  # another size
    assert models.remembered_sha256(checkpoint, memos) == "fresh" and len(hashed) == 1
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # same size, touched
    assert models.remembered_sha256(checkpoint, memos) == "fresh" and len(hashed) == 2
    for memo in memos.iterdir():
        memo.write_text("{not json")
    assert models.remembered_sha256(checkpoint, memos) == "fresh" and len(hashed) == 3


def test_two_runs_with_fresh_caches_give_identical_results(planted_run, tmp_path):
    again = run_experiment(planted_run["config"], tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert again.to_dict()["layers"] == planted_run["results"]["layers"]
    assert again.to_dict()["baselines"] == planted_run["results"]["baselines"]
    # Nothing in results.json depends on the output or cache folder: the files are identical but for when
    # (and from which commit) they were made.
    ours, theirs = (json.loads((out / "results.json").read_text()) for out in (tmp_path / "out", planted_run["out"]))
    assert without_provenance(ours) == without_provenance(theirs)
    assert (tmp_path / "out" / "results.csv").read_text() == (planted_run["out"] / "results.csv").read_text()
    # ... and the cached features are the same bytes under the same keys.
    def chunks(cache):
        return {p.name: sorted((q.name, q.read_bytes()) for q in p.glob("chunk-*")) for p in feature_folders(cache)}

    ours = chunks(tmp_path / "cache")
    assert ours == chunks(planted_run["cache"]) and len(ours) == 2  # reference and reimplemented


def test_second_run_with_the_same_cache_does_no_model_work(planted_run, tiny_model, tmp_path, monkeypatch):
    before = {p.name: sorted(q.name for q in p.iterdir()) for p in feature_folders(planted_run["cache"])}

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although every feature is cached")

    monkeypatch.setattr(probe.pipeline.models, "load_model", no_model)
    monkeypatch.setattr(probe.pipeline.extract, "_extract_batch", no_model)
    # The plots reporter loads the model for attention.png, so it is left out (as in planted_run); the
    # controls are not part of the cache key, so fewer of them still find every feature cached.
    config = planted_config(tiny_model, planted_run["data"], **{**PLANTED_FIELDS, "controls": ["majority"]})
    again = run_experiment(config, tmp_path / "out", cache_dir=planted_run["cache"], progress=False).to_dict()
    keys = ("layer", "accuracy", "macro_f1", "confusion", "reference_accuracy", "max_abs_diff_vs_reference")
    assert [{k: r[k] for k in keys} for r in again["layers"]] == [
        {k: r[k] for k in keys} for r in planted_run["results"]["layers"]]
    assert again["baselines"]["majority"] == planted_run["results"]["baselines"]["majority"]
    after = {p.name: sorted(q.name for q in p.iterdir()) for p in feature_folders(planted_run["cache"])}
    assert after == before


# ---------------------------------------------------------------- split_by and filter


@pytest.fixture(scope="module")
def split_run(tiny_model, tmp_path_factory):
    """90 planted rows whose cue column cycles left / right / both, split by cue."""

    def produce(base):
        data = write_planted(base / "cues.jsonl", n_per_label=45, seed=2, cues=("left", "right", "both"))
        run_experiment(config_for(tiny_model, {"name": "file", "path": str(data)}, split_by="cue"), base / "out",
                       cache_dir=base / "cache", progress=False)

    base = shared_folder(tmp_path_factory, "split-run", isolated(produce))
    return {"results": json.loads((base / "out" / "results.json").read_text()), "data": base / "cues.jsonl"}


def test_split_by_cue_gives_rows_per_subset(split_run):
    results = split_run["results"]
    subsets = {}
    for row in results["layers"]:
        subsets.setdefault(row["subset"], []).append(row["layer"])
    assert subsets == {"all": [0, 1, 2], "both": [0, 1, 2], "left": [0, 1, 2], "right": [0, 1, 2]}
    for row in results["layers"]:  # every subset row was scored on exactly that subset's rows
        assert sum(map(sum, row["confusion"])) == (90 if row["subset"] == "all" else 30)
    for subset in ("left", "right", "both"):
        assert results["baselines"][f"majority[{subset}]"]["accuracy"] == pytest.approx(0.5, abs=0.05)
        first = next(r for r in results["layers"] if r["subset"] == subset and r["layer"] == 0)
        assert results["baselines"][f"layer0_target[{subset}]"] == {"accuracy": first["accuracy"],
                                                                     "accuracy_ci": first["accuracy_ci"]}


def test_filter_keeps_only_the_chosen_rows(tiny_model, tmp_path, split_run):
    dataset = {"name": "file", "path": str(split_run["data"])}
    results = run_experiment(config_for(tiny_model, dataset, filter={"cue": ["left"]}, split_by="cue"),
                             tmp_path / "out", cache_dir=tmp_path / "cache", progress=False).to_dict()
    assert results["dataset"]["rows"] == 30
    assert sorted({row["subset"] for row in results["layers"]}) == ["all", "left"]
    for row in results["layers"]:
        assert sum(map(sum, row["confusion"])) == 30
    # The filtered run's rows are the split run's "left" rows: same rows, same folds, same predictions.
    left = [row for row in split_run["results"]["layers"] if row["subset"] == "left"]
    kept = [row for row in results["layers"] if row["subset"] == "all"]
    assert [row["confusion"] for row in kept] == [row["confusion"] for row in left]
    assert [row["accuracy"] for row in kept] == [row["accuracy"] for row in left]


# ---------------------------------------------------------------- bad data

GOOD = [
    {"text": "A mole dug under the lawn.", "target": "mole", "label": "animal"},
    {"text": "The mole ate a worm.", "target": "mole", "label": "animal"},
    {"text": "We trapped the mole at dawn.", "target": "mole", "label": "animal"},
    {"text": "One mole of carbon weighs twelve grams.", "target": "mole", "label": "unit"},
    {"text": "Add a mole of salt.", "target": "mole", "label": "unit"},
    {"text": "A mole is a unit of amount.", "target": "mole", "label": "unit"},
    {"text": "The mole hid in the garden.", "target": "mole", "label": "animal"},
]
NO_TARGET = {"text": "Half a mole of water.", "label": "unit"}  # the target field is missing


def experiment_yaml(tmp_path: Path, model: Path, data: Path, **fields) -> Path:
    raw = {"name": "bad", "model": str(model), "dataset": {"name": "file", "path": str(data)}, "folds": 3,
           "controls": ["majority"], "reporters": ["json", "summary"], **fields}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_row_without_target_stops_the_run_naming_file_and_row(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", GOOD[:4] + [NO_TARGET] + GOOD[4:])
    result = invoke("run", experiment_yaml(tmp_path, tiny_model, data), "--output", tmp_path / "out",
                    "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), "a clean error, not a traceback"
    assert str(data) in result.output
    assert "row 5" in result.output and "'target'" in result.output
    assert not (tmp_path / "out" / "results.json").exists()


def test_on_bad_rows_skip_runs_and_lists_the_skipped_row(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", GOOD[:4] + [NO_TARGET] + GOOD[4:])
    config = experiment_yaml(tmp_path, tiny_model, data, on_bad_rows="skip")
    result = invoke("run", config, "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code == 0, result.output + repr(result.exception)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["dataset"]["rows"] == len(GOOD)
    (skipped,) = results["dataset"]["skipped_rows"]
    assert str(data) in skipped and "row 5" in skipped and "'target'" in skipped
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "Skipped 1 bad row(s):" in summary
    assert f"- {skipped}" in summary


def test_bad_row_number_survives_a_filter(tiny_model, tmp_path):
    rows = [dict(row, cue="right" if i % 2 else "left") for i, row in enumerate(GOOD + GOOD)]
    rows.insert(5, dict(NO_TARGET, cue="left"))  # line 6 of the file; the 4th "left" row
    data = write_jsonl(tmp_path / "data.jsonl", rows)
    config = experiment_yaml(tmp_path, tiny_model, data, filter={"cue": ["left"]})
    result = invoke("run", config, "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code != 0
    assert "row 6," in result.output, result.output


def test_filter_on_a_missing_column_is_a_clean_cli_error(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", GOOD)
    config = experiment_yaml(tmp_path, tiny_model, data, filter={"colour": ["red"]})
    result = invoke("run", config, "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "colour" in result.output


def test_too_few_groups_for_the_folds_is_a_clean_cli_error(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "data.jsonl", [dict(row, group=f"g{i % 2}") for i, row in enumerate(GOOD)])
    result = invoke("run", experiment_yaml(tmp_path, tiny_model, data), "--output", tmp_path / "out",
                    "--cache-dir", tmp_path / "cache", "--quiet")
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "fewer than n_folds=3" in result.output


def test_a_rerun_copies_the_figures_it_drew_and_a_change_draws_them_anew(tiny_model, tmp_path, monkeypatch):
    """Drawing was most of a cached rerun: unchanged inputs give the same files without drawing; another
    seed (other folds, other results) draws again."""
    from probe.report import writers as report

    data = write_planted(tmp_path / "planted.jsonl", n_per_label=5)
    config = planted_config(tiny_model, data, reporters=["json", "plots"])
    run_experiment(config, tmp_path / "first", cache_dir=tmp_path / "c", progress=False)
    drawn = []
    real_save = report._save
    monkeypatch.setattr(report, "_save", lambda fig, path, *a: drawn.append(path.name) or real_save(fig, path, *a))
    run_experiment(config, tmp_path / "again", cache_dir=tmp_path / "c", progress=False)
    assert drawn == []
    for name in ("accuracy.png", "pca.png", "confusion.png", "attention.png"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "first" / name).read_bytes()
    reseeded = planted_config(tiny_model, data, reporters=["json", "plots"], seed=1)
    run_experiment(reseeded, tmp_path / "other", cache_dir=tmp_path / "c", progress=False)
    assert sorted(drawn) == ["accuracy.png", "attention.png", "confusion.png", "pca.png", "recall.png"]
