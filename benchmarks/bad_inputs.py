"""A new user's battery: 150+ bad inputs and faults, each judged the way issue 10 asks.

    .venv/bin/python benchmarks/bad_inputs.py [--only SUBSTRING] [--keep]

Every case runs the `probe` command (in-process through probe.cli.main; kills in a subprocess) on a tiny
random GPT-2 and is classed as:
  ok          a non-zero exit with a one-line message and no traceback, output and cache left as they were
              (for a fault: exit 0 and the same results.json as an uninterrupted run)
  traceback   "Traceback" on stderr, or an error probe calls unexpected
  half        the output folder changed by a failed run, staging left behind, or new empty cache folders
  silent      a bad input accepted (exit 0)
  wrong       a fault that ended in results different from an uninterrupted run
It prints one line per case and the counts; the exit status is the number of cases not ok.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["PROBE_PLUGINS"] = ""
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import yaml
from full_disk import full_disk_reporter

from probe.pipeline.results import without_provenance

MOLE = ROOT / "probe" / "builtin" / "data" / "mole.jsonl"
FIELDS = {"folds": 3, "controls": ["majority"], "reporters": ["json", "csv", "summary"], "batch_size": 8}


def mole_rows(n_per_label=12):
    everything = [json.loads(line) for line in MOLE.read_text().splitlines() if line.strip()]
    return [r for label in ("animal", "unit") for r in [r for r in everything if r["label"] == label][:n_per_label]]


def jsonl(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


class Lab:
    def __init__(self, base: Path):
        from tiny_gpt2 import build_tiny_gpt2

        self.base = base
        self.model = build_tiny_gpt2(base / "model", n_layer=2, n_embd=32, seed=3)
        self.data = self.file("rows.jsonl", jsonl(mole_rows()))
        self.out, self.cache = base / "out", base / "cache"
        self.config = self.yaml("good", {})
        self.n = 0

    def file(self, name: str, content: bytes) -> Path:
        path = self.base / "files" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(content)
        return path

    def yaml(self, name, fields, drop=()) -> Path:
        raw = {"model": str(self.model), "dataset": {"name": "file", "path": str(self.data)}, **FIELDS, **fields}
        for key in drop:
            raw.pop(key, None)
        return self.file(f"{name}.yaml", yaml.safe_dump(raw).encode())

    def args(self, config=None, *extra):
        return ["run", str(config or self.config), "--output", str(self.out), "--cache-dir", str(self.cache),
                "--quiet", "--jobs", "1", *map(str, extra)]


def invoke(args, env=None) -> tuple[int, str]:
    from probe import plugins
    from probe.cli import main

    saved = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    err = io.StringIO()
    plugins.reset_plugin_manager()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            main([str(a) for a in args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        if isinstance(exit_.code, str):  # printed by the interpreter on the way out
            err.write(exit_.code + "\n")
    except BaseException as error:  # an exception main let through: that is a traceback for a user
        import traceback

        code, err = 99, io.StringIO("Traceback (escaped main)\n" + "".join(traceback.format_exception(error)))
    finally:
        plugins.reset_plugin_manager()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return code, err.getvalue()


def subprocess_cli(patch: str, args, env=None):
    code = textwrap.dedent(patch) + "\nfrom probe.cli import main\nmain(%r)\n" % [str(a) for a in args]
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})}, cwd=ROOT / "tests", timeout=900)


def snapshot(folder: Path):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def empty_folders(folder: Path):
    return {p for p in folder.rglob("*") if p.is_dir() and not any(p.iterdir())}


# ---------------------------------------------------------------- the cases


def bad_inputs(lab: Lab):
    """(name, lambda → (args, env)) for inputs that must be refused."""
    cases = []

    def field(name, value):
        cases.append((f"field {name}={value!r}", lambda: (lab.args(lab.yaml("case", {name: value})), {})))

    for name, values in {
        "model": ["", 3, ["a"], "no/such-model", str(ROOT / "README.md"), "/nonexistent/folder"],
        "dataset": [3, {}, {"name": 3}, {"name": "file"}, {"name": "file", "path": "/no/such.jsonl"},
                    {"name": "file", "path": "x.jsonl", "bogus": 1}, "moles", {"name": "mole", "split": "x"},
                    {"name": "file", "path": "hf:nobody/nothing"}, {"name": "file", "path": "rows"}],
        "name": [3, ["x"]],
        "positions": [["middle"], "", 3, []],
        "pooling": ["max", 3, None],
        "layers": [[-1], [99], "some", [1.5], [], [True], "3", [0, 3]],
        "attention": ["both2", 3, "Reference"],
        "folds": [1, 0, -3, "five", 1000, 2.5],
        "seed": ["x", 1.5, None],
        "batch_size": [0, -1, "x"],
        "dtype": ["float8", "fp32"],
        "device": ["tpu", "cuda:x", "cuda:99", "mps", "gpu"],
        "filter": ["cue", {"nosuch": ["x"]}, {"cue": ["nowhere"]}, {"label": ["skin"]}, 3],
        "split_by": ["nosuch", 3, "Cue"],
        "controls": [["none"], "all"],
        "reporters": [["nosuch"], ["json", "jsn"], 3, ["Json"]],
        "metrics": [["nosuch"], 3],
        "plugins": [["/no/such/plugin.py"], 3],
        "on_bad_rows": ["ignore", True],
        "long_texts": ["cut", 1],
        "example": [-1, 999, 24, "x", 1.5],
        "options": ["x", 3],
        "probe": [{"name": "logreg", "C": -1}, {"name": "logreg", "C": "x"}, {"name": "logreg", "max_iter": -1},
                  {"name": "nosuch"}, {"C": 1}, {"name": "logreg", "CC": 1}, "svm", 3, {"name": "logreg", "seed": 3}],
        "revision": [3],
        "device_map": [3],
        "max_memory": ["x"],
        "unknown_field": [1],
    }.items():
        for value in values:
            field(name, value)

    def raw_config(label, content: bytes):
        cases.append((f"config {label}", lambda: (lab.args(lab.file("raw.yaml", content)), {})))

    raw_config("latin-1", "name: caf\xe9\nmodel: x\n".encode("latin-1"))
    raw_config("invalid yaml", b"model: [unclosed\n")
    raw_config("top-level list", b"- model\n")
    raw_config("empty file", b"")
    raw_config("binary", bytes(range(256)))
    raw_config("tab indent", b"model:\n\t- x\n")
    raw_config("scalar", b"just a string\n")
    raw_config("no model", b"dataset: mole\n")
    raw_config("no dataset", f"model: {lab.model}\n".encode())
    cases.append(("config missing", lambda: (lab.args(lab.base / "nope.yaml"), {})))
    cases.append(("config is a folder", lambda: (lab.args(lab.base / "files"), {})))

    for text in ["folds", "=3", "folds=[", "nosuch=1", "folds=x", "layers=all2", "folds=1", " =", "dataset=",
                 "model=", "example=-5", "reporters=[nosuch]"]:
        cases.append((f"--set {text}", lambda text=text: (lab.args(None, "--set", text), {})))

    rows = mole_rows()

    def data(label, name, content: bytes, **options):
        cases.append((f"data {label}", lambda: (lab.args(lab.yaml("case", {"dataset": {
            "name": "file", "path": str(lab.file(name, content)), **options}})), {})))

    data("empty jsonl", "e.jsonl", b"")
    data("whitespace only", "w.jsonl", b"\n \n\t\n")
    data("header-only csv", "h.csv", b"text,target,label\n")
    data("empty csv", "e.csv", b"")
    data("latin-1 jsonl", "l.jsonl", jsonl(rows[:1]) + '{"text": "caf\xe9 mole", "target": "mole"}\n'.encode("latin-1"))
    data("latin-1 csv", "l.csv", "text,target,label\ncaf\xe9 mole,mole,animal\n".encode("latin-1"))
    data("malformed jsonl", "m.jsonl", jsonl(rows[:3]) + b'{"text": "a mole\n')
    data("jsonl of lists", "lists.jsonl", b'["a mole", "mole", "animal"]\n')
    data("json array broken", "a.json", b'[{"text": "a mole"},')
    data("json array empty", "ae.json", b"[]")
    data("json array of strings", "as.json", b'["a", "b"]')
    data("csv ragged", "r.csv", b"text,target,label\na mole,mole,animal,x\n")
    data("parquet garbage", "g.parquet", b"not parquet at all")
    data("txt suffix", "t.txt", b"a mole\n")
    data("binary jsonl", "b.jsonl", bytes(range(256)))
    data("missing text field", "nt.jsonl", jsonl([{k: v for k, v in r.items() if k != "text"} for r in rows]))
    data("missing label field", "nl.jsonl", jsonl([{k: v for k, v in r.items() if k != "label"} for r in rows]))
    data("target not in text", "tn.jsonl", jsonl([{**r, "target": "vole"} for r in rows]))
    data("target twice", "tt.jsonl", jsonl([{**r, "text": r["text"] + " mole"} for r in rows]))
    data("one label", "ol.jsonl", jsonl([{**r, "label": "animal"} for r in rows]))
    data("too few rows per label", "few.jsonl", jsonl(rows[:2] + rows[-2:]))
    data("empty text", "et.jsonl", jsonl([{**rows[0], "text": ""}] + rows))
    data("bad cue", "bc.jsonl", jsonl([{**rows[0], "cue": "above"}] + rows))
    data("null label", "nul.jsonl", jsonl([{**rows[0], "label": None}] + rows))
    data("span out of range", "so.jsonl", jsonl([{**r, "span": [0, 9999]} for r in rows]), span_field="span")
    data("span not a pair", "sp.jsonl", jsonl([{**r, "span": "x"} for r in rows]), span_field="span")
    data("span field missing", "sm.jsonl", jsonl(rows), span_field="span")
    data("text field renamed wrong", "tf.jsonl", jsonl(rows), text_field="sentence")
    long = {**rows[0], "text": "A mole " + "dug and dug again, " * 60 + "in the garden."}
    data("text longer than the model", "long.jsonl", jsonl([long] + rows))
    cases.append(("data path is a folder", lambda: (lab.args(lab.yaml("case", {"dataset": {
        "name": "file", "path": str(lab.base / "files")}})), {})))

    def model(label, make):
        cases.append((f"model {label}", lambda: (lab.args(lab.yaml("case", {"model": str(make())})), {})))

    def folder_with(name, files: dict):
        folder = lab.base / "models" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for file, content in files.items():
            if isinstance(content, Path):
                shutil.copy(content, folder / file)
            else:
                (folder / file).write_bytes(content)
        return folder

    weights = {"config.json": lab.model / "config.json", "model.safetensors": lab.model / "model.safetensors"}
    tokenizer = {"tokenizer.json": lab.model / "tokenizer.json",
                 "tokenizer_config.json": lab.model / "tokenizer_config.json"}
    model("empty folder", lambda: folder_with("empty", {}))
    model("without tokenizer", lambda: folder_with("no-tok", weights))
    model("without weights", lambda: folder_with("no-weights", {"config.json": lab.model / "config.json", **tokenizer}))
    model("garbage config.json", lambda: folder_with("garbage-config", {**weights, **tokenizer, "config.json": b"{x"}))
    model("unknown model_type", lambda: folder_with("unknown-type", {**weights, **tokenizer,
                                                                     "config.json": b'{"model_type": "nosuch"}'}))
    model("truncated weights", lambda: folder_with("truncated", {**tokenizer, "config.json": lab.model / "config.json",
                                                                 "model.safetensors": (lab.model / "model.safetensors")
                                                                 .read_bytes()[:1000]}))
    model("garbage tokenizer.json", lambda: folder_with("bad-tok", {**weights, "tokenizer.json": b"{nope",
                                                                    "tokenizer_config.json": b"{}"}))
    model("gguf garbage", lambda: lab.file("bad.gguf", b"GGUF not really"))
    model("slow tokenizer", lambda: _slow(lab, folder_with("slow", weights)))
    model("mamba", lambda: _mamba(lab))

    def cli(label, make, env=None):
        cases.append((label, lambda: (make(), env or {})))

    cli("compare --tolerance -1", lambda: ["compare", "--model", lab.model, "--tolerance", "-1"])
    cli("compare --tolerance nan", lambda: ["compare", "--model", lab.model, "--tolerance", "nan"])
    cli("compare --text ''", lambda: ["compare", "--model", lab.model, "--text", ""])
    cli("compare --text ' '", lambda: ["compare", "--model", lab.model, "--text", " "])
    cli("compare both sources", lambda: ["compare", "--model", lab.model, "--random-init", "gpt2"])
    cli("compare no source", lambda: ["compare"])
    cli("compare --random-init nosuch", lambda: ["compare", "--random-init", "gpt3"])
    cli("compare --random-init garbage json", lambda: ["compare", "--random-init", lab.file("g.json", b"{x")])
    cli("compare mamba", lambda: ["compare", "--model", _mamba(lab)])
    cli("compare model nosuch", lambda: ["compare", "--model", "/no/such/model"])
    cli("compare without tokenizer", lambda: ["compare", "--model", folder_with("no-tok2", weights)])
    cli("compare --device tpu", lambda: ["compare", "--model", lab.model, "--device", "tpu"])
    cli("compare --dtype float8", lambda: ["compare", "--model", lab.model, "--dtype", "float8"])
    cli("plot-runs --subset nosuch", lambda: ["plot-runs", lab.out, "--output", lab.base / "p.png", "--subset", "x"])
    cli("plot-runs not a run", lambda: ["plot-runs", lab.base / "files", "--output", lab.base / "p.png"])
    cli("plot-runs missing dir", lambda: ["plot-runs", lab.base / "nope", "--output", lab.base / "p.png"])
    cli("plot-runs output under a file", lambda: ["plot-runs", lab.out, "--output", lab.data / "p.png"])
    cli("plot-runs corrupt results.json", lambda: ["plot-runs", _corrupt_run(lab), "--output", lab.base / "p.png"])
    cli("report not a run", lambda: ["report", lab.base / "files"])
    cli("report corrupt results.json", lambda: ["report", _corrupt_run(lab), "--output", lab.base / "r.html"])
    cli("report missing dir", lambda: ["report", lab.base / "nope"])
    cli("view not a run", lambda: ["view", lab.base / "files", "--no-open"])
    cli("plugins --plugins-dir missing", lambda: ["plugins", "--plugins-dir", lab.base / "nope"])
    cli("plugins --plugins-dir broken", lambda: ["plugins", "--plugins-dir", _plugin(lab, "b1", "1/0\n").parent])
    cli("plugins --plugins-dir bad hookimpl", lambda: ["plugins", "--plugins-dir", _plugin(
        lab, "b2", "from probe.hookspecs import hookimpl\n@hookimpl\ndef register_nothing(register):\n    pass\n").parent])
    cli("PROBE_PLUGINS=nosuch", lambda: lab.args(), {"PROBE_PLUGINS": "nosuch"})
    cli("PROBE_PLUGINS=nosuch plugins", lambda: ["plugins"], {"PROBE_PLUGINS": "nosuch,other"})
    cli("run --plugins-dir broken", lambda: lab.args(None, "--plugins-dir", _plugin(lab, "b3", "import nosuch\n").parent))
    cli("run --jobs x", lambda: lab.args(None, "--jobs", "x"))
    cli("run --device tpu", lambda: lab.args(None, "--device", "tpu"))
    cli("run --dtype float8", lambda: lab.args(None, "--dtype", "float8"))
    cli("run --output under a file", lambda: lab.args()[:2] + ["--output", lab.data / "o", "--cache-dir", lab.cache])
    cli("run --cache-dir under a file", lambda: lab.args()[:2] + ["--output", lab.out, "--cache-dir", lab.data / "c"])
    cli("run --output is a file", lambda: lab.args()[:2] + ["--output", lab.data, "--cache-dir", lab.cache])
    cli("run --output holds other files", lambda: lab.args()[:2] + ["--output", lab.base / "files",
                                                                   "--cache-dir", lab.cache])
    cli("run plugin raising in experiment_started", lambda: lab.args(lab.yaml("case", {"plugins": [str(_plugin(
        lab, "p4", "from probe.hookspecs import hookimpl\n@hookimpl\ndef experiment_started(config, output_dir):\n"
        "    raise RuntimeError('no')\n"))]})))
    cli("run hook with wrong dtype", lambda: lab.args(lab.yaml("case", {"plugins": [str(_plugin(
        lab, "p5", "from probe.hookspecs import hookimpl\nimport torch\ndef double(t, name):\n"
        "    return t.to(torch.float64)\n@hookimpl\ndef activation_hooks(model, config):\n"
        "    return {'blocks.0.attn.pattern': double}\n"))]})))
    cli("run hook with wrong shape", lambda: lab.args(lab.yaml("case", {"plugins": [str(_plugin(
        lab, "p6", "from probe.hookspecs import hookimpl\ndef cut(t, name):\n    return t[..., :1]\n"
        "@hookimpl\ndef activation_hooks(model, config):\n    return {'blocks.0.attn.pattern': cut}\n"))]})))
    cli("run hook on unknown point", lambda: lab.args(lab.yaml("case", {"plugins": [str(_plugin(
        lab, "p7", "from probe.hookspecs import hookimpl\n@hookimpl\ndef activation_hooks(model, config):\n"
        "    return {'blocks.0.attn.nosuch': lambda t, n: None}\n"))]})))
    cli("run reporter that raises", lambda: lab.args(lab.yaml("case", {"reporters": ["json", "boom"], "plugins": [
        str(_plugin(lab, "p8", "from probe.hookspecs import hookimpl\ndef boom(results, output_dir, context):\n"
                    "    raise ValueError('boom')\n@hookimpl\ndef register_reporters(register):\n"
                    "    register('boom', boom)\n"))]})))
    cli("run metric that raises", lambda: lab.args(lab.yaml("case", {"metrics": ["bad"], "plugins": [
        str(_plugin(lab, "p9", "from probe.hookspecs import hookimpl\n@hookimpl\ndef register_metrics(register):\n"
                    "    register('bad', lambda y, p, labels: 1 / 0)\n"))]})))
    cli("run dataset plugin that raises", lambda: lab.args(lab.yaml("case", {"dataset": "bad", "plugins": [
        str(_plugin(lab, "p10", "from probe.hookspecs import hookimpl\n@hookimpl\ndef register_datasets(register):\n"
                    "    register('bad', lambda: [][0])\n"))]})))
    # issue 25: bounded input, paths and names
    big = "x" * (1 << 20)
    cli("run options over 1 MiB", lambda: lab.args(lab.yaml("case", {"options": {"blob": big}})))
    cli("run description over 1 MiB", lambda: lab.args(lab.yaml("case", {"description": big})))
    cli("run options recursive alias", lambda: lab.args(lab.file("rec.yaml", (
        f"model: {lab.model}\ndataset: mole\noptions: {{loop: &a [1, *a]}}\n").encode())))
    cli("run dataset path 42", lambda: lab.args(lab.yaml("case", {"dataset": {"name": "file", "path": 42}})))
    cli("run dataset path empty", lambda: lab.args(lab.yaml("case", {"dataset": {"name": "file", "path": " "}})))
    data("jsonl field over 1 MiB", "big-field.jsonl", jsonl(rows[:1] + [rows[1] | {"text": "a mole " + big}]))
    data("json array field over 1 MiB", "big-field.json", json.dumps(rows[:1] + [rows[1] | {"word": big + "x"}]).encode())
    data("csv field over 1 MiB", "big-field.csv", b"text,target,label\na mole,mole,animal\n"
         + f"a mole {big},mole,animal\n".encode())
    data("jsonl line over max_row_bytes", "row.jsonl", jsonl(rows), max_row_bytes=50)
    data("csv row over max_row_bytes", "row.csv", b"text,target,label\na mole,mole,animal\n", max_row_bytes=10)
    data("jsonl list cell over max_field_bytes", "list.jsonl", jsonl([rows[0] | {"tags": ["t"] * 100}]),
         max_field_bytes=200)
    data("max_field_bytes 0", "limit0.jsonl", jsonl(rows), max_field_bytes=0)
    data("max_row_bytes 'big'", "limitbig.jsonl", jsonl(rows), max_row_bytes="big")
    cli("data parquet field over max_field_bytes", lambda: lab.args(lab.yaml("case", {"dataset": {
        "name": "file", "path": str(_parquet(lab)), "max_field_bytes": 8}})))
    for output in ("/tmp/probe-elsewhere", "../outside", "runs/../../outside", "~/runs"):
        cli(f"sweep file output {output}", lambda output=output: ["sweep", lab.file("sweep.yaml", yaml.safe_dump(
            {"experiments": [str(lab.config)], "output": output}).encode())])
    cli("run --jobs many", lambda: lab.args(None, "--jobs", "many"))
    cli("sweep --jobs -1", lambda: ["sweep", lab.config, "--jobs", "-1", "--output", lab.base / "sw"])
    # a full disk (issue 25): said with the folder, not blamed on the reporter, nothing half-written
    cli("disk full in a reporter", lambda: _full_disk_run(lab, "full1", "raise OSError(errno.ENOSPC, 'No space left on "
                                                                   "device', str(output_dir / 'x.bin'))"))
    cli("disk full in an atomic write", lambda: _full_disk_run(lab, "full2", "write_atomic(output_dir / 'x.bin', "
                                                                             "half_then_full, size=4000)"))
    cli("quota exceeded in an atomic write", lambda: _full_disk_run(lab, "full3", "write_atomic(output_dir / 'x.bin', "
                                                                                  "half_then_full)", "EDQUOT"))
    return cases


def _full_disk_run(lab, name, how, error="ENOSPC"):
    plugin = _plugin(lab, name, full_disk_reporter(how, error))
    return lab.args(lab.yaml("case", {"reporters": ["json", "fills"], "plugins": [str(plugin)]}))


def _parquet(lab) -> Path:
    import pandas as pd

    path = lab.base / "files" / "rows.parquet"
    pd.DataFrame([{k: r[k] for k in ("text", "target", "label")} for r in mole_rows()]).to_parquet(path)
    return path


def api_calls(lab: Lab):
    """(name, call) for the Python API's bad arguments: each must raise probe's own error (issue 25)."""
    import torch

    import probe

    config, module = {"model": str(lab.model), "dataset": "mole"}, torch.nn.Linear(2, 2)
    return [
        ("probe.run(None)", lambda: probe.run(None)),
        ("probe.run(['exp.yaml'])", lambda: probe.run(["exp.yaml"])),
        ("probe.run(..., output=123)", lambda: probe.run(config, output=123)),
        ("probe.run(..., n_jobs='many')", lambda: probe.run(config, n_jobs="many")),
        ("probe.run(..., n_jobs=0)", lambda: probe.run(config, n_jobs=0)),
        ("probe.run(..., cache_dir=123)", lambda: probe.run(config, cache_dir=123)),
        ("probe.run(path, 'out')", lambda: probe.run(str(lab.config), "out")),
        ("probe.run(dataset path 42)", lambda: probe.run({**config, "dataset": {"name": "file", "path": 42}})),
        ("probe.run(options over 1 MiB)", lambda: probe.run({**config, "options": {"x": "x" * (1 << 20)}})),
        ("probe.run_with_cache(model, 123)", lambda: probe.run_with_cache(str(lab.model), 123)),
        ("probe.run_with_cache(42, text)", lambda: probe.run_with_cache(42, "a mole")),
        ("probe.attention(model, [])", lambda: probe.attention(str(lab.model), [])),
        ("probe.load_results(None)", lambda: probe.load_results(None)),
        ("probe.plot('results')", lambda: probe.plot("results")),
        ("probe.swap_attention('gpt2')", lambda: probe.swap_attention("gpt2")),
        ("probe.hook_points(None)", lambda: probe.hook_points(None)),
        ("probe.add_hook(module, '', print)", lambda: probe.add_hook(module, "", print)),
        ("probe.hooks(module, ['x'])", lambda: probe.hooks(module, ["x"])),
        ("probe.capture(module, 3)", lambda: probe.capture(module, 3)),
        ("probe.set_fast_attention(module, 'no')", lambda: probe.set_fast_attention(module, "no")),
    ]


def judge_call(call) -> tuple[str, str]:
    """ok: probe's own error (a UserError) naming what is wrong; silent: accepted; traceback: anything else."""
    from probe.errors import UserError

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            call()
    except UserError as error:
        return "ok", str(error).splitlines()[0]
    except Exception as error:  # noqa: BLE001 - what escaped is the finding
        return "traceback", f"{type(error).__name__}: {error}"
    return "silent", "accepted"


