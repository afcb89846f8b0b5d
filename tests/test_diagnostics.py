"""Diagnostics that stop a wrong reading (probe/pipeline/diagnostics.py), each seen firing and not firing:
on synthetic arrays, and end to end on a tiny random-init GPT-2 (a causal model) through `probe run`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from conftest import shared_folder
from tiny_gpt2 import build_tiny_gpt2
from transformers import BertConfig, GPT2Config, LlamaConfig

from probe.cli import cli
from probe.pipeline import diagnostics
from probe.pipeline.context import Split
from probe.report.extras import outliers, pca2, pca2_without_outliers, pca_per_layer

pytestmark = pytest.mark.usefixtures("builtins_only")

SENSES = {"animal": "garden", "unit": "chemist"}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    folder = shared_folder(tmp_path_factory, "tiny-gpt2-n2-d32-s1",
                           lambda f: build_tiny_gpt2(f / "model", n_layer=2, n_embd=32, seed=1))
    return folder / "model"


def left_cue_rows(n: int = 12, cue: str = "left") -> list[dict]:
    """Rows whose sense is the word left of "mole": every row's text up to the word is its own."""
    fillers = "about across after all and been built can card desk every from".split()
    return [{"text": f"Then {fillers[i % len(fillers)]} the {word} mole was {fillers[(i + 3) % len(fillers)]} here.",
             "target": "mole", "label": label, "cue": cue, "group": None}
            for i in range(n) for label, word in SENSES.items()]


FIRST_WORD = [  # the target starts the text: a causal model's vector at it is the same in every row
    {"text": "Moles dig long tunnels under the garden lawn.", "target": "Moles", "label": "animal", "cue": "right"},
    {"text": "Moles and grams convert once you know the molar mass.", "target": "Moles", "label": "unit", "cue": "right"},
]


def run(tmp_path: Path, model: Path, rows: list[dict], *extra: str, **fields) -> tuple[object, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"name": "diag", "model": str(model), "dataset": {"name": "file", "path": str(data)}, "folds": 3,
              "controls": ["majority"], "reporters": ["json", "summary", "html"], "batch_size": 8, **fields}
    path = tmp_path / "diag.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(path), "--output", str(out), "--cache-dir", str(tmp_path / "cache"),
                                      "--jobs", "1", *extra], env={"PROBE_PLUGINS": ""})
    return result, out


def codes(out: Path) -> dict[str, dict]:
    found = json.loads((out / "results.json").read_text())["diagnostics"]
    return {d["code"]: d for d in found}


# ---------------------------------------------------------------- identical vectors


def test_identical_groups_finds_equal_and_nearly_equal_rows_only():
    X = np.random.default_rng(0).standard_normal((30, 16))
    X[7] = X[3]
    X[20] = X[3] + 1e-9  # rounding between batches: still one vector
    X[11] = X[5] * (1 + 1e-3)  # a real difference: not one vector
    assert diagnostics.identical_groups(X) == [[3, 7, 20]]
    assert diagnostics.identical_groups(np.random.default_rng(1).standard_normal((30, 16))) == []


def test_identical_groups_in_blocks_agree_with_one_block():
    X = np.repeat(np.random.default_rng(2).standard_normal((5, 8)), 3, axis=0)
    whole = diagnostics._close_components(X, np.arange(len(X)), 1e-9)
    blocked = diagnostics._close_components(X, np.arange(len(X)), 1e-9, block=2)
    assert sorted(whole) == sorted(blocked) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14]]


def components_of_every_pair(X: np.ndarray, eps: float) -> list[list[int]]:
    """The groups identical_groups must find, the slow way: every pair's distance at once."""
    near = np.linalg.norm(X[:, None, :] - X[None, :, :], axis=2) <= eps
    label = list(range(len(X)))
    for _ in range(len(X)):  # spread the smallest row number through each component
        label = [min(label[j] for j in np.flatnonzero(near[i])) for i in range(len(X))]
    groups: dict[int, list[int]] = {}
    for row, first in enumerate(label):
        groups.setdefault(first, []).append(row)
    return sorted(group for group in groups.values() if len(group) > 1)


@pytest.mark.parametrize("tolerance", [1e-5, 0.02, 0.08])
def test_runs_cut_again_along_other_directions_find_every_group_that_every_pair_finds(monkeypatch, tolerance):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((300, 6)) * 0.1
    X[rng.integers(0, 300, 40)] = X[5]  # one vector shared by many rows
    X[100:110] = X[99] + rng.standard_normal((10, 6)) * 1e-8  # nearly one vector: rounding
    monkeypatch.setattr(diagnostics, "SHORT_RUN", 4)  # so that runs are cut again, several directions deep
    found = diagnostics.identical_groups(X, tolerance)
    eps = tolerance * np.sqrt(np.sum(X**2) / len(X))
    assert found == components_of_every_pair(X, eps) and len(found) >= 2


