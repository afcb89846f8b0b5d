"""probe.plugins: discovery (built-ins, entry points, local files), registries, errors, and every hook.

Each hookspec in probe/hookspecs.py is exercised by at least one test here; the first test checks that
by reading this file, so a new hookspec without a test fails the suite.
"""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import sys
from pathlib import Path

import click
import datasets
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bitwise, logits, make_inputs, random_gpt2_lm
from filelock import FileLock
from tiny_gpt2 import build_tiny_gpt2

import probe
import probe.cli
import probe.pipeline.run
from probe import hookimpl, hookspecs, plugins
from probe.core.adapters.gpt2 import GPT2Adapter
from probe.core.swap import is_swapped
from probe.pipeline.config import validate
from probe.pipeline.run import run_experiment
from probe.plugins import BUILTIN_PLUGINS, PluginError, Registered
from probe.science.probes import logistic_probe

FILLER = "about across after air all and been built can card desk every from had hand has her his into".split()


# ---------------------------------------------------------------- fixtures and helpers


pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A random-init GPT-2 (2 blocks, 32 wide, 4 heads), built once per session and shared by xdist workers."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / "tiny-gpt2-n2-d32-s1"
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            build_tiny_gpt2(folder / "model", n_layer=2, n_embd=32, seed=1)
            (folder / ".done").touch()
    return folder / "model"


def planted_rows(n_per_label: int = 6, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n_per_label):
        for label, cue in (("animal", "land"), ("unit", "chemist")):
            rows.append({"text": f"{rng.choice(FILLER)} the {cue} mole {rng.choice(FILLER)}.", "target": "mole",
                         "label": label})
    return rows


class RowsPlugin:
    """Registers a small in-memory dataset, so runs need no files."""

    @hookimpl
    def register_datasets(self, register):
        register("planted-rows", lambda n=6, seed=0: datasets.Dataset.from_list(planted_rows(n, seed)))


def small_config(model: Path, **fields):
    raw = {"name": "plugin-test", "model": str(model), "dataset": "planted-rows", "folds": 3,
           "controls": ["majority"], "reporters": ["json"], **fields}
    return validate(raw)


def hookspec_names() -> list[str]:
    return sorted(name for name, value in vars(hookspecs).items() if callable(value) and hasattr(value, "probe_spec"))


