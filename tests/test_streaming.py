"""Data larger than memory: streamed and chunked reading give the rows read whole, memory-mapped features
are the extracted ones, the streaming fit reads a mapped matrix as it reads an array, bad rows in a streamed
file are named, bootstrap draws in blocks stay seeded, and --quiet still shows a long phase's progress."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors import safe_open
from tiny_gpt2 import build_tiny_gpt2

import probe.pipeline.data as data
import probe.pipeline.progress as progress
from probe.cli.main import cli
from probe.pipeline.config import validate
from probe.pipeline.data import DataError, load_rows, prepare
from probe.pipeline.run import run_experiment
from probe.science import intervals
from probe.science.probes import StreamingLogistic
from probe.store.matrices import read_rows

ROOT = Path(__file__).resolve().parent.parent
MOLE = ROOT / "probe" / "builtin" / "data" / "mole.jsonl"

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=3)


def table(rows) -> list[dict]:
    return rows.to_list()


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("streaming", [False, True])
def test_reading_a_file_a_few_rows_at_a_time_equals_reading_it_whole(monkeypatch, streaming):
    whole = table(load_rows(MOLE))
    monkeypatch.setattr(data, "ROWS_PER_BATCH", 7)  # mole's rows in many batches, the last one short
    chunked = table(load_rows(MOLE, streaming=streaming))
    assert chunked == whole and len(whole) == sum(1 for line in MOLE.read_text().splitlines() if line.strip())
    prepared, _ = prepare(load_rows(MOLE, streaming=streaming), source=str(MOLE), n_folds=5)
    monkeypatch.setattr(data, "ROWS_PER_BATCH", 10_000)
    assert table(prepared) == table(prepare(load_rows(MOLE), source=str(MOLE), n_folds=5)[0])


def test_a_streamed_file_keeps_the_sources_other_columns_and_their_types(tmp_path):
    rows = [{"text": f"A mole number {i} here.", "target": "mole", "label": "ab"[i % 2], "split": i % 3,
             "word": "mole"} for i in range(10)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    streamed, whole = load_rows(path, streaming=True), load_rows(path)
    assert streamed.features == whole.features and table(streamed) == table(whole)
    assert streamed["split"] == [i % 3 for i in range(10)]


def test_bad_rows_in_a_streamed_file_are_named_by_row(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ROWS_PER_BATCH", 2)  # the bad rows lie in later batches
    lines = [json.dumps({"text": f"The mole {i} hid.", "target": "mole", "label": "ab"[i % 2]}) for i in range(6)]
    lines[4] = json.dumps({"text": "No such word here.", "target": "mole", "label": "a"})
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"rows\.jsonl, row 5, field 'target': target 'mole' is not a whole word"):
        prepare(load_rows(path, streaming=True), source=str(path), n_folds=2)
    lines[2] = '{"text": "The mole", "label": '
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"rows\.jsonl, line 3: not valid JSON"):
        load_rows(path, streaming=True)
    path.write_bytes(b'{"text": "A mole.", "target": "mole", "label": "a"}\n{"text": "caf\xe9 mole", "label": "b"}\n')
    with pytest.raises(DataError, match=r"rows\.jsonl, line 2: byte 0xe9 is not UTF-8"):
        load_rows(path, streaming=True)


def test_prepared_rows_live_in_a_file_that_goes_when_the_run_ends(monkeypatch):
    import datasets

    from probe.store.tables import rows_folder

    monkeypatch.setattr(data, "ROWS_PER_BATCH", 7)
    with rows_folder() as folder:
        loaded = load_rows(MOLE)
        prepared, _ = prepare(loaded, source=str(MOLE), n_folds=5)
        files = [Path(entry["filename"]) for table in (loaded, prepared) for entry in table.cache_files]
        assert len(files) == 2 and all(file.parent == folder and file.exists() for file in files)  # mapped
        in_memory = datasets.Dataset.from_list(loaded.to_list(), features=loaded.features)
        assert loaded.data.table.equals(in_memory.data.table) and loaded.features == in_memory.features
        chosen = prepared.select([3, 0]).with_format("numpy")  # a copy that opens the file again
        assert list(chosen["text"]) == [table(prepared)[3]["text"], table(prepared)[0]["text"]]
        assert len(data.table_of([], loaded.features)) == 0
    assert not folder.exists()


def test_a_run_leaves_no_rows_behind(tiny_model, tmp_path, monkeypatch):
    import tempfile

    made = []

    def spooled(*args):
        table = spooled_table(*args)
        made.extend(Path(entry["filename"]) for entry in table.cache_files)
        return table

    spooled_table = data.spooled_table
    monkeypatch.setattr(data, "spooled_table", spooled)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    run_on(tiny_model, tmp_path, "rows")
    assert made and all(file.is_relative_to(tmp_path / "temporary") and not file.exists() for file in made)
    assert list((tmp_path / "temporary").iterdir()) == []


def test_a_window_rewrites_only_the_long_rows_and_keeps_the_order(monkeypatch):
    from tiny_gpt2 import build_tokenizer, corpus

    from probe.pipeline.lengths import fit_rows

    monkeypatch.setattr(data, "ROWS_PER_BATCH", 2)
    long_text = "words " * 60 + "the mole dug" + " more words" * 60
    rows = [{"text": text, "target": "mole", "label": label} for text, label in
            [("A mole dug.", "animal"), (long_text, "animal"), ("The mole ran.", "animal"), (long_text, "spy"),
             ("One mole here.", "spy")]]
    empty = dict.fromkeys(data.FEATURES)
    prepared, _ = prepare(data.table_of([{**empty, **row} for row in rows], data.FEATURES), source="rows", n_folds=1)
    fitted, problems = fit_rows(prepared, [1, 2, 3, 4, 5], lambda: build_tokenizer(corpus()), 32,
                                policy="window", on_bad_rows="raise", source="rows")
    after = table(fitted)
    assert problems == [] and [row["label"] for row in after] == [row["label"] for row in rows]
    assert [after[i]["text"] for i in (0, 2, 4)] == [rows[i]["text"] for i in (0, 2, 4)]
    for row in (after[1], after[3]):
        assert len(row["text"]) < len(long_text) and row["text"][row["span_start"] : row["span_end"]] == "mole"


def test_a_streaming_option_that_is_not_true_or_false_is_refused():
    with pytest.raises(DataError, match=r"mole\.jsonl: dataset option streaming must be true or false, got 'yes'"):
        load_rows(MOLE, streaming="yes")


# ---------------------------------------------------------------- a whole run


def run_on(model, tmp_path, name, **dataset):
    config = validate({"model": str(model), "dataset": {"name": "file", "path": str(MOLE), **dataset}, "folds": 3,
                       "controls": ["majority", "shuffled"], "reporters": ["json"], "split_by": "cue"})
    return run_experiment(config, tmp_path / name, cache_dir=tmp_path / "cache", progress=False, n_jobs=1)


def test_a_streamed_dataset_gives_the_results_of_the_one_read_whole(tiny_model, tmp_path):
    whole, streamed = run_on(tiny_model, tmp_path, "whole"), run_on(tiny_model, tmp_path, "streamed", streaming=True)
    assert len(whole.rows) == len(streamed.rows) == 3 * 4  # layers 0..2 × subsets all, both, left, right
    for a, b in zip(whole.rows, streamed.rows):
        assert (a.layer, a.subset, a.accuracy, a.correct, a.accuracy_ci) == \
               (b.layer, b.subset, b.accuracy, b.correct, b.accuracy_ci)


# ---------------------------------------------------------------- features


def chunks_in_memory(folder: Path, position: str, slot: int, n_rows: int) -> np.ndarray:
    """The vectors as extract used to read them: every chunk into one array in memory."""
    out = None
    for path in sorted(folder.glob("chunk-*.safetensors")):
        with safe_open(path, framework="pt") as chunk:
            rows, vectors = chunk.get_tensor("rows").numpy(), chunk.get_slice(position)[slot].float().numpy()
        out = np.empty((n_rows, vectors.shape[-1]), np.float32) if out is None else out
        out[rows] = vectors
    return out


def test_memory_mapped_features_equal_the_ones_in_memory(tiny_model, tmp_path, caplog):
    from probe.pipeline.extract import FeatureStore, extract
    from probe.pipeline.models import load_model, load_tokenizer

    rows = load_rows(MOLE)
    prepared, _ = prepare(rows, source=str(MOLE), n_folds=5)
    spans = list(zip(prepared["span_start"], prepared["span_end"]))
    folder = tmp_path / "features" / "key"
    store = extract(lambda: (load_model(str(tiny_model)), load_tokenizer(str(tiny_model))), prepared["text"], spans,
                    layers=[0, 2], folder=folder, chunk_rows=40, progress=False)
    for slot, layer in enumerate([0, 2]):
        mapped = store.layer("target", layer)
        assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
        np.testing.assert_array_equal(mapped, chunks_in_memory(folder, "target", slot, len(prepared)))
        picked = np.array([3, 4, 90, 191])
        np.testing.assert_array_equal(read_rows(mapped, picked), np.asarray(mapped)[picked])
        assert store.rows("target", layer, np.arange(len(prepared))) is mapped  # the "all" subset: no copy
    matrix = folder / "matrix-target-002.npy"
    with open(matrix, "r+b") as handle:  # one byte changed in the vectors: the proof no longer holds
        handle.seek(-3, 2)
        handle.write(b"\x7f")
    fresh = FeatureStore(folder, [0, 2], len(prepared), ("target",))
    np.testing.assert_array_equal(fresh.layer("target", 2), chunks_in_memory(folder, "target", 1, len(prepared)))
    assert "matrix-target-002.npy can't be used (its contents differ" in caplog.text


def test_a_matrix_written_from_blocks_in_any_row_order_holds_each_row_where_it_belongs(tmp_path):
    from probe.store.matrices import write_matrix

    rng = np.random.default_rng(0)
    expected = rng.standard_normal((50, 6)).astype(np.float32)
    order = rng.permutation(50)
    # blocks of scattered rows, of one row, of rows in order, an empty one and one given as float64
    blocks = [order[:20], order[20:21], np.sort(order[21:40]), order[40:40], order[40:]]
    written = write_matrix(tmp_path / "m.npy", (50, 6),
                           ((rows, expected[rows].astype(np.float64 if n == 4 else np.float32))
                            for n, rows in enumerate(blocks)), sources="test")
    assert written.dtype == np.float32 and written.shape == (50, 6)
    np.testing.assert_array_equal(written, expected)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), expected)  # an ordinary .npy file


# ---------------------------------------------------------------- the streaming fit


def test_the_streaming_fit_reads_a_mapped_matrix_as_it_reads_an_array(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 70)
    X = (rng.standard_normal((210, 12)) + 2.0 * (y[:, None] == np.array(["a", "b", "c"]))[:, [0, 1, 2] * 4]
         ).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    mapped = np.load(tmp_path / "X.npy", mmap_mode="r")
    train, test = np.arange(0, 210, 2), np.arange(1, 210, 2)
    probe = StreamingLogistic(seed=1, block_rows=16)
    from_mapped = probe.fit_rows(mapped, y, train).predict_rows(mapped, test)
    from_array = StreamingLogistic(seed=1, block_rows=16).fit(X[train], y[train]).predict(X[test])
    np.testing.assert_array_equal(from_mapped, from_array)
    assert np.mean(from_mapped == y[test]) > 0.8  # the classes are apart: it learns them
    other_seed = StreamingLogistic(seed=2, block_rows=16).fit(X[train], y[train])
    assert not np.array_equal(other_seed.sgd_.coef_, probe.sgd_.coef_)  # the seed orders the blocks


def test_a_run_with_the_streaming_probe_is_reproducible_whatever_the_jobs(tiny_model, tmp_path):
    config = validate({"model": str(tiny_model), "dataset": "mole", "folds": 3, "controls": ["majority"],
                       "reporters": ["json"], "probe": {"name": "sgd", "block_rows": 32}})
    one = run_experiment(config, tmp_path / "one", cache_dir=tmp_path / "c1", progress=False, n_jobs=1)
    two = run_experiment(config, tmp_path / "two", cache_dir=tmp_path / "c2", progress=False, n_jobs=2)
    assert [row.correct for row in one.rows] == [row.correct for row in two.rows]
    assert "StreamingLogistic" in one.probe["estimator"]


# ---------------------------------------------------------------- statistics


def test_bootstrap_draws_in_blocks_are_seeded_and_close_to_drawing_them_at_once(monkeypatch):
    correct = (np.random.default_rng(4).random(3001) < 0.7).astype(float)
    at_once = intervals.bootstrap_interval(correct, seed=5)
    monkeypatch.setattr(intervals, "MOST_DRAWS", 3001 * 7)  # 7 resamples a block: 286 blocks
    blocked = intervals.bootstrap_interval(correct, seed=5)
    assert blocked == intervals.bootstrap_interval(correct, seed=5)
    assert blocked != intervals.bootstrap_interval(correct, seed=6)
    assert blocked == pytest.approx(at_once, abs=0.01)  # both percentile intervals of one mean, ±0.016 wide


# ---------------------------------------------------------------- progress


def test_quiet_runs_still_show_each_long_phases_progress_on_one_line(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(progress, "QUIET_AFTER_S", 0.0)  # every phase counts as long
    monkeypatch.setattr(progress, "on_terminal", lambda: True)  # as in a terminal, not click's captured stream
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"name": "quietly", "model": str(tiny_model), "dataset": "mole", "folds": 3,
                                  "layers": [1], "controls": [], "reporters": ["json"]}))
    result = CliRunner().invoke(cli, ["run", str(config), "--output", str(tmp_path / "out"), "--cache-dir",
                                      str(tmp_path / "cache"), "--quiet", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    import re

    assert re.search(r"quietly: reimplemented: (\d+)/\1 rows \(100%\) in 00:\d\d, ETA 00:00", result.stderr)
    assert re.search(r"quietly: probes: (\d+)/\1 fits \(100%\)", result.stderr)
    assert "█" not in result.stderr  # one line of words, no bar
    monkeypatch.setattr(progress, "on_terminal", lambda: False)  # a log file: no line rewritten in place
    again = CliRunner().invoke(cli, ["run", str(config), "--output", str(tmp_path / "out2"), "--cache-dir",
                                     str(tmp_path / "cache2"), "--quiet", "--jobs", "1"])
    assert again.exit_code == 0 and "ETA" not in again.stderr


def test_a_sweeps_lines_say_how_long_its_other_cells_will_take():
    from probe.cli.sweep import sweep_eta

    assert sweep_eta(90.0, 3, 7) == " (ETA 2:00)"  # 30 s a cell, 4 cells left
    assert sweep_eta(90.0, 7, 7) == ""


def test_the_length_order_keeps_a_texts_rows_together_longest_text_first_then_first_seen(monkeypatch):
    import probe.pipeline.extract as extract

    keys = [0, 1, 0, 2, 3, 1, 3]  # rows 0 and 2 share a text, as do 1 and 5, 4 and 6
    lengths = [3, 5, 4, 5, 2, 1, 2]  # texts' longest rows: 0 → 4, 1 → 5, 2 → 5, 3 → 2
    monkeypatch.setattr(extract, "token_counts", lambda *args, **kwargs: lengths)
    order, counted = extract.length_sorted(None, None, None, False, keys)
    assert order.tolist() == [1, 5, 3, 0, 2, 4, 6] and counted == lengths
    assert len(extract.length_sorted(None, None, None, False, [])[0]) == 0


@pytest.mark.parametrize("chosen", ["", "system"])
def test_the_command_runs_arrow_on_jemalloc_unless_the_user_named_a_pool(chosen):
    import os
    import subprocess
    import sys

    import pyarrow

    try:
        pyarrow.jemalloc_memory_pool()
        expected = chosen or "jemalloc"
    except NotImplementedError:  # a pyarrow built without it keeps its default
        expected = chosen or pyarrow.default_memory_pool().backend_name
    code = "from probe.scale.arrow_memory import prefer_jemalloc; import pyarrow; " \
           "print(prefer_jemalloc(), pyarrow.default_memory_pool().backend_name)"
    env = {**os.environ, "ARROW_DEFAULT_MEMORY_POOL": chosen}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.split() == [expected, expected]


def test_spans_are_kept_as_arrays_and_read_as_the_tuples_they_replace():
    from probe.pipeline.context import Spans

    starts, ends = [0, None, 17, 4], [5, None, 21, 9]
    as_tuples = list(zip(starts, ends))
    spans = Spans.of(starts, ends)
    assert list(spans) == as_tuples and len(spans) == 4
    assert [spans[i] for i in range(4)] == as_tuples and spans[np.int64(2)] == (17, 21)
    assert list(spans[1:3]) == as_tuples[1:3] and spans.starts.dtype == np.int64
    assert all(type(value) is int for value in spans[0]) and spans[-1] == (4, 9)


@pytest.mark.skipif(os.name != "posix", reason="process ids are asked after on POSIX only")
def test_a_killed_runs_rows_folder_goes_when_the_next_run_starts(tmp_path, monkeypatch):
    import subprocess
    import sys
    import tempfile

    from probe.store.tables import PREFIX, machine_tag, rows_folder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    orphan = tmp_path / f"{PREFIX}{gone}-{machine_tag()}-x1"  # its process has ended
    living = tmp_path / f"{PREFIX}{os.getppid()}-{machine_tag()}-x2"  # pytest's parent still runs
    elsewhere = tmp_path / f"{PREFIX}{gone}-othermachine-x3"  # a shared /tmp: that machine's ids are not ours
    other = tmp_path / f"{PREFIX}unrelated"  # not a name probe gives
    for folder in (orphan, living, elsewhere, other):
        folder.mkdir()
        (folder / "rows.arrow").write_bytes(b"rows")
    with rows_folder() as mine:
        assert mine.name.startswith(f"{PREFIX}{os.getpid()}-{machine_tag()}-")
    assert not orphan.exists() and not mine.exists()
    assert living.exists() and elsewhere.exists() and other.exists()
