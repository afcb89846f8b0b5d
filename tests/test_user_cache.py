"""One cache per user (issue 24 item 6): where it is, that runs from different folders share it, that two
processes on it at once are safe, and that pruning frees only what no run used lately and says how much."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from tiny_gpt2 import build_tiny_gpt2

import probe
from probe.cli.main import cli
from probe.store.usage import default_cache_dir, entries, prune, running_on

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py

DAY = 86400


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=1)


def _config(model: Path, **fields) -> dict:
    return {"model": str(model), "dataset": "mole", "folds": 3, "controls": ["majority"], "reporters": ["json"],
            "split_by": "cue", **fields}


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its inode and mtime: a rewritten file changes both."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- where the cache is


def test_the_cache_is_probe_cache_then_xdg_then_home(tmp_path, monkeypatch):
    monkeypatch.delenv("PROBE_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "probe"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")  # the XDG spec: a relative value is ignored
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "probe"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "probe"
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine"


def test_cache_dir_on_the_command_line_wins_over_the_environment(tmp_path, monkeypatch):
    (tmp_path / "from-env" / "features").mkdir(parents=True)
    (tmp_path / "given" / "probes").mkdir(parents=True)
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "from-env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    from_env = CliRunner().invoke(cli, ["cache"])
    assert from_env.exit_code == 0 and from_env.output.startswith(str(tmp_path / "from-env"))
    assert "features" in from_env.output
    given = CliRunner().invoke(cli, ["cache", "--cache-dir", str(tmp_path / "given")])
    assert given.exit_code == 0 and given.output.startswith(str(tmp_path / "given"))
    assert "probes" in given.output and "features" not in given.output


def test_the_test_session_never_caches_in_the_users_cache():
    cache = Path(os.environ["PROBE_CACHE"])
    assert cache.name.startswith("probe-test-cache-") and default_cache_dir() == cache
    assert not cache.is_relative_to(Path.home() / ".cache")


# ---------------------------------------------------------------- shared by runs from any folder


def test_a_run_from_another_folder_extracts_nothing(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "shared"))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = probe.run(_config(tiny_model), output="out", n_jobs=1)
    features = tmp_path / "shared" / "features"
    before = _files(features)
    assert len(list(features.iterdir())) == 1 and any(name.endswith("complete.json") for name in before)

    monkeypatch.chdir(tmp_path / "b")
    second = probe.run(_config(tiny_model), output="out", n_jobs=1)
    assert _files(features) == before  # no chunk or marker written again: the vectors came from the cache
    assert [r.accuracy for r in second.rows] == [r.accuracy for r in first.rows]
    assert not (tmp_path / "a" / ".probe-cache").exists() and not (tmp_path / "b" / ".probe-cache").exists()


def test_two_processes_from_two_folders_share_one_cache_safely(tiny_model, tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(_config(tiny_model, name="exp")))
    env = {**os.environ, "PROBE_CACHE": str(tmp_path / "shared"), "PROBE_PLUGINS": ""}
    runs = []
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        runs.append(subprocess.Popen([sys.executable, "-m", "probe.cli", "run", str(config), "--output", "out",
                                      "--quiet", "--jobs", "1"], cwd=tmp_path / folder, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outcomes = [run.communicate() for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outcomes
    results = [json.loads((tmp_path / f / "out" / "results.json").read_text()) for f in ("a", "b")]
    accuracies = [[layer["accuracy"] for layer in result["layers"]] for result in results]
    assert accuracies[0] == accuracies[1]
    shared = tmp_path / "shared"
    (folder,) = (shared / "features").iterdir()  # one entry, finished, no half-written files beside it
    assert (folder / "complete.json").exists()
    assert not [p for p in shared.rglob(".*") if p.parent.name != "locks"]
    assert not list((shared / "locks").glob("run-*"))  # each run's lock went with it

    before = _files(shared / "features")  # a third run, from a third folder, extracts nothing
    third = subprocess.run([sys.executable, "-m", "probe.cli", "run", str(config), "--output", "out", "--quiet",
                            "--jobs", "1"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr
    assert _files(shared / "features") == before


# ---------------------------------------------------------------- pruning


def _entry(cache: Path, part: str, name: str, size: int, days_ago: float) -> Path:
    path = cache / part / name
    path.mkdir(parents=True)
    (path / "data.bin").write_bytes(b"x" * size)
    then = time.time() - days_ago * DAY
    os.utime(path, (then, then))
    return path


def test_prune_removes_only_entries_unused_for_that_long_and_says_what_it_freed(tmp_path):
    cache = tmp_path / "cache"
    old = _entry(cache, "features", "old", 3000, days_ago=40)
    old_model = _entry(cache, "models", "SmolLM2-old", 500, days_ago=31)
    recent = _entry(cache, "features", "recent", 7000, days_ago=2)
    digests = _entry(cache, "models", "digests", 100, days_ago=90)  # the hash memo: kept whatever its age

    result = CliRunner().invoke(cli, ["cache", "--cache-dir", str(cache), "--prune", "30"])
    assert result.exit_code == 0, result.output
    assert not old.exists() and not old_model.exists()
    assert recent.exists() and digests.exists()
    assert "removed 2 entries unused for 30 days, freed 3.5 KB (3500 bytes)" in result.output
    assert "features/old" in result.output and "models/SmolLM2-old" in result.output


def test_prune_dry_run_removes_nothing(tmp_path):
    cache = tmp_path / "cache"
    old = _entry(cache, "probes", "old", 1200, days_ago=10)
    result = CliRunner().invoke(cli, ["cache", "--cache-dir", str(cache), "--prune", "7", "--dry-run"])
    assert result.exit_code == 0 and old.exists()
    assert "would remove 1 entries unused for 7 days, would free 1.2 KB (1200 bytes)" in result.output


def test_reading_an_entry_counts_as_using_it(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_CACHE", str(tmp_path / "cache"))
    probe.run(_config(tiny_model), output=tmp_path / "one", n_jobs=1)
    (features,) = (tmp_path / "cache" / "features").iterdir()
    long_ago = time.time() - 100 * DAY
    os.utime(features, (long_ago, long_ago))
    probe.run(_config(tiny_model), output=tmp_path / "two", n_jobs=1)  # reads the vectors, writes nothing there
    assert features.stat().st_mtime > time.time() - DAY
    assert features not in [entry.path for entry in prune(tmp_path / "cache", 30).removed]


def test_prune_keeps_what_a_running_process_holds(tmp_path):
    from probe.store.files import cache_lock

    cache = tmp_path / "cache"
    locked = _entry(cache, "features", "extracting", 10, days_ago=50)
    used_by_a_run = _entry(cache, "features", "in-use", 10, days_ago=5)
    unused = _entry(cache, "features", "unused", 10, days_ago=50)
    with running_on(cache):  # a run that began now…
        run_lock = next((cache / "locks").glob("run-*.lock"))
        began = time.time() - 10 * DAY  # …as if ten days ago, with an entry it used since
        os.utime(run_lock, (began, began))
        with cache_lock(locked):  # and an extraction under way
            pruned = prune(cache, 1)
    assert locked.exists() and used_by_a_run.exists() and not unused.exists()
    assert sorted(entry.path.name for entry in pruned.in_use) == ["extracting", "in-use"]
    assert [entry.path.name for entry in pruned.removed] == ["unused"]


def test_a_run_lock_left_by_a_killed_process_is_not_a_running_run(tmp_path):
    cache = tmp_path / "cache"
    entry = _entry(cache, "features", "old", 10, days_ago=50)
    stale = cache / "locks" / "run-999999-deadbeef.lock"
    stale.parent.mkdir()
    stale.touch()
    long_ago = time.time() - 20 * DAY
    os.utime(stale, (long_ago, long_ago))
    assert [e.path.name for e in prune(cache, 1).removed] == ["old"] and not entry.exists()
    assert not stale.exists()


@pytest.mark.parametrize("days", ["soon", "-3", "nan"])
def test_prune_with_a_bad_number_of_days_names_the_option(tmp_path, days):
    cache = tmp_path / "cache"
    kept = _entry(cache, "features", "old", 10, days_ago=50)
    result = CliRunner().invoke(cli, ["cache", "--cache-dir", str(cache), "--prune", days])
    assert result.exit_code == 2 and "--prune" in result.output and "number of days" in result.output
    assert "Traceback" not in result.output and kept.exists()


def test_dry_run_without_prune_is_a_usage_error(tmp_path):
    (tmp_path / "cache").mkdir()
    result = CliRunner().invoke(cli, ["cache", "--cache-dir", str(tmp_path / "cache"), "--dry-run"])
    assert result.exit_code == 2 and "--dry-run goes with --prune" in result.output


def test_entries_leave_out_writes_in_progress_and_lock_files(tmp_path):
    cache = tmp_path / "cache"
    _entry(cache, "features", "done", 10, days_ago=1)
    _entry(cache, "features", ".half-written.123", 10, days_ago=9)
    (cache / "locks").mkdir()
    (cache / "locks" / "done.lock").touch()
    assert [(e.part, e.path.name) for e in entries(cache)] == [("features", "done")]