def test_identical_vectors_skip_the_embeddings_and_same_label_groups():
    table = datasets.Dataset.from_list([{"text": f"t{i}", "label": "ab"[i % 2], "span_start": 0} for i in range(6)])
    base = np.random.default_rng(3).standard_normal((6, 4))
    same_label = base.copy()
    same_label[2] = same_label[0]  # rows 0 and 2: both "a"
    vectors = {0: np.zeros((6, 4)), 1: same_label, 2: base}
    found = diagnostics.identical_vectors(lambda p, layer: vectors[layer], ["target"], [0, 1, 2], table,
                                          [10, 11, 12, 13, 14, 15], causal=True)
    assert found == []  # layer 0 is one embedding by design; rows 0 and 2 share a label
    vectors[2] = base.copy()
    vectors[2][1] = vectors[2][0]  # rows 0 ("a") and 1 ("b"): one vector at layer 2
    [found] = diagnostics.identical_vectors(lambda p, layer: vectors[layer], ["target"], [0, 1, 2], table,
                                            [10, 11, 12, 13, 14, 15], causal=True)
    assert (found.code, found.rows, found.layers) == ("identical-vectors", [10, 11], [2])
    assert "starts the text" in found.advice and "positions: [target, last]" in found.advice


def test_the_advice_names_the_rows_that_start_with_the_word_when_only_some_do():
    table = datasets.Dataset.from_list([{"text": f"t{i}", "label": "abab"[i], "span_start": [0, 0, 4, 4][i]}
                                        for i in range(4)])
    X = np.repeat(np.random.default_rng(6).standard_normal((2, 4)), 2, axis=0)  # rows 0=1 and 2=3
    [found] = diagnostics.identical_vectors(lambda p, layer: X, ["target"], [1], table, [7, 8, 9, 10], causal=True)
    assert found.details["groups"] == [[7, 8], [9, 10]]
    assert "the text up to the word is the same" in found.advice and "(rows 7, 8 start with the word" in found.advice
    [encoder] = diagnostics.identical_vectors(lambda p, layer: X, ["target"], [1], table, [7, 8, 9, 10], causal=False)
    assert "causal" not in encoder.advice


def test_rows_whose_text_starts_with_the_word_are_named_in_every_report(tiny_model, tmp_path):
    result, out = run(tmp_path, tiny_model, left_cue_rows() + FIRST_WORD, "--quiet")
    assert result.exit_code == 0, result.output
    found = codes(out)["identical-vectors"]
    assert found["rows"] == [25, 26] and found["layers"] == [1, 2]  # the two "Moles …" rows, after the 24 others
    assert "every layer past the embeddings" in found["message"]
    assert "starts the text" in found["advice"]
    # under --quiet: one line, no advice
    lines = [line for line in result.stderr.splitlines() if line.startswith("warning: identical-vectors")]
    assert len(lines) == 1 and "what to do" not in result.stderr
    assert "**identical-vectors**" in (out / "summary.md").read_text()
    page = (out / "report.html").read_text()
    assert 'class="diagnostics"' in page and "identical-vectors" in page


def test_rows_with_their_own_text_before_the_word_raise_no_warning(tiny_model, tmp_path):
    result, out = run(tmp_path, tiny_model, left_cue_rows())
    assert result.exit_code == 0, result.output
    assert codes(out) == {}
    assert "warning:" not in result.stderr
    assert "Read with care" not in (out / "summary.md").read_text()
    assert 'class="diagnostics"' not in (out / "report.html").read_text()


# ---------------------------------------------------------------- cues a causal model can't see


def test_is_causal_from_the_config_alone():
    assert diagnostics.is_causal(GPT2Config()) and diagnostics.is_causal(LlamaConfig())
    assert not diagnostics.is_causal(BertConfig())


def test_a_cue_right_of_the_word_is_named_with_each_cues_accuracy(tiny_model, tmp_path):
    rows = left_cue_rows(12) + [dict(r, cue="right", text=r["text"].replace("Then", "So")) for r in left_cue_rows(6)]
    result, out = run(tmp_path, tiny_model, rows, split_by="cue")
    assert result.exit_code == 0, result.output
    found = codes(out)["cue-hidden"]
    assert found["rows"] == list(range(25, 37))
    assert found["details"]["rows_by_cue"] == {"left": 24, "right": 12}
    results = json.loads((out / "results.json").read_text())
    best = {s: max(r["accuracy"] for r in results["layers"] if r["subset"] == s) for s in ("all", "left", "right")}
    assert found["details"]["best_target_accuracy"] == pytest.approx(best)
    assert f"right {best['right']:.2f}" in found["message"] and "mixes them" in found["message"]
    assert "what to do:" in result.stderr  # without --quiet: the advice too


