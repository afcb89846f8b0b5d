"""The permutation test, Hewitt–Liang control tasks and the MDL probe, on planted signals.

Tiny synthetic features (a few dimensions, tens of rows) with a signal planted in one of them; everything
is seeded, so each assertion is a fixed outcome, not a chance one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_folder
from probe_plugins import mdl as mdl_plugin
from probe_plugins.mdl import online_codelength
from tiny_gpt2 import build_tiny_gpt2

import probe.notebook
from probe.science import control_tasks
from probe.science import permutation
from probe.science.probes import FitTask, evaluate, folds, logistic_probe

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


def planted(n_per_label: int = 20, strength: float = 3.0, seed: int = 0, labels=("a", "b")):
    """(X, y, groups): X's first column is the label's index × strength plus noise; the rest is noise.
    Groups are templates of one row per label (like the mole sentences)."""
    rng = np.random.default_rng(seed)
    y = np.array([label for _ in range(n_per_label) for label in labels])
    X = rng.normal(size=(len(y), 4))
    X[:, 0] += strength * np.array([labels.index(label) for label in y])
    groups = [f"t{i // len(labels)}" for i in range(len(y))]
    return X, y, groups


def permutation_test(X, y, groups, n: int = 19, seed: int = 0, n_jobs: int = 1) -> dict:
    """The probe's accuracy and its permutation p-value, as an experiment computes them."""
    fold_list = folds(y, groups, 3, seed)
    permuted = permutation.within_group_permutations(y, groups, n, seed)
    probe_task = FitTask(("x", "probe"), X, y, fold_list)
    tasks = [probe_task, *permutation.tasks(("x",), X, permuted, fold_list)]
    scores = evaluate(tasks, lambda: logistic_probe(seed), n_jobs=n_jobs)
    null = [scores[("x", "permutation", i)]["accuracy"] for i in range(n)]
    observed = scores[probe_task.key]["accuracy"]
    return {"accuracy": observed, "null": null, "p": permutation.p_value(observed, null)}


# ---------------------------------------------------------------- permutations


def test_permutations_shuffle_labels_only_within_each_group():
    y = np.array(["a", "b", "c", "a", "b", "c", "a", "b"])
    groups = ["g1", "g1", "g1", "g2", "g2", "g2", None, None]
    permuted = permutation.within_group_permutations(y, groups, 30, seed=0)
    for labels in permuted:
        assert sorted(labels[:3]) == ["a", "b", "c"] and sorted(labels[3:6]) == ["a", "b", "c"]
        assert sorted(labels[6:]) == ["a", "b"]  # ungrouped rows are permuted among themselves
    assert len({tuple(labels) for labels in permuted}) > 5  # they do differ from one another


