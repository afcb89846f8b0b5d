"""Bad inputs and faults end in one clear message, never a traceback, a half-written run or a wrong number.

The table: each case runs the `probe` command in-process (``probe.cli.main``) and must exit non-zero, name
the culprit on stderr, print no "Traceback", leave the previous run in the output folder byte for byte and
leave no new empty folder in the cache. The fault injections (kill -9 during extraction or reporting, a
damaged cache chunk) run in subprocesses and must end with results identical to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from full_disk import full_disk_reporter
from tiny_gpt2 import build_tiny_gpt2, build_tiny_mamba

from probe import plugins
from probe.cli import main
from probe.pipeline.results import without_provenance

ROOT = Path(__file__).resolve().parent.parent
MOLE = ROOT / "probe" / "builtin" / "data" / "mole.jsonl"
FIELDS = {"folds": 3, "controls": ["majority"], "reporters": ["json", "csv", "summary"], "batch_size": 8}

pytestmark = pytest.mark.usefixtures("builtins_only")


def rows(n_per_label: int = 12) -> list[dict]:
    """Mole rows of two senses: a small dataset that a 3-fold probe can still split."""
    everything = [json.loads(line) for line in MOLE.read_text().splitlines() if line.strip()]
    return [r for label in ("animal", "unit") for r in [r for r in everything if r["label"] == label][:n_per_label]]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


class World:
    """A tiny model, a data file, a config, and a finished run in ``out`` for the cases to leave alone."""

    def __init__(self, base: Path):
        self.base = base
        self.model = build_tiny_gpt2(base / "model", n_layer=2, n_embd=32, seed=3)
        self.data = write_jsonl(base / "rows.jsonl", rows())
        self.config = self.write_config("good", {})
        self.out, self.cache = base / "out", base / "cache"

    def write_config(self, name: str, fields: dict) -> Path:
        raw = {"model": str(self.model), "dataset": {"name": "file", "path": str(self.data)}, **FIELDS, **fields}
        path = self.base / f"{name}.yaml"
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        return path

    def run_args(self, config: Path | None = None, *extra) -> list[str]:
        return ["run", str(config or self.config), "--output", str(self.out), "--cache-dir", str(self.cache),
                "--quiet", "--jobs", "1", *map(str, extra)]  # no worker processes: a kill takes them along


def invoke(capsys, args, env=None, monkeypatch=None) -> tuple[int, str]:
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    plugins.reset_plugin_manager()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        message = "" if isinstance(exit_.code, int) or exit_.code is None else f"{exit_.code}\n"
    else:
        message = ""
    finally:
        plugins.reset_plugin_manager()
    return code, capsys.readouterr().err + message  # SystemExit("Error: …") is printed by the interpreter


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def empty_folders(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_dir() and not any(p.iterdir())]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = World(tmp_path_factory.mktemp("bad-inputs"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBE_PLUGINS", "")
        plugins.reset_plugin_manager()
        try:
            main(world.run_args())
        except SystemExit as exit_:
            assert exit_.code in (0, None)
        plugins.reset_plugin_manager()
    assert (world.out / "results.json").exists()
    return world


# ---------------------------------------------------------------- the table

def _config(fields):
    return lambda w: w.run_args(w.write_config("case", fields))


def _data_file(name, content: bytes, **dataset):
    def args(w):
        path = w.base / name
        path.write_bytes(content)
        return w.run_args(w.write_config("case", {"dataset": {"name": "file", "path": str(path), **dataset}}))

    return args


def _model_folder(make):
    def args(w):
        folder = make(w)
        return w.run_args(w.write_config("case", {"model": str(folder)}))

    return args


def _weights_only(w, name: str):
    """A fresh folder with the tiny model's config and weights, and no tokenizer."""
    import shutil

    folder = w.base / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for file in ("config.json", "model.safetensors"):
        shutil.copy(w.model / file, folder / file)
    return folder


def _no_tokenizer(w):
    return _weights_only(w, "no-tokenizer")


def _slow_tokenizer(w):
    from transformers import ByT5Tokenizer

    folder = _weights_only(w, "slow-tokenizer")
    ByT5Tokenizer().save_pretrained(folder)
    return folder


def _mamba(w):
    return build_tiny_mamba(w.base / "mamba", w.model)


