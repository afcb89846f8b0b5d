"""The `probe` command line: `probe compare`, `probe plugins`, and the group itself (help, version)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from probe.cli import cli
from probe.pipeline.config import GPT2_SHAPES
from probe.plugins import BUILTIN_PLUGINS

TINY_CONFIG = {"n_layer": 2, "n_embd": 32, "n_head": 4, "vocab_size": 300, "n_positions": 128}


@pytest.fixture(autouse=True)
def isolated(builtins_only, monkeypatch, tmp_path):
    """Only built-in plugins; random-init checkpoints go to this test's tmp folder, not the system's."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def tiny_json(tmp_path) -> Path:
    path = tmp_path / "tiny-gpt2.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"PROBE_PLUGINS": ""})


# ---------------------------------------------------------------- probe compare


def test_compare_random_init_json_is_exact(tiny_json):
    result = run("compare", "--random-init", tiny_json, "--json")
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads(result.output)
    assert report["max_abs_diff"] == 0.0 and report["passed"] is True
    assert report["reference"] == "eager" and report["dtype"] == "float32" and report["tolerance"] == 0.0
    assert report["model"] == f"random-init:{tiny_json}"
    assert "layers" not in report  # a transformer block is a block: block i writes layer (hidden state) i + 1
    assert [(d["block"], d["layer"]) for d in report["blocks"]] == [(0, 1), (1, 2)]  # n_layer = 2
    for block in report["blocks"]:
        assert block["attn_out"] == block["pattern"] == block["hidden_state"] == 0.0
    assert report["embeddings"] == 0.0  # layer 0
    assert report["logits"] == 0.0


def test_compare_table_output_says_pass(tiny_json):
    result = run("compare", "--random-init", tiny_json, "--text", "one mole", "--text", "a longer mole sentence",
                 "--padding", "left")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].split() == ["block", "attn", "out", "pattern", "writes", "layer", "hidden", "state"]
    assert lines[1].split() == ["0", "0", "(the", "embeddings)"]  # layer 0, written by no block
    assert [line.split()[:1] + line.split()[3:4] for line in lines[2:4]] == [["0", "1"], ["1", "2"]]
    assert lines[-1] == "PASS: max abs diff 0, probe's exact path vs reference eager (float32), tolerance 0"


def test_compare_negative_tolerance_is_refused_by_option(tiny_json):
    result = run("compare", "--random-init", tiny_json, "--json", "--tolerance", "-1")
    assert result.exit_code == 2  # a difference can't be below zero: the option is wrong, not the model
    assert "--tolerance" in result.output and "≥ 0" in result.output


@pytest.mark.parametrize("args", [[], ["--model", "gpt2", "--random-init", "gpt2"]])
def test_compare_needs_exactly_one_model_source(args):
    result = run("compare", *args)
    assert result.exit_code == 2  # click's usage error
    assert "give exactly one of --model and --random-init" in result.output
    assert "Usage: " in result.output


def test_compare_unknown_random_init_name_lists_the_known_shapes():
    result = run("compare", "--random-init", "gpt3")
    assert result.exit_code == 2
    assert "unknown shape 'gpt3'" in result.output
    output = result.output.replace("\n", " ")
    assert f"give a GPT-2 shape ({', '.join(GPT2_SHAPES)}), a GPT2Config JSON file, or an architecture" in output


def test_compare_random_init_missing_or_malformed_json(tmp_path):
    missing = run("compare", "--random-init", tmp_path / "nope.json")
    assert missing.exit_code == 2 and "no such file" in missing.output
    (tmp_path / "bad.json").write_text("[1, 2]")
    bad = run("compare", "--random-init", tmp_path / "bad.json")
    assert bad.exit_code == 2 and "is not a GPT2Config JSON object" in bad.output


def test_compare_rejects_bad_choices():
    result = run("compare", "--random-init", "gpt2", "--reference", "flash")
    assert result.exit_code == 2 and "'flash' is not one of 'eager', 'sdpa'" in result.output