def write_plugin(path: Path, source: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return path


# ---------------------------------------------------------------- the meta-test


def test_every_hookspec_is_exercised_by_a_test_in_this_file():
    specs = hookspec_names()
    assert len(specs) >= 10 and "register_datasets" in specs and "experiment_finished" in specs
    this = sys._getframe().f_code.co_name
    tree = ast.parse(Path(__file__).read_text())
    mentioned: set[str] = set()
    for node in tree.body:
        if not (isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and node.name != this):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                mentioned.add(sub.id)
            elif isinstance(sub, ast.Attribute):
                mentioned.add(sub.attr)
            elif isinstance(sub, (ast.FunctionDef, ast.ClassDef)):
                mentioned.add(sub.name)
            elif isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                mentioned.add(sub.value)
    missing = [name for name in specs if name not in mentioned]
    assert not missing, f"hookspecs with no test in {Path(__file__).name}: {', '.join(missing)}"


def test_hookspecs_are_the_manager_hooks_and_feed_the_registries():
    pm = plugins.get_plugin_manager()
    specs = hookspec_names()
    assert all(getattr(pm.hook, name).spec is not None for name in specs)
    assert set(plugins.REGISTRIES.values()) <= set(specs)


# ---------------------------------------------------------------- built-ins and registries


def test_builtins_are_registered_under_their_module_names():
    assert [name for name, _ in plugins.describe()] == list(BUILTIN_PLUGINS)  # PROBE_PLUGINS="": nothing else
    assert {"mole", "tower", "tower-size", "file"} <= set(plugins.registry("dataset"))
    built = plugins.lookup("probe", "logreg").value(seed=3)
    assert repr(built) == repr(logistic_probe(seed=3))
    assert {"balanced_accuracy", "cohen_kappa"} <= set(plugins.registry("metric"))
    assert {"json", "csv", "plots", "summary"} <= set(plugins.registry("reporter"))
    assert plugins.lookup("model", "gpt2").value(None) == "openai-community/gpt2"
    assert plugins.lookup("dataset", "mole").plugin == "probe.builtin.datasets"
    assert plugins.lookup("reporter", "plots").plugin == "probe.builtin.reporters"


def test_a_plugin_registering_one_of_each_kind_is_found_by_lookup():
    def loader():
        return []

    def factory(seed):
        return None

    def metric(y_true, y_pred, labels):
        return 0.0

    def reporter(results, output_dir, run):
        return None

    def source(revision):
        return "/models/mine"

    def measure(X, y, probe, seed):
        return {}

    class Everything:
        @hookimpl
        def register_datasets(self, register):
            register("my-data", loader)

        @hookimpl
        def register_probes(self, register):
            register("my-probe", factory)

        @hookimpl
        def register_metrics(self, register):
            register("my-metric", metric)

        @hookimpl
        def register_reporters(self, register):
            register("my-reporter", reporter)

        @hookimpl
        def register_models(self, register):
            register("my-model", source)

        @hookimpl
        def register_measures(self, register):
            register("my-measure", measure)

    assert plugins.register_plugin(Everything(), "everything") == "everything"
    for kind, name, value in [("dataset", "my-data", loader), ("probe", "my-probe", factory),
                              ("metric", "my-metric", metric), ("reporter", "my-reporter", reporter),
                              ("model", "my-model", source), ("measure", "my-measure", measure)]:
        assert plugins.lookup(kind, name) == Registered(name, value, "everything", kind)
        assert plugins.registry(kind)[name].plugin == "everything"
    assert probe.pipeline.run.resolve_model("my-model", None) == "/models/mine"
    assert probe.pipeline.run.resolve_model("some/hub-name", None) == "some/hub-name"

    plugins.unregister_plugin("everything")
    with pytest.raises(PluginError, match="unknown dataset 'my-data'"):
        plugins.lookup("dataset", "my-data")


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(PluginError) as caught:
        plugins.lookup("probe", "svm")
    assert str(caught.value) == "unknown probe 'svm'; known probes: logreg, ridge, sgd"
    with pytest.raises(PluginError, match="known reporters: csv, few-shot, html, json, plots, study, summary"):
        plugins.lookup("reporter", "xlsx")


def test_a_name_registered_twice_names_both_plugins():
    class First:
        @hookimpl
        def register_datasets(self, register):
            register("twice", lambda: None)

    class Second:
        @hookimpl
        def register_datasets(self, register):
            register("twice", lambda: None)

    plugins.register_plugin(First(), "first-plugin")
    plugins.register_plugin(Second(), "second-plugin")
    with pytest.raises(PluginError) as caught:
        plugins.registry("dataset")
    message = str(caught.value)
    assert "dataset 'twice' is registered twice" in message
    assert "'first-plugin'" in message and "'second-plugin'" in message


def test_a_plugin_reusing_a_builtin_name_names_the_builtin():
    class Shadow:
        @hookimpl
        def register_reporters(self, register):
            register("json", lambda results, output_dir, run: None)

    plugins.register_plugin(Shadow(), "shadow")
    with pytest.raises(PluginError) as caught:
        plugins.lookup("reporter", "json")
    message = str(caught.value)
    assert message.startswith("reporter 'json' is registered twice: by plugin ")
    assert "'probe.builtin.reporters'" in message and "'shadow'" in message


def test_call_each_dispatches_through_pluggy_in_its_order():
    """pm.hook order: last registered first, unless tryfirst / trylast say otherwise."""

    class First:
        @hookimpl
        def experiment_started(self, config, output_dir):
            return "first"

    class Second:
        @hookimpl
        def experiment_started(self, config, output_dir):
            return "second"

    class Early:
        @hookimpl(tryfirst=True)
        def experiment_started(self, config, output_dir):
            return "early"

    class Late:
        @hookimpl(trylast=True)
        def experiment_started(self, config, output_dir):
            return None  # None results are reported too

    plugins.register_plugin(Late(), "late")
    plugins.register_plugin(First(), "first")
    plugins.register_plugin(Second(), "second")
    plugins.register_plugin(Early(), "early")
    assert plugins.call_each("experiment_started", config=None, output_dir=None) == [
        ("early", "early"), ("second", "second"), ("first", "first"), ("late", None)]


def test_a_wrapper_hook_sees_and_can_change_the_other_plugins_results():
    seen = []

    class Datasets(RowsPlugin):
        pass

    class Wrapper:
        @hookimpl(wrapper=True)
        def register_datasets(self, register):
            seen.append("before")
            result = yield  # the other implementations run here, with the original register
            seen.append("after")
            return result

        @hookimpl(wrapper=True)
        def experiment_started(self, config, output_dir):
            results = yield
            return results + ["added by the wrapper"]

    plugins.register_plugin(Datasets(), "rows")
    plugins.register_plugin(Wrapper(), "wrapper")
    assert "planted-rows" in plugins.registry("dataset") and seen == ["before", "after"]
    answer = plugins.get_plugin_manager().hook.experiment_started(config=None, output_dir=None)
    assert answer == ["added by the wrapper"]


def test_a_plugin_raising_inside_a_hook_is_named_with_the_hook():
    class Broken:
        @hookimpl
        def register_probes(self, register):
            raise KeyError("boom")

    plugins.register_plugin(Broken(), "broken-probes")
    with pytest.raises(PluginError) as caught:
        plugins.lookup("probe", "logreg")
    message = str(caught.value)
    assert "plugin 'broken-probes' raised in hook register_probes" in message
    assert "KeyError" in message and "boom" in message
    assert isinstance(caught.value.__cause__, KeyError)


def test_a_lifecycle_hook_raising_stops_the_run_naming_plugin_and_hook(tmp_path):
    class Refuses:
        @hookimpl
        def experiment_started(self, config, output_dir):
            raise RuntimeError("not today")

    plugins.register_plugin(Refuses(), "refuses")
    config = validate({"model": "never-loaded", "dataset": "mole"})
    with pytest.raises(PluginError, match="plugin 'refuses' raised in hook experiment_started: "
                                          "RuntimeError: not today"):
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)