def _long_text(w):
    long = rows()[0] | {"text": "A mole " + "dug and dug again, " * 60 + "in the garden."}
    return write_jsonl(w.base / "long.jsonl", [long] + rows())


def _untrained_label_split(w):
    """A fixed split whose test rows hold a label ('unit') that no training row has."""
    everything = [json.loads(line) for line in MOLE.read_text().splitlines() if line.strip()]
    skin = [r for r in everything if r["label"] == "skin"][:12]
    split = [r | {"split": "test" if r["label"] == "unit" or i % 4 == 0 else "train"}
             for i, r in enumerate(rows() + skin)]
    return write_jsonl(w.base / "untrained.jsonl", split)


def _plugin_file(w, name, code):
    path = w.base / "plugins" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


def _full_disk_reporter(name: str, how: str):
    """A run whose extra reporter finds the disk full: ``how`` is what it does (tests/full_disk.py)."""

    def args(w):
        plugin = _plugin_file(w, name, full_disk_reporter(how))
        return w.run_args(w.write_config("case", {"reporters": ["json", "fills"], "plugins": [str(plugin)]}))

    return args


WRONG_DTYPE_HOOK = """
    from probe.hookspecs import hookimpl
    import torch

    def double(tensor, name):
        return tensor.to(torch.float64)

    @hookimpl
    def activation_hooks(model, config):
        return {"blocks.0.attn.pattern": double}
"""