def _slow(lab, folder):
    from transformers import ByT5Tokenizer

    ByT5Tokenizer().save_pretrained(folder)
    return folder


def _mamba(lab):
    from tiny_gpt2 import build_tiny_mamba

    return build_tiny_mamba(lab.base / "models" / "mamba", lab.model)


def _corrupt_run(lab):
    folder = lab.base / "corrupt-run"
    folder.mkdir(exist_ok=True)
    (folder / "results.json").write_text('{"experiment": 3')
    return folder


def _plugin(lab, name, code):
    folder = lab.base / "plugins" / name
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(code)
    return path


KILL_AFTER = """
import os, signal, probe.{module} as target
_original, _calls = target.{function}, []
def _then_die(*args, **kwargs):
    result = _original(*args, **kwargs)
    _calls.append(1)
    if len(_calls) >= {after}:
        os.kill(os.getpid(), signal.SIGKILL)
    return result
target.{function} = _then_die
"""


def faults(lab: Lab, reference: dict):
    """(name, run → problem or None): each must end in results equal to the uninterrupted run's."""

    def fresh(name):
        folder = lab.base / "faults" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def results_of(out: Path):
        path = out / "results.json"
        return without_provenance(json.loads(path.read_text())) if path.exists() else None

    def kill(module, function, after, copy_cache=False, copy_out=False, config=None, fits=True):
        def run():
            folder = fresh(f"kill-{module}-{function}-{after}")
            out, cache = folder / "out", folder / "cache"
            if copy_cache:
                shutil.copytree(lab.cache, cache)
                if not fits:  # the vectors cached, the fits to do
                    shutil.rmtree(cache / "probes")
            if copy_out:
                shutil.copytree(lab.out, out)
            before = snapshot(out) if out.exists() else None
            args = ["run", config or lab.config, "--output", out, "--cache-dir", cache, "--quiet", "--jobs", "1"]
            killed = subprocess_cli(KILL_AFTER.format(module=module, function=function, after=after), args)
            if killed.returncode != -signal.SIGKILL:
                return f"traceback? not killed (exit {killed.returncode}): {killed.stderr[-300:]}"
            state = snapshot(out) if out.exists() else None
            whole_new_run = state is not None and ".probe-run.json" in state and (
                before is None or sorted(state) == sorted(before))
            if state != before and not whole_new_run:  # the previous run, or the new one complete
                return "half: the output folder changed after a kill"
            code, err = invoke(args)
            if code != 0:
                return f"traceback: rerun failed: {err[-300:]}"
            if list(folder.glob(".out.*")) and [p for p in folder.glob(".out.*") if not p.name.endswith(".lock")]:
                return "half: staging left behind"
            if config is None and results_of(out) != reference:
                return "wrong: results differ from the uninterrupted run"
            return None

        return run

    def damage(label, mutate):
        def run():
            folder = fresh(f"damage-{label}")
            cache = folder / "cache"
            shutil.copytree(lab.cache, cache)
            mutate(cache)
            code, err = invoke(["run", lab.config, "--output", folder / "out", "--cache-dir", cache, "--quiet"])
            if code != 0:
                return f"traceback: {err[-300:]}"
            if results_of(folder / "out") != reference:
                return "wrong: results differ from the uninterrupted run"
            return None

        return run

    def chunk(cache):
        return min(cache.glob("features/*/chunk-*.safetensors"))

    def overwrite(offset, length, value=0):
        def mutate(cache):
            path = chunk(cache)
            data = bytearray(path.read_bytes())
            data[offset:offset + length] = bytes([value]) * length
            path.write_bytes(bytes(data))

        return mutate

    def truncate(keep):
        def mutate(cache):
            path = chunk(cache)
            path.write_bytes(path.read_bytes()[:keep])

        return mutate

    def all_npz(mutate_bytes):
        def mutate(cache):
            for path in cache.glob("probes/*.npz"):
                path.write_bytes(mutate_bytes(path.read_bytes()))

        return mutate

    cases = [
        ("kill after the first chunk", kill("store.chunks", "write_chunk", 1)),
        ("kill after the first batch", kill("pipeline.extract", "_extract_batch", 1)),
        ("kill after 2 batches", kill("pipeline.extract", "_extract_batch", 2)),
        ("kill after the first fit is cached", kill("store.caches", "save", 1, copy_cache=True, fits=False)),
        ("kill after 3 fits cached", kill("store.caches", "save", 3, copy_cache=True, fits=False)),
        ("kill after results.json (over a run)", kill("report.writers", "write_json", 1, True, True)),
        ("kill after results.csv (over a run)", kill("report.writers", "write_csv", 1, True, True)),
        ("kill after summary.md (over a run)", kill("report.writers", "write_summary", 1, True, True)),
        ("kill after publish's exchange", kill("store.files", "_exchange", 1, True, True)),
        ("kill after results.json (new folder)", kill("report.writers", "write_json", 1, True)),
        ("kill after summary (new folder)", kill("report.writers", "write_summary", 1, True)),
        ("chunk tail zeroed", damage("tail-zeroed", overwrite(-200, 100))),
        ("chunk middle flipped", damage("middle", overwrite(2000, 8, 0xFF))),
        ("chunk header garbled", damage("header", overwrite(8, 20, 0x41))),
        ("chunk length prefix garbled", damage("prefix", overwrite(0, 8, 0xFF))),
        ("chunk truncated to half", damage("half", lambda c: truncate(len(chunk(c).read_bytes()) // 2)(c))),
        ("chunk truncated to 0 bytes", damage("zero", truncate(0))),
        ("chunk truncated by 1 byte", damage("one", truncate(-1))),
        ("chunk replaced by another key's", damage("swap", lambda c: _swap_chunks(c))),
        ("complete.json removed", damage("no-complete", lambda c: [p.unlink() for p in c.glob("features/*/complete.json")])),
        ("chunk deleted", damage("deleted", lambda c: chunk(c).unlink())),
        ("stray tmp file in the cache", damage("tmp", lambda c: (chunk(c).parent / ".chunk-00000.safetensors.1.tmp")
                                              .write_bytes(b"half"))),
        ("cached fits truncated", damage("fits-truncated", all_npz(lambda b: b[: len(b) // 2]))),
        ("cached fits zeroed", damage("fits-zeroed", all_npz(lambda b: b[:60] + bytes(len(b) - 60)))),
        ("cached fits flipped in data", damage("fits-flipped", all_npz(lambda b: b[:-40] + bytes(
            x ^ 0xFF for x in b[-40:-30]) + b[-30:]))),
        # a cache entry proves what it is (issue 25): valid entries under another entry's name
        ("two cached fits swapped by name", damage("fits-swapped", lambda c: _swap_files(sorted(
            c.glob("probes/*.npz"), key=lambda p: p.stat().st_size)[::len(list(c.glob("probes/*.npz"))) - 1]))),
        ("every cached fit replaced by one other", damage("fits-one", lambda c: [
            p.write_bytes(max(c.glob("probes/*.npz"), key=lambda q: q.stat().st_size).read_bytes())
            for p in sorted(c.glob("probes/*.npz"))])),
        ("chunk renamed to another chunk's name", damage("chunk-renamed", lambda c: _renamed_chunk(c))),
        ("attention entry from another key", attention_swapped(lab)),
        ("local weights replaced, same size and mtime", weights_replaced(lab)),
        ("converted checkpoint damaged", converted_damaged(lab)),
    ]
    return cases


def _swap_files(paths):
    a, b = paths
    data = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(data)


def _renamed_chunk(cache):
    """The one chunk of a key written again as chunk 1 of that key, as if extraction had 2 chunks."""
    chunk = min(cache.glob("features/*/chunk-*.safetensors"))
    shutil.copy(chunk, chunk.with_name("chunk-00001.safetensors"))


def _quiet_run(config, out, cache):
    code, err = invoke(["run", config, "--output", out, "--cache-dir", cache, "--quiet", "--jobs", "1"])
    return code, err, (json.loads((out / "results.json").read_text()) if code == 0 else None)


def attention_swapped(lab):
    """report.html's attention entry replaced by a valid entry of another key: rebuilt, report_data.json as
    a clean run's."""

    def run():
        from probe.store.caches import save_json_entry

        folder = _fresh(lab, "attention-swapped")
        config = lab.yaml("html", {"reporters": ["json", "html"], "positions": ["target"]})
        code, err, _ = _quiet_run(config, folder / "clean", folder / "cache")
        if code:
            return f"traceback: {err[-300:]}"
        [entry] = (folder / "cache" / "attention").glob("*.json")
        save_json_entry(entry.with_name("another-key.json"), [{"tokens": ["not", "these"], "row": 0}])
        shutil.copy(entry.with_name("another-key.json"), entry)
        code, err, _ = _quiet_run(config, folder / "again", folder / "cache")
        if code:
            return f"traceback: {err[-300:]}"
        same = [json.loads((folder / out / "report_data.json").read_text()) for out in ("clean", "again")]
        return None if same[0] == same[1] else "wrong: report_data.json differs from a clean run's"

    return run


def weights_replaced(lab):
    """A local model's weights replaced by others of the same size, with the old mtime to the nanosecond."""

    def run():
        from tiny_gpt2 import build_tiny_gpt2

        folder = _fresh(lab, "weights-replaced")
        model = folder / "model"
        shutil.copytree(lab.model, model)
        other = build_tiny_gpt2(folder / "other", n_layer=2, n_embd=32, seed=4)
        config = lab.yaml("weights", {"model": str(model)})
        code, err, before = _quiet_run(config, folder / "before", folder / "cache")
        stat = (model / "model.safetensors").stat()
        shutil.copy(other / "model.safetensors", folder / "incoming")
        os.replace(folder / "incoming", model / "model.safetensors")
        os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns))
        _, _, after = _quiet_run(config, folder / "after", folder / "cache")
        code, err, clean = _quiet_run(config, folder / "clean", folder / "clean-cache")
        if None in (before, after, clean):
            return f"traceback: {err[-300:]}"
        if without_provenance(after) != without_provenance(clean):
            return "wrong: the old vectors were reused for the new weights"
        return None

    return run


def converted_damaged(lab):
    """A converted GGUF checkpoint with bytes overwritten: named, removed, converted again (the conversion
    itself stands in: no GGUF model is read)."""

    def run():
        import logging

        from probe.pipeline import models

        folder = _fresh(lab, "converted-damaged")
        saved = models.dequantized_model, models.gguf_tokenizer, models._save_dequantized

        class Tokenizer:
            def save_pretrained(self, target):
                (Path(target) / "tokenizer.json").write_text("{}")

        def save(model, target):
            (Path(target) / "config.json").write_text("{}")
            (Path(target) / "model.safetensors").write_bytes(b"weights " * 1000)

        model_type = type("Config", (), {"model_type": "llama"})
        models.dequantized_model = lambda *a, **k: type("Model", (), {"config": model_type})()
        models.gguf_tokenizer, models._save_dequantized = (lambda *a, **k: Tokenizer()), save
        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("probe").addHandler(handler)
        try:
            checkpoint = folder / "model.gguf"
            checkpoint.write_bytes(b"GGUF, or so it says")
            converted = models.gguf_folder(checkpoint, folder / "models")
            weights = converted / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:-8] + b"\xff" * 8)
            models.gguf_folder(checkpoint, folder / "models")
        finally:
            models.dequantized_model, models.gguf_tokenizer, models._save_dequantized = saved
            logging.getLogger("probe").removeHandler(handler)
        if not any(str(converted) in r.getMessage() for r in records):
            return "silent: the damaged conversion was not named"
        return None if weights.read_bytes() == b"weights " * 1000 else "wrong: the damaged weights stayed"

    return run


def _fresh(lab, name):
    folder = lab.base / "faults" / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _swap_chunks(cache):
    chunks = sorted(cache.glob("features/*/chunk-*.safetensors"))
    if len(chunks) < 2:  # only one key: a copy of itself would be fine, so write a foreign valid file
        import torch
        from safetensors.torch import save_file

        save_file({"rows": torch.zeros(1, dtype=torch.long)}, str(chunks[0]))
        return
    chunks[0].write_bytes(chunks[1].read_bytes())


def concurrent(lab: Lab, reference: dict):
    """Two runs at once on one cache and one output folder: both finish, the output is one whole run."""

    def run():
        folder = lab.base / "faults" / "concurrent"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        args = ["run", lab.config, "--output", folder / "out", "--cache-dir", folder / "cache", "--quiet"]
        code = "\nfrom probe.cli import main\nmain(%r)\n" % [str(a) for a in args]
        procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT / "tests", stderr=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL, text=True) for _ in range(2)]
        outcomes = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
        if any(code != 0 for code, _ in outcomes):
            return f"traceback: {[err[-200:] for _, err in outcomes]}"
        if without_provenance(json.loads((folder / "out" / "results.json").read_text())) != reference:
            return "wrong: results differ"
        return None

    return [("two runs at once on one cache and output", run)]


def judge(lab, name, make) -> str:
    args, env = make()
    before, cache_before = snapshot(lab.out), empty_folders(lab.cache) | set(lab.cache.rglob("*"))
    code, err = invoke(args, env)
    if "Traceback" in err or "did not expect" in err:
        return "traceback", err.strip().splitlines()[-1] if err.strip() else ""
    if code == 0:
        return "silent", "exit 0"
    if snapshot(lab.out) != before or [p for p in empty_folders(lab.cache) if p not in cache_before]:
        return "half", err.strip().splitlines()[-1]
    if list(lab.base.glob(".out.staging-*")):
        return "half", "staging left"
    return "ok", err.strip().splitlines()[-1] if err.strip() else f"exit {code}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="only cases whose name contains this")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    options = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="probe-battery-"))
    lab = Lab(base)
    code, err = invoke(lab.args())
    assert code == 0, err
    reference = without_provenance(json.loads((lab.out / "results.json").read_text()))
    counts: dict[str, int] = {}
    bad = []
    for name, make in bad_inputs(lab):
        if options.only and options.only not in name:
            continue
        outcome, message = judge(lab, name, make)
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"{outcome:9} {name}: {message[:150]}", flush=True)
        bad += [name] if outcome != "ok" else []
    for name, call in api_calls(lab):
        if options.only and options.only not in name:
            continue
        outcome, message = judge_call(call)
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"{outcome:9} {name}: {message[:150]}", flush=True)
        bad += [name] if outcome != "ok" else []
    for name, run in faults(lab, reference) + concurrent(lab, reference):
        if options.only and options.only not in name:
            continue
        problem = run()
        outcome = "ok" if problem is None else problem.split(":")[0]
        counts[outcome] = counts.get(outcome, 0) + 1
        print(f"{outcome:9} {name}: {problem or 'same results as an uninterrupted run'}"[:200], flush=True)
        bad += [name] if outcome != "ok" else []
    print(f"\n{sum(counts.values())} cases: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if not options.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        print(f"scratch folder: {base}")
    return len(bad)


if __name__ == "__main__":
    sys.exit(main())