def test_a_hook_with_the_wrong_arguments_is_rejected_at_registration():
    class Wrong:
        @hookimpl
        def register_metrics(self, register, extra):
            pass

    with pytest.raises(PluginError, match="plugin 'wrong' is not valid"):
        plugins.register_plugin(Wrong(), "wrong")


def test_the_same_plugin_name_cannot_be_registered_twice():
    plugins.register_plugin(RowsPlugin(), "rows")
    with pytest.raises(PluginError, match="plugin 'rows' could not be registered"):
        plugins.register_plugin(RowsPlugin(), "rows")


def test_reset_forgets_registered_plugins():
    plugins.register_plugin(RowsPlugin(), "rows")
    assert "planted-rows" in plugins.registry("dataset")
    plugins.reset_plugin_manager()
    assert "planted-rows" not in plugins.registry("dataset")


# ---------------------------------------------------------------- local plugin files

DATASET_PLUGIN = """
import datasets
from probe import hookimpl

@hookimpl
def register_datasets(register):
    register({name!r}, lambda: datasets.Dataset.from_list([]))
"""


def test_load_plugin_file_registers_the_module(tmp_path):
    path = write_plugin(tmp_path / "my_datasets.py", DATASET_PLUGIN.format(name="from-file"))
    name = plugins.load_plugin_file(path)
    assert name == f"file:{path.resolve()}"
    assert plugins.lookup("dataset", "from-file").plugin == name
    assert plugins.load_plugin_file(path) == name  # loading again is a no-op, not a clash
    assert [n for n, _ in plugins.describe()].count(name) == 1
    assert (name, ["register_datasets"]) in plugins.describe()


def test_load_plugins_dir_loads_every_public_py_file(tmp_path):
    write_plugin(tmp_path / "plugs" / "alpha_plug.py", DATASET_PLUGIN.format(name="alpha"))
    write_plugin(tmp_path / "plugs" / "beta_plug.py", DATASET_PLUGIN.format(name="beta"))
    write_plugin(tmp_path / "plugs" / "_helper.py", "raise RuntimeError('private files are not plugins')\n")
    write_plugin(tmp_path / "plugs" / "notes.txt", "not python\n")
    names = plugins.load_plugins_dir(tmp_path / "plugs")
    assert names == [f"file:{(tmp_path / 'plugs' / n).resolve()}" for n in ("alpha_plug.py", "beta_plug.py")]
    assert {"alpha", "beta"} <= set(plugins.registry("dataset"))


