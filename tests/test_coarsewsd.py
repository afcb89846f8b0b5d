"""The CoarseWSD-20 folder source, on a small synthetic folder written here (no benchmark data): parsing,
errors that name the file and line, and a run on its own train/test split that matches plain
scikit-learn on the same vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from test_evaluation import stored_vectors
from tiny_gpt2 import build_tiny_gpt2

from probe.builtin.coarsewsd import load_coarsewsd
from probe.pipeline.config import validate
from probe.pipeline.data import DataError
from probe.pipeline.run import run_experiment

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py

# Two words, two senses each; the sense is cued before the word, which a causal model can see.
WORDS = {
    "mole": {"0": "mole_animal", "1": "mole_unit"},
    "tower": {"0": "tower_building", "1": "tower_computer"},
}
CUES = {"mole_animal": ["garden", "furry", "blind"], "mole_unit": ["chemistry", "gram", "molar"],
        "tower_building": ["stone", "church", "bell"], "tower_computer": ["desktop", "server", "gaming"]}


def write_word(root: Path, word: str, parts: dict[str, int]) -> None:
    folder = root / word
    folder.mkdir(parents=True)
    (folder / "classes_map.txt").write_text(json.dumps(WORDS[word]))
    for part, n in parts.items():
        data, gold = [], []
        for i in range(n):
            class_id = str(i % 2)
            cue = CUES[WORDS[word][class_id]][(i // 2) % 3]
            tokens = f"the {word} ? yes , the {cue} {word} stood there .".split()  # the word twice
            data.append(f"7\t{' '.join(tokens)}")
            gold.append(class_id)
        (folder / f"{part}.data.txt").write_text("\n".join(data) + "\n")
        (folder / f"{part}.gold.txt").write_text("\n".join(gold) + "\n")


def write_folder(root: Path, parts: dict[str, int]) -> Path:
    """A CoarseWSD-20 folder at ``root`` with every word of WORDS, each part of ``parts`` that many rows."""
    for word in WORDS:
        write_word(root, word, parts)
    return root


@pytest.fixture()
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "CoarseWSD-20", {"train": 24, "test": 12})


def test_a_folder_becomes_rows_with_their_part_word_and_span(folder):
    ds = load_coarsewsd(str(folder))
    assert len(ds) == 72 and set(ds["word"]) == {"mole", "tower"} and set(ds["split"]) == {"train", "test"}
    row = ds[0]
    assert row["text"] == "the mole ? yes , the garden mole stood there ."
    assert (row["span_start"], row["span_end"]) == (28, 32)  # the indexed token, not the first "mole"
    assert row["target"] == "mole" and row["label"] == "mole_animal" and row["line"] == 1
    assert load_coarsewsd(str(folder), words=["tower"])["word"] == ["tower"] * 36


def corrupt(folder: Path, name: str, line: int, text: str) -> Path:
    path = folder / "mole" / name
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("name, line, text, message", [
    ("train.data.txt", 3, "7 the mole without a tab", r"train.data.txt, line 3: expected <token index><TAB>"),
    ("train.data.txt", 2, "40\tthe mole .", r"line 2: token index 40 is past the sentence's 3 token"),
    ("train.data.txt", 5, "x\tthe mole .", r"line 5: the token index 'x' is not a whole number"),
    ("test.gold.txt", 4, "7", r"test.gold.txt, line 4: class id '7' is not in"),
])
def test_a_malformed_line_is_named_by_file_and_line(folder, name, line, text, message):
    corrupt(folder, name, line, text)
    with pytest.raises(DataError, match=message):
        load_coarsewsd(str(folder))


def test_a_file_that_is_not_utf8_is_named_by_file_and_line(folder):
    path = folder / "mole" / "train.data.txt"
    lines = path.read_bytes().splitlines()
    lines[1] = "1\tthe mol\u00e9 .".encode("latin-1")
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"train\.data\.txt, line 2: byte 0xe9 is not UTF-8"):
        load_coarsewsd(str(folder))


def test_whole_file_problems_are_named(folder, tmp_path):
    (folder / "tower" / "test.gold.txt").write_text("0\n1\n")
    with pytest.raises(DataError, match="test.data.txt has 12 lines but .*test.gold.txt has 2"):
        load_coarsewsd(str(folder))
    (folder / "tower" / "classes_map.txt").write_text("0 tower_building\n")
    with pytest.raises(DataError, match="classes_map.txt is not JSON"):
        load_coarsewsd(str(folder))
    with pytest.raises(DataError, match="no word folder .* for 'bank' in .*; found: mole, tower"):
        load_coarsewsd(str(folder), words=["bank"])
    with pytest.raises(DataError, match="is not a folder"):
        load_coarsewsd(str(tmp_path / "absent"))


def test_a_coarsewsd_folder_runs_on_its_own_split_and_matches_scikit_learn(folder, tmp_path):
    model = build_tiny_gpt2(tmp_path / "model", n_layer=2, n_embd=32, seed=5)
    config = validate({
        "model": str(model), "dataset": {"name": "coarsewsd", "path": str(folder), "words": ["mole"]},
        "evaluation": {"split_field": "split", "train": "train", "test": "test"},
        "probe": {"name": "logreg", "C": 1.0}, "controls": ["majority", "shuffled"], "reporters": ["json"],
    })
    results = run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    rows = load_coarsewsd(str(folder), words=["mole"])
    y, parts = np.array(rows["label"]), np.array(rows["split"])
    train, test = np.flatnonzero(parts == "train"), np.flatnonzero(parts == "test")
    vectors = stored_vectors(tmp_path / "cache", len(rows))
    for row in results.rows:
        independent = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        expected = independent.fit(vectors[row.layer][train], y[train]).score(vectors[row.layer][test], y[test])
        assert row.accuracy == pytest.approx(expected, abs=0.005)
    assert results.evaluation["rows"] == {"train": 24, "test": 12}
    assert results.dataset.labels == ["mole_animal", "mole_unit"]