CASES = {
    # config file and --set
    "config-not-utf8": (lambda w: w.run_args(_raw_config(w, "name: caf\xe9\n".encode("latin-1"))), {}, "not UTF-8"),
    "config-bad-yaml": (lambda w: w.run_args(_raw_config(w, b"model: [unclosed\n")), {}, "not valid YAML"),
    "config-a-list": (lambda w: w.run_args(_raw_config(w, b"- model\n")), {}, "expected a mapping"),
    "config-empty": (lambda w: w.run_args(_raw_config(w, b"")), {}, "is empty"),
    "config-key-twice": (lambda w: w.run_args(_raw_config(w, b"model: x\nfolds: 2\nfolds: 3\n")), {},
                         "line 3: 'folds' is given twice in one mapping (first on line 2)"),
    "config-tab-indented": (lambda w: w.run_args(_raw_config(w, b"model: x\noptions:\n\tfoo: 1\n")), {},
                            "line 3 is indented with a tab"),
    "config-alias-bomb": (lambda w: w.run_args(_raw_config(w, b"model: x\noptions:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n  b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n  c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n  d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n  e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n  f: [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n")), {},
                          "field 'options': its aliases (*name) expand to more than 100,000 values"),
    "set-key-twice": (lambda w: w.run_args(None, "--set", "options={a: 1, a: 2}"), {}, "'a' is given twice"),
    "config-missing": (lambda w: w.run_args(w.base / "nope.yaml"), {}, "does not exist"),
    "set-without-equals": (lambda w: w.run_args(None, "--set", "folds"), {}, "expected key=value"),
    "set-empty-key": (lambda w: w.run_args(None, "--set", "=3"), {}, "field name before '=' is empty"),
    "set-bad-yaml": (lambda w: w.run_args(None, "--set", "layers=[1"), {}, "not valid YAML"),
    "unknown-field": (_config({"fold": 3}), {}, "Did you mean 'folds'"),
    # fields checked before any model work
    "layer-beyond-model": (_config({"layers": [0, 9]}), {}, "field 'layers' asks for layer 9"),
    "probe-option-unknown": (_config({"probe": {"name": "logreg", "CC": 1}}), {}, "has no option 'CC'"),
    "probe-option-bad-value": (_config({"probe": {"name": "logreg", "C": -1}}), {}, "field 'probe'"),
    "probe-unknown": (_config({"probe": "svm"}), {}, "field 'probe' names probe 'svm'"),
    "reporter-unknown": (_config({"reporters": ["json", "jsn"]}), {}, "field 'reporters' names reporter 'jsn'"),
    "metric-unknown": (_config({"metrics": ["f2"]}), {}, "field 'metrics' names metric 'f2'"),
    "dataset-unknown": (_config({"dataset": "moles"}), {}, "field 'dataset' names dataset 'moles'"),
    "dataset-key-typo": (lambda w: w.run_args(w.write_config("case", {"dataset": {"name": "file", "pathh": "x"}})),
                         {}, "has no option 'pathh'"),
    "dataset-builtin-with-options": (_config({"dataset": {"name": "mole", "path": "x.jsonl"}}), {},
                                     "dataset 'mole' has no option 'path'"),
    "split-by-missing": (_config({"split_by": "cues"}), {}, "field 'split_by' names column 'cues'"),
    "filter-column-missing": (_config({"filter": {"sense": ["unit"]}}), {}, "field 'filter' names column 'sense'"),
    "filter-keeps-nothing": (_config({"filter": {"cue": ["nowhere"]}}), {}, "field 'filter' keeps no rows"),
    "example-out-of-range": (_config({"example": 999}), {}, "field 'example' is 999"),
    "diagnostics-option-not-bool": (_config({"options": {"diagnostics": {"strict": "yes"}}}), {},
                                    "field 'options.diagnostics' takes {strict: true}"),
    "strict-untrained-test-label": (lambda w: w.run_args(w.write_config("case", {
        "dataset": {"name": "file", "path": str(_untrained_label_split(w))}, "options": {"diagnostics": {"strict": True}},
        "evaluation": {"split_field": "split", "train": "train", "test": "test"}})), {},
        "label 'unit' is among the fixed split's test rows but no training row has it"),
    "example-negative": (_config({"example": -1}), {}, "field 'example' is -1"),
    "device-unknown": (_config({"device": "tpu"}), {}, "field 'device'"),
    "output-under-a-file": (lambda w: w.run_args()[:2] + ["--output", str(w.data / "out"), "--cache-dir",
                                                         str(w.cache)], {}, "is a file, not a folder"),
    "cache-under-a-file": (lambda w: w.run_args()[:2] + ["--output", str(w.out), "--cache-dir", str(w.data / "c")],
                           {}, "cache folder"),
    "output-not-a-run": (lambda w: w.run_args()[:2] + ["--output", str(_foreign_folder(w)), "--cache-dir",
                                                      str(w.cache)], {}, "not a probe run"),
    # data files
    "data-empty": (_data_file("empty.jsonl", b""), {}, "empty.jsonl: the file is empty"),
    "data-header-only": (_data_file("header.csv", b"text,target,label\n"), {}, "header.csv: only a header line"),
    "data-latin1": (_data_file("latin.jsonl", json.dumps(rows()[0]).encode() + b"\n"
                               + '{"text": "caf\xe9 mole", "target": "mole", "label": "animal"}\n'.encode("latin-1")),
                    {}, "latin.jsonl, line 2: byte 0xe9 is not UTF-8"),
    "data-malformed-jsonl": (_data_file("broken.jsonl", json.dumps(rows()[0]).encode() + b"\n{\"text\": \n"), {},
                             "broken.jsonl, line 2: not valid JSON"),
    "data-csv-ragged": (_data_file("ragged.csv", b"text,target,label\na mole,mole,animal,extra\n"), {},
                        "ragged.csv, line 2"),
    "data-unsupported-suffix": (_data_file("rows.txt", b"a mole\n"), {}, "unsupported file type '.txt'"),
    "data-hub-offline": (lambda w: w.run_args(w.write_config("case", {"dataset": {"name": "file",
                                                                                    "path": "hf:nobody/nothing"}})),
                         {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}, "hf:nobody/nothing: can't load"),
    "data-long-text": (lambda w: w.run_args(w.write_config("case", {"dataset": {"name": "file",
                                                                                "path": str(_long_text(w))}})),
                       {}, "long.jsonl, row 1, field 'text': the text is"),
    # models, tokenizers, plugins
    "model-missing": (_config({"model": "no/such-model-here"}), {}, "cannot load model 'no/such-model-here'"),
    "model-path-missing": (_config({"model": "./no/such/folder"}), {}, "there is no file or folder at /"),
    "model-registered-offline": (_config({"model": "gpt2"}), {"HF_HUB_OFFLINE": "1"},
                                 "it is registered (by plugin 'probe.builtin.models') as 'openai-community/gpt2', "
                                 "which can't be loaded from here"),
    "model-without-tokenizer": (_model_folder(_no_tokenizer), {}, "no tokenizer files at"),
    "model-slow-tokenizer": (_model_folder(_slow_tokenizer), {}, "slow one, which gives no character offsets"),
    "model-unsupported-architecture": (_model_folder(_mamba), {}, "cannot swap the attention of MambaModel"),
    "probe-plugins-nosuch": (lambda w: w.run_args(), {"PROBE_PLUGINS": "nosuch"}, "PROBE_PLUGINS names 'nosuch'"),
    "plugin-file-broken": (lambda w: w.run_args(w.write_config("case", {"plugins": [str(_plugin_file(
        w, "broken.py", "import nosuchmodule\n"))]})), {}, "broken.py failed to import"),
    "hook-wrong-dtype": (lambda w: w.run_args(w.write_config("case", {"plugins": [str(_plugin_file(
        w, "dtype.py", WRONG_DTYPE_HOOK))]})), {}, "hook double (plugin"),
    "plugins-dir-broken": (lambda w: ["plugins", "--plugins-dir", str(_plugin_file(w, "bad.py", "1/0\n").parent)],
                           {}, "bad.py failed to import"),
    "compare-negative-tolerance": (lambda w: ["compare", "--model", str(w.model), "--tolerance", "-1"], {},
                                   "--tolerance"),
    "compare-empty-text": (lambda w: ["compare", "--model", str(w.model), "--text", " "], {}, "--text"),
    "compare-unsupported-architecture": (lambda w: ["compare", "--model", str(_mamba(w))], {},
                                         "cannot swap the attention of MambaModel"),
    "positions-empty": (_config({"positions": []}), {}, "field 'positions' needs at least one"),
    "plugins-not-paths": (_config({"plugins": 3}), {}, "field 'plugins'"),
    "jobs-zero": (lambda w: w.run_args(None, "--jobs", "0"), {}, "--jobs"),
    "model-config-not-json": (_model_folder(lambda w: _broken_config(w)), {}, "config.json is not valid JSON"),
    "reporter-raises": (lambda w: w.run_args(w.write_config("case", {"reporters": ["json", "boom"], "plugins": [
        str(_plugin_file(w, "boom.py", BOOM_REPORTER))]})), {}, "reporter 'boom' raised ValueError: boom"),
    # a full disk (issue 25): the folder and what was needed, not the reporter blamed; the previous run stays
    "disk-full-in-a-reporter": (_full_disk_reporter("full1.py", "raise OSError(errno.ENOSPC, 'No space left', "
                                                                "str(output_dir / 'x.bin'))"), {},
                                "/out is full (ENOSPC): writing x.bin needed room"),
    "disk-full-in-an-atomic-write": (_full_disk_reporter("full2.py", "write_atomic(output_dir / 'x.bin', "
                                                                     "half_then_full, size=4000)"), {},
                                     "/out is full (ENOSPC): writing x.bin needed 4.0 KB"),
    "plot-runs-corrupt-results": (lambda w: ["plot-runs", _corrupt_run(w), "--output", str(w.base / "p.png")], {},
                                  "results.json can't be read"),
    "plot-runs-unknown-subset": (lambda w: ["plot-runs", str(w.out), "--output", str(w.base / "p.png"), "--subset",
                                            "nosuch"], {}, "no run has subset 'nosuch'"),
    # bounded input (issue 25): what is hashed, and a data file's fields and rows
    "options-too-big": (_config({"options": {"blob": "x" * (1 << 20)}}), {},
                        "field 'options' is 1,048,588 bytes written out; a field may be at most 1,048,576"),
    "options-recursive": (lambda w: w.run_args(_raw_config(w, b"model: x\ndataset: mole\noptions: {loop: &a [1, *a]}\n")),
                          {}, "field 'options' contains itself"),
    "dataset-path-not-text": (_config({"dataset": {"name": "file", "path": 42}}), {},
                              "field 'dataset' option 'path' must be a file or folder's path"),
    "data-field-too-long": (_data_file("huge.jsonl", json.dumps(rows()[0]).encode() + b"\n" + json.dumps(
        rows()[1] | {"text": "a mole " + "x" * (1 << 20)}).encode() + b"\n"), {},
        "huge.jsonl, line 2, field 'text': 1,048,583 bytes, more than the 1,048,576 a field may hold"),
    "data-csv-row-too-big": (_data_file("wide.csv", b"text,target,label\na mole,mole,animal\n", max_row_bytes=10),
                             {}, "wide.csv, line 2: the row's fields hold 16 bytes, more than the 10"),
    "data-parquet-field-too-long": (lambda w: w.run_args(w.write_config("case", {"dataset": {
        "name": "file", "path": str(_parquet(w)), "max_field_bytes": 8}})), {}, "rows.parquet, row 1, field 'text'"),
    "data-limit-not-a-number": (_data_file("limit.jsonl", json.dumps(rows()[0]).encode(), max_field_bytes=0), {},
                                "dataset option max_field_bytes must be a number of bytes ≥ 1, got 0"),
    # paths and names (issue 25)
    "sweep-output-absolute": (lambda w: ["sweep", _sweep_file(w, "/tmp/elsewhere")], {},
                              "field 'output' is '/tmp/elsewhere'; a sweep file's output must be a relative folder"),
    "sweep-output-climbs": (lambda w: ["sweep", _sweep_file(w, "runs/../../x")], {},
                            "field 'output' is 'runs/../../x'"),
    "jobs-not-a-number": (lambda w: w.run_args(None, "--jobs", "many"), {}, "--jobs"),
}