def test_permutations_are_seeded():
    y, groups = np.array(list("abab")), ["g", "g", "h", "h"]
    first = permutation.within_group_permutations(y, groups, 10, seed=3)
    again = permutation.within_group_permutations(y, groups, 10, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_p_value_counts_the_observed_score():
    assert permutation.p_value(0.9, [0.5, 0.6, 0.7]) == pytest.approx(1 / 4)
    assert permutation.p_value(0.6, [0.5, 0.6, 0.7]) == pytest.approx(3 / 4)  # ties count against
    assert permutation.p_value(0.1, [0.5] * 9) == pytest.approx(1.0)


def test_a_planted_signal_gets_the_smallest_p_value_possible():
    X, y, groups = planted()
    found = permutation_test(X, y, groups, n=19)
    assert found["accuracy"] > 0.8
    assert found["p"] == pytest.approx(1 / 20)
    assert max(found["null"]) < 0.8


def test_without_a_signal_p_values_are_not_systematically_small():
    """Eight datasets with no signal: under the null the p-value is uniform, so its mean is about 0.5 and
    only a few fall under 0.1; a test that leaked labels would put them all near 1/20."""
    p_values = [permutation_test(*planted(strength=0.0, seed=seed), n=19, seed=seed)["p"] for seed in range(8)]
    assert 0.25 < np.mean(p_values) < 0.75
    assert sum(p < 0.1 for p in p_values) <= 2


def test_the_permutation_test_does_not_depend_on_n_jobs():
    X, y, groups = planted(strength=0.5)
    assert permutation_test(X, y, groups, n_jobs=1) == permutation_test(X, y, groups, n_jobs=2)


# ---------------------------------------------------------------- control tasks


def test_control_labels_are_a_seeded_function_of_the_word_type():
    words = ["mole", "tower", "mole", "bank", "tower", "mole"]
    labels = ["m:a", "t:b", "m:c", "b:d", "t:e", "m:a"]
    control = control_tasks.control_labels(words, labels, seed=0)
    by_word = {}
    for word, label in zip(words, control):
        by_word.setdefault(word, set()).add(label)
    assert all(len(found) == 1 for found in by_word.values())  # one label per word type
    assert len(set(control)) >= 2 and set(control) <= set(labels)
    assert list(control) == list(control_tasks.control_labels(words, labels, seed=0))
    seen = {tuple(control_tasks.control_labels(words, labels, seed=s)) for s in range(10)}
    assert len(seen) > 1  # the function depends on the seed


def test_a_control_task_needs_two_word_types():
    with pytest.raises(control_tasks.ControlTaskError, match="at least two word types.*'mole'"):
        control_tasks.control_labels(["mole", "Mole"], ["a", "b"], seed=0)  # one type, capitalised or not


def words_and_senses(sense_strength: float, seed: int = 0):
    """Two words with two senses each (labels word:sense); X[:, 1] always says which word it is, X[:, 0]
    says the sense with ``sense_strength``."""
    rng = np.random.default_rng(seed)
    words = np.array(["mole", "tower"] * 40)
    senses = np.array(["x"] * 40 + ["y"] * 40)
    y = np.array([f"{w}:{s}" for w, s in zip(words, senses)])
    X = rng.normal(size=(len(y), 4))
    X[:, 1] += 4.0 * (words == "tower")
    X[:, 0] += sense_strength * (senses == "y")
    return X, y, words


def selectivity(sense_strength: float) -> tuple[float, float, float]:
    """(task accuracy, control-task accuracy, selectivity) on the same folds."""
    X, y, words = words_and_senses(sense_strength)
    control = control_tasks.control_labels(words, y, seed=0)
    fold_list = folds(y, None, 4, 0)
    tasks = [FitTask(("task",), X, y, fold_list), *control_tasks.tasks(("c",), X, control, fold_list)]
    scores = evaluate(tasks, lambda: logistic_probe(0), n_jobs=1)
    task, ctrl = scores[tasks[0].key]["accuracy"], scores[("c", "control_task")]["accuracy"]
    return task, ctrl, task - ctrl


def test_control_task_selectivity_is_high_only_where_the_sense_is_encoded():
    with_sense, without_sense = selectivity(4.0), selectivity(0.0)
    assert with_sense[1] > 0.95 and without_sense[1] > 0.95  # word identity is decodable in both
    assert with_sense[0] > 0.8 and without_sense[0] < 0.7
    assert with_sense[2] > -0.2 and without_sense[2] < -0.3
    assert with_sense[2] - without_sense[2] > 0.3


# ---------------------------------------------------------------- MDL


def test_mdl_codelength_is_shorter_for_the_planted_layer():
    X, y, _ = planted(n_per_label=40, labels=("a", "b", "c"))
    noise = np.random.default_rng(1).normal(size=X.shape)
    signal, none = online_codelength(X, y, logistic_probe(0)), online_codelength(noise, y, logistic_probe(0))
    assert signal["uniform_codelength"] == none["uniform_codelength"] == pytest.approx(120 * np.log2(3))
    assert signal["codelength"] < 0.8 * none["codelength"]
    assert signal["compression"] > 1.3 and none["compression"] < 1.1
    assert online_codelength(X, y, logistic_probe(0)) == signal  # seeded: the same every time


def test_mdl_refuses_bad_fractions_and_probes_without_probabilities():
    from sklearn.svm import LinearSVC

    X, y, _ = planted()
    with pytest.raises(ValueError, match="fractions must increase"):
        online_codelength(X, y, logistic_probe(0), fractions=[0.5, 0.2, 1.0])
    with pytest.raises(TypeError, match="predict_proba"):
        online_codelength(X, y, LinearSVC())


# ---------------------------------------------------------------- through run_experiment


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """test_experiment's tiny GPT-2 (the same shared folder: built once per session)."""
    folder = shared_folder(tmp_path_factory, "tiny-gpt2-n2-d32-s1",
                           lambda f: build_tiny_gpt2(f / "model", n_layer=2, n_embd=32, seed=1))
    return folder / "model"


@pytest.fixture(scope="module")
def two_word_data(tmp_path_factory):
    """The planted left-cue sentences, every other pair with "tower" as the target word instead of "mole"."""
    from test_experiment import write_planted

    folder = tmp_path_factory.mktemp("two-words")
    rows = [json.loads(line) for line in write_planted(folder / "one.jsonl", n_per_label=30).read_text().splitlines()]
    for number, row in enumerate(rows):
        if number // 2 % 2:
            row.update(text=row["text"].replace(" mole ", " tower "), target="tower")
    path = folder / "two.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stronger_config(model, data, **fields):
    from test_experiment import planted_config

    wanted = {"layers": [0, 2], "controls": ["permutation", "control_task"], "permutations": 9,
              "measures": ["mdl"], "reporters": ["json", "csv", "summary"]}
    return planted_config(model, data, **{**wanted, **fields})


def test_an_experiment_reports_permutations_control_task_and_mdl_whatever_n_jobs(tiny_model, two_word_data, tmp_path):
    from probe import plugins
    from probe.pipeline.run import run_experiment

    plugins.register_plugin(mdl_plugin, "mdl")
    config = stronger_config(tiny_model, two_word_data)
    one = run_experiment(config, tmp_path / "one", cache_dir=tmp_path / "cache1", progress=False, n_jobs=1)
    two = run_experiment(config, tmp_path / "two", cache_dir=tmp_path / "cache2", progress=False, n_jobs=2)
    assert one.to_dict()["layers"] == two.to_dict()["layers"]
    embeddings, after_attention = one.rows
    for row in one.rows:
        assert len(row.permutation_accuracies) == 9
        assert row.permutation_p_value == permutation.p_value(row.accuracy, row.permutation_accuracies)
        assert row.permutation_selectivity == pytest.approx(row.accuracy - np.mean(row.permutation_accuracies))
        assert row.control_task_selectivity == pytest.approx(row.accuracy - row.control_task_accuracy)
        assert set(row.measures["mdl"]) == {"codelength", "uniform_codelength", "compression"}
    # The sense is only in the word left of the target: invisible at the embeddings, read after attention.
    assert after_attention.accuracy > 0.9 and after_attention.permutation_p_value == pytest.approx(0.1)
    assert embeddings.permutation_p_value > 0.1
    assert after_attention.measures["mdl"]["codelength"] < embeddings.measures["mdl"]["codelength"]
    # Which word it is, the embeddings know: the control task is solved there.
    assert embeddings.control_task_accuracy > 0.9
    table = one.layers
    assert {"permutation_p_value", "control_task_selectivity", "mdl_compression"} <= set(table.columns)
    csv_header = (tmp_path / "one" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"permutation_p_value", "control_task_accuracy", "mdl_codelength"} <= set(csv_header)
    summary = (tmp_path / "one" / "summary.md").read_text()
    assert "## Controls and measures per layer" in summary and "9 label permutations" in summary
    saved = json.loads((tmp_path / "one" / "results.json").read_text())
    assert saved["layers"][1]["measures"]["mdl"] == after_attention.measures["mdl"]
    legend = {text.get_text() for text in probe.notebook.plot(one).legends[0].get_texts()}
    assert {"permuted labels, 5–95 % (target)", "p < 0.05, permutation test (target)",
            "control task (target)"} <= legend


def test_a_control_task_on_one_word_type_is_a_config_error_before_model_work(tiny_model, tmp_path):
    from test_experiment import write_planted

    from probe.pipeline.config import ConfigError
    from probe.pipeline.run import run_experiment

    data = write_planted(tmp_path / "mole.jsonl", n_per_label=10)
    config = stronger_config(tiny_model, data, folds=2)
    with pytest.raises(ConfigError, match="control_task.*at least two word types.*'mole'"):
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache" / "features").exists()


def test_an_unknown_measure_names_the_registered_ones(tiny_model, two_word_data, tmp_path):
    from probe.pipeline.run import run_experiment
    from probe.plugins import PluginError

    config = stronger_config(tiny_model, two_word_data, controls=["majority"])
    config.measures = ["mdl", "nope"]
    with pytest.raises(PluginError, match="unknown measure 'mdl'"):  # builtins only: mdl is not registered
        run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)


def test_config_fields_of_the_stronger_controls():
    from probe.pipeline.config import ConfigError, validate

    base = {"model": "gpt2", "dataset": "mole"}
    assert validate(base).controls == ["majority", "shuffled", "random_weights"]  # the costly ones are opt-in
    assert validate({**base, "controls": "permutation", "measures": "mdl"}).measures == ["mdl"]
    with pytest.raises(ConfigError, match="field 'permutations' must be at least 1, got 0"):
        validate({**base, "permutations": 0})
    with pytest.raises(ConfigError, match="field 'controls' is 'permutations'; accepted values: .*control_task"):
        validate({**base, "controls": ["permutations"]})