def test_no_cue_warning_for_an_encoder_or_when_every_cue_is_visible():
    table = datasets.Dataset.from_list([{"cue": c} for c in ("left", "right", "both")])
    assert diagnostics.hidden_cues(table, [1, 2, 3], ["target"], False, None, None) is None  # an encoder
    assert diagnostics.hidden_cues(table, [1, 2, 3], ["last"], True, None, None) is None  # the last token sees it
    visible = datasets.Dataset.from_list([{"cue": c} for c in ("left", "both")])
    assert diagnostics.hidden_cues(visible, [1, 2], ["target"], True, None, None) is None
    found = diagnostics.hidden_cues(table, [4, 5, 6], ["target"], True, None, None)
    assert found.rows == [5] and "split_by: cue" in found.advice


# ---------------------------------------------------------------- labels and the split column


def test_a_test_label_missing_from_training_is_named_per_fold():
    y = np.array(["a", "a", "b", "b", "c"])
    split = Split("all", np.arange(5), y, [(np.array([0, 2]), np.array([1, 3, 4])), (np.array([1, 3, 4]), np.array([0, 2]))])
    [found] = diagnostics.untrained_labels([split], [11, 12, 13, 14, 15], fixed=False)
    assert (found.code, found.rows, found.details["label"], found.details["folds"]) == ("label-not-trained", [15], "c", [1])
    every = Split("all", np.arange(4), y[:4], [(np.array([0, 2]), np.array([1, 3]))])
    assert diagnostics.untrained_labels([every], [1, 2, 3, 4], fixed=True) == []


def fixed_split_rows() -> list[dict]:
    rows = left_cue_rows(8)
    for i, row in enumerate(rows):
        row["split"] = "test" if i % 3 == 2 else "train"
    return rows


def test_a_fixed_split_warns_of_an_untrained_label_and_refuses_it_when_strict(tiny_model, tmp_path):
    rows = fixed_split_rows() + [{"text": "Then the spy mole was found.", "target": "mole", "label": "spy",
                                  "split": "test"}]
    evaluation = {"split_field": "split", "train": "train", "test": "test"}
    result, out = run(tmp_path, tiny_model, rows, evaluation=evaluation)
    assert result.exit_code == 0, result.output
    found = codes(out)["label-not-trained"]
    assert found["rows"] == [17] and "'spy'" in found["message"]
    strict, _ = run(tmp_path / "strict", tiny_model, rows, evaluation=evaluation,
                    options={"diagnostics": {"strict": True}})
    assert strict.exit_code != 0 and "Traceback" not in strict.output
    assert "options.diagnostics.strict is on" in strict.output and "'spy'" in strict.output


def test_rows_without_a_split_value_are_counted_and_named(tiny_model, tmp_path):
    rows = fixed_split_rows()
    for i in (2, 5):
        rows[i]["split"] = None
    del rows[9]["split"]
    result, out = run(tmp_path, tiny_model, rows, evaluation={"split_field": "split", "train": "train", "test": "test"})
    assert result.exit_code == 0, result.output
    found = codes(out)["rows-without-split"]
    assert found["rows"] == [3, 6, 10]
    assert "rows.jsonl: 3 row(s) have no 'split' value" in found["message"]
    whole, _ = run(tmp_path / "whole", tiny_model, fixed_split_rows(),
                   evaluation={"split_field": "split", "train": "train", "test": "test"})
    assert whole.exit_code == 0 and "warning:" not in whole.stderr


def test_strict_takes_only_true_or_false():
    class Config:
        source, options = "x.yaml", {"diagnostics": {"strict": "yes"}}

    with pytest.raises(diagnostics.ConfigError, match="options.diagnostics"):
        diagnostics.strict(Config())


# ---------------------------------------------------------------- PCA outliers


def test_a_massive_activation_is_left_out_of_the_pca_and_named():
    X = np.random.default_rng(4).standard_normal((60, 12))
    X[[5, 40]] += 500.0  # two rows hundreds of times longer than the rest
    assert outliers(X).tolist() == [5, 40]
    assert pca2(X)[1][0] > 0.99  # with them, PC1 is those two points
    points, explained, left_out = pca2_without_outliers(X)
    assert left_out.tolist() == [5, 40] and np.isnan(points[[5, 40]]).all()
    assert not np.isnan(np.delete(points, [5, 40], axis=0)).any()
    assert explained[0] < 0.5  # the rest have no single dominant direction
    layer = pca_per_layer(lambda p, layer: X, "target", [1])["1"]
    assert layer["left_out"] == [5, 40] and layer["x"][5] is None and json.dumps(layer)


def test_ordinary_spread_or_a_cluster_is_not_an_outlier():
    X = np.random.default_rng(5).standard_normal((60, 12))
    assert outliers(X).tolist() == []
    X[:10] += 500.0  # a sixth of the rows: a cluster, shown as it is
    assert outliers(X).tolist() == []
    assert outliers(np.ones((10, 3))).tolist() == []  # no spread at all