def _parquet(w) -> Path:
    import pandas as pd

    path = w.base / "rows.parquet"
    pd.DataFrame([{k: r[k] for k in ("text", "target", "label")} for r in rows()]).to_parquet(path)
    return path


def _sweep_file(w, output: str) -> Path:
    path = w.base / "sweep.yaml"
    path.write_text(yaml.safe_dump({"experiments": [str(w.config)], "output": output}), encoding="utf-8")
    return path


BOOM_REPORTER = """
    from probe.hookspecs import hookimpl

    def boom(results, output_dir, context):
        raise ValueError("boom")

    @hookimpl
    def register_reporters(register):
        register("boom", boom)
"""


def _broken_config(w) -> Path:
    import shutil

    folder = w.base / "broken-config"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(w.model, folder)
    (folder / "config.json").write_text("{not json")
    return folder


def _corrupt_run(w) -> Path:
    folder = w.base / "corrupt-run"
    folder.mkdir(exist_ok=True)
    (folder / "results.json").write_text('{"experiment": 3')
    return str(folder)


def _foreign_folder(w) -> Path:
    folder = w.base / "my-documents"
    folder.mkdir(exist_ok=True)
    (folder / "notes.txt").write_text("mine")
    return folder


def _raw_config(w, content: bytes) -> Path:
    path = w.base / "raw.yaml"
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_one_clear_message_and_changes_nothing(case, world, capsys, monkeypatch):
    make_args, env, expected = CASES[case]
    env = {"PROBE_PLUGINS": "", **env}
    args = make_args(world)
    before, cache_before = snapshot(world.out), set(world.cache.rglob("*"))
    code, err = invoke(capsys, args, env, monkeypatch)
    assert code != 0, f"{case}: exit 0\n{err}"
    assert "Traceback" not in err, err
    assert expected in err, f"{case}: {expected!r} not in\n{err}"
    assert snapshot(world.out) == before
    assert [p for p in empty_folders(world.cache) if p not in cache_before] == []
    assert not list(world.base.glob(".out.staging-*"))