def test_a_plugin_file_that_fails_to_import_is_named(tmp_path):
    path = write_plugin(tmp_path / "bad_plug.py", "import math\nraise ValueError('needs a missing setting')\n")
    with pytest.raises(PluginError) as caught:
        plugins.load_plugin_file(path)
    assert str(caught.value) == (f"plugin file {path.resolve()} failed to import: "
                                 "ValueError: needs a missing setting")
    assert f"file:{path.resolve()}" not in [n for n, _ in plugins.describe()]

    syntax = write_plugin(tmp_path / "syntax_plug.py", "def broken(:\n")
    with pytest.raises(PluginError, match=f"plugin file {syntax.resolve()} failed to import: SyntaxError"):
        plugins.load_plugin_file(syntax)


def test_missing_plugin_file_and_folder_are_named(tmp_path):
    with pytest.raises(PluginError, match=f"plugin file {tmp_path.resolve() / 'nope.py'} does not exist"):
        plugins.load_plugin_file(tmp_path / "nope.py")
    with pytest.raises(PluginError, match=f"plugins folder {tmp_path / 'nowhere'} does not exist"):
        plugins.load_plugins_dir(tmp_path / "nowhere")


# ---------------------------------------------------------------- installed plugins (entry points)


def fake_distribution(site: Path, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    """A real installed distribution as importlib.metadata sees it: NAME-VERSION.dist-info + modules."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[probe]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    fake_distribution(
        site, "fake_probe_plugins", {"fakealpha": "fake_probe_alpha", "fakebeta": "fake_probe_beta:plugin"},
        {
            "fake_probe_alpha": DATASET_PLUGIN.format(name="alpha-data"),
            "fake_probe_beta": "from probe import hookimpl\n\n"
                               "class Beta:\n"
                               "    @hookimpl\n"
                               "    def register_probes(self, register):\n"
                               "        register('beta-probe', lambda seed: None)\n\n"
                               "plugin = Beta()\n",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in ("fake_probe_alpha", "fake_probe_beta", "fake_probe_broken"):
        sys.modules.pop(module, None)


def loaded_names() -> list[str]:
    plugins.reset_plugin_manager()
    return [name for name, _ in plugins.describe()]


def test_probe_plugins_restricts_entry_point_plugins(fake_site, monkeypatch):
    monkeypatch.setenv("PROBE_PLUGINS", "fakealpha")
    names = loaded_names()
    assert names == list(BUILTIN_PLUGINS) + ["fakealpha"]
    assert plugins.lookup("dataset", "alpha-data").plugin == "fakealpha"
    assert "beta-probe" not in plugins.registry("probe")

    monkeypatch.setenv("PROBE_PLUGINS", " fakebeta , fakealpha ")  # comma-separated, spaces ignored
    assert set(loaded_names()) == set(BUILTIN_PLUGINS) | {"fakealpha", "fakebeta"}
    assert plugins.lookup("probe", "beta-probe").plugin == "fakebeta"

    monkeypatch.setenv("PROBE_PLUGINS", "")  # empty: no installed plugins at all
    assert loaded_names() == list(BUILTIN_PLUGINS)

    monkeypatch.delenv("PROBE_PLUGINS")  # unset: every installed plugin
    assert {"fakealpha", "fakebeta"} <= set(loaded_names())


def test_an_installed_plugin_that_fails_to_import_is_named(fake_site, monkeypatch):
    fake_distribution(fake_site, "fake_probe_broken", {"fakebroken": "fake_probe_broken"},
                      {"fake_probe_broken": "raise ImportError('needs the xyz package')\n"})
    monkeypatch.setenv("PROBE_PLUGINS", "fakealpha,fakebroken")
    with pytest.raises(PluginError) as caught:
        loaded_names()
    assert "installed plugin 'fakebroken' (fake_probe_broken) failed to import: needs the xyz package" \
        in str(caught.value)
    monkeypatch.setenv("PROBE_PLUGINS", "fakealpha")  # restricted away: never imported
    assert loaded_names() == list(BUILTIN_PLUGINS) + ["fakealpha"]
    assert "fake_probe_broken" not in sys.modules


# ---------------------------------------------------------------- plugins in a run


def test_a_run_uses_the_plugins_dataset_probe_metric_model_and_reporter(tiny_model, tmp_path):
    probe_calls, reports = [], []

    def make_probe(seed, C=1.0):
        probe_calls.append((seed, C))
        return logistic_probe(seed=seed, C=C)

    def n_scored(y_true, y_pred, labels):
        assert labels == ["animal", "unit"]
        return {"rows": len(y_true), "agree": int(np.sum(np.asarray(y_true) == np.asarray(y_pred)))}

    def report(results, output_dir, run):
        reports.append(run)
        (output_dir / "plugin-report.txt").write_text(f"{len(results.rows)} layers\n")

    class Kit(RowsPlugin):
        @hookimpl
        def register_probes(self, register):
            register("plugin-probe", make_probe)

        @hookimpl
        def register_metrics(self, register):
            register("n_scored", n_scored)

        @hookimpl
        def register_reporters(self, register):
            register("plugin-reporter", report)

        @hookimpl
        def register_models(self, register):
            register("tiny-test", lambda revision: tiny_model)

    plugins.register_plugin(Kit(), "kit")
    config = validate({"model": "tiny-test", "dataset": {"name": "planted-rows", "n": 9, "seed": 3}, "folds": 3,
                       "probe": {"name": "plugin-probe", "C": 0.5}, "metrics": ["n_scored"],
                       "controls": ["majority"], "reporters": ["json", "plugin-reporter"]})
    results = run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)

    assert results.model.path == str(tiny_model)  # the model source resolved the name
    assert results.dataset.rows == 18  # the dataset loader got the config's options (n=9)
    # seed + options; 3 folds × 3 layers, the nested choice of the best layer (3 outer × 3 inner folds × 3 layers),
    # once more before any model work (probe.pipeline.checks fits it on made-up rows), once to ask whether it
    # predicts numbers (probe.pipeline.tasks), and one more that results.json describes (its params and C)
    assert set(probe_calls) == {(0, 0.5)} and len(probe_calls) == 3 * 3 + 3 * 3 * 3 + 3
    assert results.probe["name"] == "plugin-probe" and results.probe["C"] == 0.5
    for row in results.rows:
        metric = row.metrics["n_scored"]
        assert metric["rows"] == 18
        assert metric["agree"] / 18 == pytest.approx(float(np.trace(row.confusion)) / 18)
        assert set(row.metrics) == {"n_scored"}  # metrics: [n_scored] picks only that one
    (run,) = reports
    assert run.config is config and len(run.rows) == 18 and list(run.features.stores) == ["reimplemented"]
    assert len(run.splits.folds()) == 3 and run.layers == [0, 1, 2]
    assert (tmp_path / "out" / "plugin-report.txt").read_text() == "3 layers\n"
    assert json.loads((tmp_path / "out" / "results.json").read_text())["layers"][0]["metrics"]["n_scored"]["rows"] == 18


def test_a_metric_that_raises_names_its_plugin(tiny_model, tmp_path):
    class BadMetric(RowsPlugin):
        @hookimpl
        def register_metrics(self, register):
            register("explodes", lambda y_true, y_pred, labels: 1 / 0)

    plugins.register_plugin(BadMetric(), "bad-metric")
    with pytest.raises(PluginError, match="plugin 'bad-metric': metric 'explodes' raised ZeroDivisionError"):
        run_experiment(small_config(tiny_model), tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)


def test_a_dataset_or_reporter_that_raises_names_its_plugin_in_the_same_words(tiny_model, tmp_path):
    class Broken(RowsPlugin):
        @hookimpl
        def register_datasets(self, register):
            RowsPlugin.register_datasets(self, register)
            register("no-rows", lambda: {}["rows"])

        @hookimpl
        def register_reporters(self, register):
            register("explodes", lambda results, output_dir, run: 1 / 0)

    plugins.register_plugin(Broken(), "broken")
    with pytest.raises(PluginError, match="plugin 'broken': dataset 'no-rows' raised KeyError: 'rows'"):
        run_experiment(small_config(tiny_model, dataset="no-rows"), tmp_path / "a", cache_dir=tmp_path / "cache",
                       progress=False)
    with pytest.raises(PluginError, match="plugin 'broken': reporter 'explodes' raised ZeroDivisionError"):
        run_experiment(small_config(tiny_model, reporters=["json", "explodes"]), tmp_path / "b",
                       cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "b").exists()  # a failed report publishes nothing


def test_a_reporter_written_for_the_old_run_context_is_told_where_a_name_moved(tiny_model, tmp_path):
    """Reporters keep their positions (results, output_dir, third); the third is the RunData now, and a
    RunContext name it lacks is an error that says where that name went, naming the plugin."""

    def old_style(results, output_dir, context):
        model, tokenizer = context.load_model()

    class Old(RowsPlugin):
        @hookimpl
        def register_reporters(self, register):
            register("old-style", old_style)

    plugins.register_plugin(Old(), "old")
    with pytest.raises(PluginError, match=r"plugin 'old': reporter 'old-style' raised AttributeError: .*"
                                          r"'load_model'.*use run\.services\.load_model\(\)"):
        run_experiment(small_config(tiny_model, reporters=["old-style"]), tmp_path / "out",
                       cache_dir=tmp_path / "cache", progress=False)


MEASURE_PLUGIN = """
import numpy as np
from probe import hookimpl

def spread(X, y, probe, seed, scale=1.0):
    assert not hasattr(probe, "classes_")  # an unfitted clone of the experiment's probe
    return {"rows": len(y), "spread": scale * float(np.std(X)), "seed": seed}

def explodes(X, y, probe, seed):
    raise RuntimeError("no measure today")

@hookimpl
def register_measures(register):
    register("spread", spread)
    register("explodes", explodes)
"""


@pytest.mark.parametrize("n_jobs", [1, 2])
def test_a_plugin_files_measure_is_reported_per_layer_with_its_options(tiny_model, tmp_path, n_jobs):
    plugin_file = tmp_path / "measure_plugin.py"
    plugin_file.write_text(MEASURE_PLUGIN)
    plugins.register_plugin(RowsPlugin(), "rows")
    config = small_config(tiny_model, plugins=[str(plugin_file)], measures=["spread"],
                          options={"spread": {"scale": 2.0}}, seed=4)
    results = run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=n_jobs)
    for row in results.rows:
        assert row.measures["spread"]["rows"] == 12 and row.measures["spread"]["seed"] == 4
        assert row.measures["spread"]["spread"] > 0
    assert "spread_spread" in results.layers.columns

    config = small_config(tiny_model, plugins=[str(plugin_file)], measures=["explodes"])
    with pytest.raises(PluginError, match="measure 'explodes' raised RuntimeError: no measure today"):
        run_experiment(config, tmp_path / "out2", cache_dir=tmp_path / "cache", progress=False, n_jobs=n_jobs)


def test_lifecycle_hooks_are_called_in_order_with_the_right_arguments(tiny_model, tmp_path):
    events = []
    out, cache = tmp_path / "out", tmp_path / "cache"

    class Recorder(RowsPlugin):
        @hookimpl
        def experiment_started(self, config, output_dir):
            assert not cache.exists(), "experiment_started must come before any extraction"
            events.append(("experiment_started", config, output_dir))

        @hookimpl
        def layer_result(self, config, layer, result):
            events.append(("layer_result", config, layer, result))

        @hookimpl
        def experiment_finished(self, config, results, output_dir):
            # After every reporter: results.json is on disk already.
            on_disk = json.loads((output_dir / "results.json").read_text())
            events.append(("experiment_finished", config, results, output_dir, on_disk))

    plugins.register_plugin(Recorder(), "recorder")
    config = small_config(tiny_model, controls=["majority", "shuffled"])
    results = run_experiment(config, out, cache_dir=cache, progress=False)

    assert [event[0] for event in events] == ["experiment_started"] + ["layer_result"] * 3 + ["experiment_finished"]
    assert all(event[1] is config for event in events)
    assert events[0][2] == out
    layer_events = events[1:4]
    assert [event[2] for event in layer_events] == [0, 1, 2]
    assert [event[3] for event in layer_events] == results.rows  # each row as soon as it is computed
    assert all(event[3].shuffled_accuracy is not None for event in layer_events)  # ... with its controls
    _, _, finished_results, output_dir, on_disk = events[-1]
    assert finished_results is results and output_dir == out
    assert on_disk["layers"] == results.to_dict()["layers"]


def test_layer_result_is_called_for_every_subset_row(tiny_model, tmp_path):
    seen = []

    class Rows(RowsPlugin):
        @hookimpl
        def register_datasets(self, register):
            rows = [dict(row, cue=("left", "right")[i // 2 % 2]) for i, row in enumerate(planted_rows(12))]
            register("cue-rows", lambda: datasets.Dataset.from_list(rows))

        @hookimpl
        def layer_result(self, layer, result):  # a hook may take a subset of the arguments
            seen.append((result.subset, layer))

    plugins.register_plugin(Rows(), "rows")
    results = run_experiment(small_config(tiny_model, dataset="cue-rows", split_by="cue", layers=[0, 2]),
                             tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert seen == [(row.subset, row.layer) for row in results.rows]
    assert seen == [("all", 0), ("all", 2), ("left", 0), ("left", 2), ("right", 0), ("right", 2)]


def test_activation_hooks_change_what_is_extracted(tiny_model, tmp_path):
    cache = tmp_path / "cache"
    plugins.register_plugin(RowsPlugin(), "rows")
    config = small_config(tiny_model, attention="both")
    before = run_experiment(config, tmp_path / "before", cache_dir=cache, progress=False)
    assert [row.max_abs_diff_vs_reference for row in before.rows] == [0.0, 0.0, 0.0]

    offered, calls = [], []

    def flatten_attention(pattern, name):
        calls.append((name, tuple(pattern.shape)))
        return torch.zeros_like(pattern)  # block 0's attention moves nothing into any token

    class Ablate:
        @hookimpl
        def activation_hooks(self, model, config):
            offered.append((model, config))
            return {"blocks.0.attn.pattern": flatten_attention}

    plugins.register_plugin(Ablate(), "ablate")
    after = run_experiment(config, tmp_path / "after", cache_dir=cache, progress=False)

    assert offered, "activation_hooks was never called"
    assert all(is_swapped(model) and seen is config for model, seen in offered)  # the model with hook points
    assert calls and {name for name, _ in calls} == {"blocks.0.attn.pattern"}
    assert all(len(shape) == 4 and shape[1] == 4 for _, shape in calls)  # (batch, heads, query, key)
    diffs = [row.max_abs_diff_vs_reference for row in after.rows]
    assert diffs[0] == 0.0  # the embeddings come before any attention
    assert diffs[1] > 0.0 and diffs[2] > 0.0  # ...and the reference (not swapped) is untouched
    # The activation plugin is part of the cache key: the unhooked features were not reused.
    folders = sorted(p.name for p in (cache / "features").iterdir())
    assert len(folders) == 3  # reference (shared), reimplemented, reimplemented with the hook


def test_activation_hooks_naming_an_unknown_hook_point_name_the_plugin(tiny_model, tmp_path):
    class Typo(RowsPlugin):
        @hookimpl
        def activation_hooks(self, model, config):
            return {"blocks.0.attn.patern": lambda tensor, name: None}

    plugins.register_plugin(Typo(), "typo")
    with pytest.raises(PluginError) as caught:
        run_experiment(small_config(tiny_model), tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    message = str(caught.value)
    assert "plugin 'typo' (activation_hooks)" in message
    assert "no hook point named 'blocks.0.attn.patern'" in message and "blocks.0.attn.pattern" in message


# ---------------------------------------------------------------- commands


def test_register_commands_adds_a_command_to_the_cli(monkeypatch, capsys):
    @click.command(name="hello-plugin")
    @click.option("--who", default="world")
    def hello(who):
        """Say hello from a plugin."""
        click.echo(f"hello {who} from a plugin")

    class Commands:
        @hookimpl
        def register_commands(self, cli):
            cli.add_command(hello)

    plugins.register_plugin(Commands(), "commands")
    try:
        results = plugins.call_each("register_commands", cli=probe.cli.cli)
        assert ("commands", None) in results
        runner = CliRunner()
        help_text = runner.invoke(probe.cli.cli, ["--help"]).output
        assert "hello-plugin" in help_text and "Say hello from a plugin." in help_text
        assert runner.invoke(probe.cli.cli, ["hello-plugin", "--who", "probe"]).output == "hello probe from a plugin\n"

        # The console script's entry point does the same before parsing the command line.
        del probe.cli.cli.commands["hello-plugin"]
        monkeypatch.setattr(sys, "argv", ["probe", "hello-plugin", "--who", "main"])
        with pytest.raises(SystemExit) as exit_info:
            probe.cli.main()
        assert exit_info.value.code == 0
        assert capsys.readouterr().out == "hello main from a plugin\n"
    finally:
        probe.cli.cli.commands.pop("hello-plugin", None)
    assert "hello-plugin" not in CliRunner().invoke(probe.cli.cli, ["--help"]).output


def test_a_register_commands_hook_that_raises_is_reported_by_main(monkeypatch, capsys):
    class Broken:
        @hookimpl
        def register_commands(self, cli):
            raise AttributeError("no such group option")

    plugins.register_plugin(Broken(), "broken-commands")
    # The hook runs for a command name that neither probe nor an installed package's metadata knows.
    monkeypatch.setattr(sys, "argv", ["probe", "from-a-plugin"])
    with pytest.raises(SystemExit) as exit_info:
        probe.cli.main()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == ("Error: plugin 'broken-commands' raised in hook register_commands: "
                                       "AttributeError: no such group option\n")


# ---------------------------------------------------------------- probe_adapter and register_adapters


class MyGPT2Adapter(GPT2Adapter):
    name = "my-gpt2"



class ClaimsGPT2:
    """A plugin that claims the family a built-in also claims."""

    @hookimpl
    def probe_adapter(self, model):
        return MyGPT2Adapter() if model.config.model_type == "gpt2" else None


def test_a_plugins_adapter_is_asked_before_probes_own():
    inputs = make_inputs()
    reference = random_gpt2_lm()
    assert probe.swap_attention(random_gpt2_lm())._probe_swap.adapter.name == "gpt2"
    plugins.register_plugin(ClaimsGPT2(), "claims-gpt2")
    swapped = probe.swap_attention(random_gpt2_lm())
    assert type(swapped._probe_swap.adapter) is MyGPT2Adapter
    assert_bitwise(logits(reference, inputs), logits(swapped, inputs), "logits by the plugin's adapter")


def test_a_plugin_that_declines_leaves_the_model_to_the_builtins():
    asked = []

    class Declines:
        @hookimpl
        def probe_adapter(self, model):
            asked.append(type(model).__name__)

    plugins.register_plugin(Declines(), "declines")
    assert plugins.adapter_for(random_gpt2_lm()).name == "gpt2" and asked == ["GPT2LMHeadModel"]


def test_an_adapter_registered_the_older_way_still_wins_over_the_builtin():
    class Older:
        @hookimpl
        def register_adapters(self, register):
            register("my-gpt2", MyGPT2Adapter())

    plugins.register_plugin(Older(), "older")
    assert plugins.adapter_for(random_gpt2_lm()).name == "my-gpt2"
    assert probe.swap_attention(random_gpt2_lm())._probe_swap.adapter.name == "my-gpt2"


def test_a_plugin_adds_a_family_through_register_adapters(tmp_path):
    import adapter_plugin
    from transformers import AutoModelForCausalLM

    from probe.core.architectures import save_random

    save_random("arcee", tmp_path)
    load = lambda: AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()  # noqa: E731
    before = probe.swap_attention(load())
    assert before._probe_swap.adapter.name == "universal"  # the built-in path, without the plugin

    assert callable(adapter_plugin.register_adapters)
    plugins.register_plugin(adapter_plugin, "arcee-full")
    assert "arcee-full" in plugins.registry("adapter")
    swapped = probe.swap_attention(load())
    assert swapped._probe_swap.adapter.name == "arcee-full" and swapped._probe_swap.adapter.path == "full"
    ids = torch.randint(3, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load()(input_ids=ids, output_hidden_states=True).hidden_states
        got = swapped(input_ids=ids, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