def test_compare_random_init_with_a_small_vocabulary_folds_bytes_into_it(tmp_path):
    path = tmp_path / "small-vocab.json"
    path.write_text(json.dumps({**TINY_CONFIG, "vocab_size": 64}))
    result = run("compare", "--random-init", path, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["max_abs_diff"] == 0.0


# ---------------------------------------------------------------- probe plugins


def test_plugins_lists_the_builtins_with_their_hooks():
    result = run("plugins")
    assert result.exit_code == 0, result.output
    expected = {
        "probe.builtin.datasets": "register_datasets",
        "probe.builtin.probes": "register_probes",
        "probe.builtin.metrics": "register_metrics",
        "probe.builtin.reporters": "register_reporters",
        "probe.builtin.models": "register_models",
        "probe.builtin.adapters": "probe_adapter",
    }
    assert list(expected) == list(BUILTIN_PLUGINS)
    lines = result.output.splitlines()
    assert [line for line in lines if not line.startswith("    ")] == list(expected)
    for name, hooks in expected.items():
        assert lines[lines.index(name) + 1] == f"    {hooks}"
    registered = [line.strip() for line in lines if line.startswith("    ") and ": " in line]
    assert "datasets: mole, tower, tower-size, tense, tower-height, pos, file, tagged, coarsewsd, coarsewsd-nshot" in registered
    assert "probes: logreg, ridge, sgd" in registered and "reporters: json, csv, plots, summary, html, study, few-shot" in registered
    assert any(line.startswith("models: ") and "minilm-l6" in line and "smollm2-135m" in line for line in registered)
    assert "metrics: balanced_accuracy, cohen_kappa" in registered
    assert any(line.startswith("adapters: chosen per model") for line in registered)


def test_plugins_lists_what_a_local_plugin_registers(tmp_path):
    folder = tmp_path / "plugs"
    folder.mkdir()
    (folder / "registering.py").write_text(
        "import click\nfrom probe import hookimpl\n\n"
        "@hookimpl\ndef register_datasets(register):\n    register('pets', list)\n    register('stars', list)\n\n"
        "@hookimpl\ndef register_measures(register):\n    register('spread', len)\n\n"
        "@hookimpl\ndef register_commands(cli):\n    @cli.command()\n    def hello():\n        pass\n"
    )
    result = run("plugins", "--plugins-dir", folder)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    at = lines.index(f"file:{(folder / 'registering.py').resolve()}")
    assert lines[at + 1:at + 5] == ["    register_commands, register_datasets, register_measures",
                                    "    datasets: pets, stars", "    measures: spread", "    commands: hello"]


def test_plugins_listing_imports_no_torch(tmp_path):
    import subprocess
    import sys

    code = "import sys; from probe.cli.main import cli; cli.main(['plugins'], standalone_mode=False)\n" \
           "print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={"PROBE_PLUGINS": "", "PATH": ""})
    assert out.stdout.splitlines()[-1] == "False False", out.stderr


def test_plugins_dir_adds_local_plugins(tmp_path):
    folder = tmp_path / "plugs"
    folder.mkdir()
    (folder / "lifecycle_plug.py").write_text(
        "from probe import hookimpl\n\n"
        "@hookimpl\ndef experiment_started(config, output_dir):\n    pass\n\n"
        "@hookimpl\ndef experiment_finished(config, results, output_dir):\n    pass\n"
    )
    (folder / "empty_plug.py").write_text("# no hooks\n")
    result = run("plugins", "--plugins-dir", folder)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    lifecycle = lines.index(f"file:{(folder / 'lifecycle_plug.py').resolve()}")
    assert lines[lifecycle + 1] == "    experiment_finished, experiment_started"
    empty = lines.index(f"file:{(folder / 'empty_plug.py').resolve()}")
    assert lines[empty + 1] == "    (no hooks)"
    assert lines[0] == "probe.builtin.datasets"  # built-ins first


# ---------------------------------------------------------------- the group


def test_help_lists_the_commands():
    result = run("--help")
    assert result.exit_code == 0
    for command in ("compare", "plugins", "run"):
        assert f"  {command}" in result.output


def test_version():
    import probe

    result = run("--version")
    assert result.exit_code == 0 and probe.__version__ in result.output


def test_run_with_a_missing_config_is_a_clean_error(tmp_path):
    result = run("run", tmp_path / "nope.yaml", "--output", tmp_path / "out")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"Error: config file {tmp_path / 'nope.yaml'} does not exist" in result.output


@pytest.mark.parametrize("architecture", ["qwen3", "gpt_neox", "modernbert", "bloom", "gemma3_text"])
def test_compare_random_init_takes_any_listed_architecture(architecture):
    result = run("compare", "--random-init", architecture, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["max_abs_diff"] == 0.0 and report["blocks"]


def test_architectures_lists_each_with_its_path():
    from probe.core.architectures import ARCHITECTURES

    result = run("architectures", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["architecture"]: row for row in json.loads(result.output)}
    assert set(rows) == set(ARCHITECTURES) and len(rows) >= 30
    assert rows["gpt2"]["path"] == "full" and rows["qwen2"]["path"] == "full" and rows["cohere"]["path"] == "universal"
    assert rows["bloom"]["path"] == "full"
    assert {row["status"] for row in rows.values()} == {"declared"}  # read from the table, nothing built


def test_listing_architectures_imports_neither_torch_nor_transformers():
    code = ("import sys; from probe.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['architectures']); assert r.exit_code == 0, r.output; "
            "heavy = {'torch', 'transformers'} & set(sys.modules); assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_architectures_check_swaps_each_named_one_on_the_installed_release():
    result = run("architectures", "--check", "--json", "gpt2", "cohere")
    assert result.exit_code == 0, result.output
    rows = {row["architecture"]: row for row in json.loads(result.output)}
    assert rows["gpt2"] == {**rows["gpt2"], "status": "ok", "adapter": "gpt2", "path": "full"}
    assert rows["cohere"]["status"] == "ok" and rows["cohere"]["adapter"] == "universal"


def test_compare_fast_reports_its_path_and_passes_against_sdpa():
    result = run("compare", "--random-init", "qwen2", "--reference", "sdpa", "--fast", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["attention_path"] == "fast" and report["tolerance_is_relative"]
    assert report["max_relative_diff"] <= 1e-5
    assert all(layer["pattern"] is None for layer in report["blocks"])  # the fast path computes no pattern


@pytest.mark.parametrize("device", ["cuda:99", "gpu", "mps:0"])
def test_a_device_this_machine_lacks_or_that_does_not_exist_is_refused_by_option(device, tiny_json):
    result = run("compare", "--random-init", tiny_json, "--device", device)
    assert result.exit_code == 2 and "--device" in result.output and device in result.output
    assert "Traceback" not in result.output


def test_bytes_read_as_a_person_would():
    from probe.cli.cache import human

    assert [human(n) for n in (0, 999, 1000, 1_234_567, 28_300_000_000)] == ["0 B", "999 B", "1.0 KB", "1.2 MB",
                                                                          "28.3 GB"]


def test_cache_lists_its_parts_and_the_gguf_file_a_converted_model_came_from(tmp_path, monkeypatch):
    from conftest import fake_gguf_conversion

    from probe.cli.cache import human
    from probe.pipeline import models

    def save(model, folder):
        (Path(folder) / "config.json").write_text("{}")
        (Path(folder) / "model.safetensors").write_bytes(b"w" * 3000)

    fake_gguf_conversion(monkeypatch, save)
    checkpoint = tmp_path / "tiny.Q8_0.gguf"
    checkpoint.write_bytes(b"GGUF")
    cache = tmp_path / "cache"
    folder = models.gguf_folder(checkpoint, cache / "models")
    (cache / "features" / "0123abcd").mkdir(parents=True)
    (cache / "features" / "0123abcd" / "chunk-00000.safetensors").write_bytes(b"v" * 1500)

    result = CliRunner().invoke(cli, ["cache", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()

    def size(folder: Path) -> int:
        return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())

    # The digest memo names the checkpoint's full path, so its size, and the totals', depend on where the
    # test runs (the sum once left out config.json's 2 bytes, which showed only when a path's length put the
    # total near a rounding edge: 4.7 KB against 4.8): the models part is exactly the converted folder
    # (weights, config.json, tokenizer.json) and the memo; the totals are what the files add up to.
    memos = [p for p in (cache / "models" / "digests").iterdir() if p.is_file()]
    assert len(memos) == 1 and str(checkpoint.resolve()) in memos[0].read_text()
    # ... and the digests of the converted files, kept in the folder and remembered beside the memo.
    recorded = (folder / models.DIGESTS).stat().st_size
    assert size(folder) == 3000 + 2 + 2 + recorded
    converted_memos = size(cache / "models" / "digests" / "converted")
    assert size(cache / "models") == size(folder) + memos[0].stat().st_size + converted_memos
    assert lines[0] == f"{cache}: {human(size(cache))}"
    assert lines[1].split()[:5] == ["models", *human(size(cache / "models")).split(), "1", "entries"]  # one model
    assert lines[2].split()[:5] == ["features", "1.5", "KB", "1", "entries"]
    assert f"  models/{folder.name}: {human(3004 + recorded)}, from {checkpoint.resolve()}" in lines
    missing = CliRunner().invoke(cli, ["cache", "--cache-dir", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no cache folder at" in missing.output