def test_an_unexpected_error_is_one_message_and_debug_shows_its_traceback(world, capsys, monkeypatch):
    import probe.pipeline.run

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(probe.pipeline.run, "make_splits", broken)
    shutil.rmtree(world.cache / "runs", ignore_errors=True)  # else the finished run is copied: nothing computes
    code, err = invoke(capsys, world.run_args(), {"PROBE_PLUGINS": ""}, monkeypatch)
    assert code == 1 and "Traceback" not in err
    assert "RuntimeError: a bug" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="a bug"):
        invoke(capsys, [*world.run_args(), "--debug"], {"PROBE_PLUGINS": ""}, monkeypatch)


def test_debug_shows_the_traceback_of_a_bad_input_too(world, capsys, monkeypatch):
    """--debug is for finding where any error came from, a config error included; it does not stay set."""
    from probe.pipeline.config import ConfigError

    monkeypatch.delenv("PROBE_DEBUG", raising=False)
    bad = world.write_config("case", {"folds": 1})
    code, err = invoke(capsys, world.run_args(bad), {"PROBE_PLUGINS": ""}, monkeypatch)
    assert code == 1 and "field 'folds'" in err and "Traceback" not in err
    with pytest.raises(ConfigError, match="field 'folds'"):
        invoke(capsys, [*world.run_args(bad), "--debug"], {"PROBE_PLUGINS": ""}, monkeypatch)
    assert "PROBE_DEBUG" not in os.environ


# ---------------------------------------------------------------- long texts


def test_a_long_text_is_skipped_or_windowed(world, capsys, monkeypatch, tmp_path):
    data = {"name": "file", "path": str(_long_text(world))}
    skip = world.write_config("skip", {"dataset": data, "on_bad_rows": "skip"})
    code, err = invoke(capsys, ["run", skip, "--output", tmp_path / "skip", "--cache-dir", tmp_path / "c", "--quiet"],
                       {"PROBE_PLUGINS": ""}, monkeypatch)
    assert code == 0, err
    skipped = json.loads((tmp_path / "skip" / "results.json").read_text())["dataset"]
    assert skipped["rows"] == len(rows()) and "row 1" in skipped["skipped_rows"][0]

    window = world.write_config("window", {"dataset": data, "long_texts": "window"})
    code, err = invoke(capsys, ["run", window, "--output", tmp_path / "window", "--cache-dir", tmp_path / "c",
                                "--quiet"], {"PROBE_PLUGINS": ""}, monkeypatch)
    assert code == 0, err
    assert json.loads((tmp_path / "window" / "results.json").read_text())["dataset"]["rows"] == len(rows()) + 1


def test_a_window_fits_the_model_and_keeps_the_target():
    from tiny_gpt2 import build_tokenizer, corpus

    from probe.pipeline.lengths import window

    tokenizer = build_tokenizer(corpus())
    text = "words " * 100 + "the mole dug" + " more words" * 100
    start = text.index("mole")
    piece, s, e = window(tokenizer, text, start, start + 4, 32)
    assert piece[s:e] == "mole"
    assert len(tokenizer(piece)["input_ids"]) <= 32
    assert len(tokenizer(piece)["input_ids"]) >= 28  # as long as fits, not just the target


# ---------------------------------------------------------------- faults


def _cli_with(patch: str, args: list[str], env=None) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess after ``patch`` (Python source that may wrap probe functions)."""
    code = textwrap.dedent(patch) + "\nfrom probe.cli import main\nmain(%r)\n" % [str(a) for a in args]
    environ = {**os.environ, "PROBE_PLUGINS": "", **(env or {})}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=False,
                          cwd=Path(__file__).parent, timeout=600)


KILL_AFTER = """
import os, signal, probe.{module} as target
_original = target.{function}
def _then_die(*args, **kwargs):
    _original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
target.{function} = _then_die
"""


@pytest.fixture(scope="module")
def uninterrupted(world):
    return without_provenance(json.loads((world.out / "results.json").read_text()))


def test_a_kill_during_extraction_resumes_to_the_same_results(world, uninterrupted, tmp_path, capsys, monkeypatch):
    args = ["run", world.config, "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--quiet", "--jobs", "1"]
    killed = _cli_with(KILL_AFTER.format(module="store.chunks", function="write_chunk"), args)
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "out").exists()  # nothing published
    code, err = invoke(capsys, args, {"PROBE_PLUGINS": ""}, monkeypatch)
    assert code == 0, err
    assert without_provenance(json.loads((tmp_path / "out" / "results.json").read_text())) == uninterrupted


def test_a_kill_during_reporting_leaves_the_previous_run_whole(world, tmp_path, capsys, monkeypatch):
    import shutil

    out, cache = tmp_path / "out", tmp_path / "cache"
    shutil.copytree(world.out, out)
    shutil.copytree(world.cache, cache)  # vectors cached: the run goes straight to probes and reports
    before = snapshot(out)
    config = world.write_config("other-seed", {"seed": 1})
    args = ["run", config, "--output", out, "--cache-dir", cache, "--quiet", "--jobs", "1"]
    killed = _cli_with(KILL_AFTER.format(module="report.writers", function="write_json"), args)
    assert killed.returncode == -signal.SIGKILL
    assert snapshot(out) == before  # the new results.json is not mixed with the old csv and summary
    code, err = invoke(capsys, args, {"PROBE_PLUGINS": ""}, monkeypatch)
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["settings"]["seed"] == 1
    assert sorted(snapshot(out)) == sorted(before)
    assert not list(tmp_path.glob(".out.*staging*")) and not list(tmp_path.glob(".out.old-*"))


@pytest.mark.parametrize("damage", ["overwrite", "truncate"])
def test_a_damaged_chunk_is_named_and_extracted_again(world, uninterrupted, tmp_path, damage, capsys, monkeypatch,
                                                      caplog):
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(world.cache, cache)
    chunk = min(cache.glob("features/*/chunk-*.safetensors"))
    data = bytearray(chunk.read_bytes())
    if damage == "overwrite":
        data[-200:-100] = bytes(100)  # tensor bytes zeroed: safetensors alone would read them as vectors
    else:
        data = data[: len(data) // 2]
    chunk.write_bytes(bytes(data))
    args = ["run", world.config, "--output", tmp_path / "out", "--cache-dir", cache, "--quiet", "--jobs", "1"]
    code, err = invoke(capsys, args, {"PROBE_PLUGINS": ""}, monkeypatch)
    assert code == 0, err
    assert str(chunk) in caplog.text and "damaged" in caplog.text  # the CLI prints it on stderr
    assert without_provenance(json.loads((tmp_path / "out" / "results.json").read_text())) == uninterrupted


@pytest.mark.parametrize("swap", ["fits", "chunk-renamed"])
def test_cache_entries_under_another_name_are_named_and_rebuilt(world, uninterrupted, tmp_path, swap, capsys,
                                                                monkeypatch, caplog):
    """Valid entries under another entry's name (issue 25): two cached fits swapped, or a chunk copied to
    another chunk's name. Each is named, removed and rebuilt; the results are an uninterrupted run's."""
    import shutil

    cache = tmp_path / "cache"
    shutil.copytree(world.cache, cache)
    if swap == "fits":
        fits = sorted(cache.glob("probes/*.npz"), key=lambda p: p.stat().st_size)
        first, last = fits[0].read_bytes(), fits[-1].read_bytes()
        fits[0].write_bytes(last)
        fits[-1].write_bytes(first)
        named = str(fits[0])
    else:
        chunk = min(cache.glob("features/*/chunk-*.safetensors"))
        shutil.copy(chunk, chunk.with_name("chunk-00001.safetensors"))
        named = str(chunk.with_name("chunk-00001.safetensors"))
    args = ["run", world.config, "--output", tmp_path / "out", "--cache-dir", cache, "--quiet", "--jobs", "1"]
    code, err = invoke(capsys, args, {"PROBE_PLUGINS": ""}, monkeypatch)
    assert code == 0, err
    assert named in caplog.text and "another key" in caplog.text
    assert without_provenance(json.loads((tmp_path / "out" / "results.json").read_text())) == uninterrupted


def test_files_respect_the_umask(world, tmp_path, capsys, monkeypatch):
    previous = os.umask(0o022)
    try:
        args = ["run", world.config, "--output", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--quiet", "--jobs", "1"]
        code, err = invoke(capsys, args, {"PROBE_PLUGINS": ""}, monkeypatch)
    finally:
        os.umask(previous)
    assert code == 0, err
    written = [*(tmp_path / "out").rglob("*"), *(tmp_path / "cache").rglob("*")]
    wrong = {str(p): oct(p.stat().st_mode & 0o777) for p in written
             if p.stat().st_mode & 0o777 != (0o755 if p.is_dir() else 0o644)}
    assert written and wrong == {}


def test_the_batterys_kill_points_name_functions_that_exist():
    """benchmarks/bad_inputs.py kills a run inside probe functions named by module and name; a rename must
    move them too (after the redesign they named old modules, and 11 cases failed to start)."""
    import importlib
    import re

    battery = (Path(__file__).parent.parent / "benchmarks" / "bad_inputs.py").read_text()
    points = re.findall(r'kill\("([\w.]+)", "(\w+)"', battery)
    assert len(points) >= 10
    for module, function in points:
        assert callable(getattr(importlib.import_module(f"probe.{module}"), function, None)), (module, function)
