"""probe's CoarseWSD-20 study against the plain transformers + scikit-learn script (benchmarks/coarsewsd_plain.py)
on a small synthetic folder in the benchmark's format (benchmarks/coarsewsd_synthetic.py): per word, the
same chosen layer, and accuracies within one test row at every layer, for the probe and for the centroid
baseline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from tiny_gpt2 import build_tiny_gpt2

from probe.pipeline.config import validate
from probe.pipeline.run import run_experiment

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
WORDS = ["bank", "chair", "java"]


def test_probes_study_matches_the_plain_script_within_one_test_row(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from coarsewsd_plain import read_part, study_word, vectors
    from coarsewsd_synthetic import write_folder
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path / "CoarseWSD-20"
    write_folder(folder, fraction=0.05, seed=3, words=WORDS, longest=16)  # the tiny model's 128 positions
    model = build_tiny_gpt2(tmp_path / "model", n_layer=2, n_embd=32, seed=4)
    # final_norm: the script's last layer is Hugging Face's last hidden state, after GPT-2's final norm
    config = validate({"model": str(model), "dataset": {"name": "coarsewsd", "path": str(folder)},
                       "evaluation": {"split_field": "split", "train": "train", "test": "test"}, "split_by": "word",
                       "controls": [], "reporters": ["study"], "probe": {"name": "logreg", "C": 0.1},
                       "final_norm": True})
    results = run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    study = {row["subset"]: row for row in csv.DictReader((tmp_path / "out" / "study.csv").read_text().splitlines())}
    tokenizer, hf = AutoTokenizer.from_pretrained(model), AutoModel.from_pretrained(model).eval()
    for word in WORDS:
        senses = json.loads((folder / word / "classes_map.txt").read_text())
        (train, y_train), (test, y_test) = (read_part(folder / word, part, senses) for part in ("train", "test"))
        script = study_word(vectors(hf, tokenizer, train, "cpu"), np.array(y_train),
                            vectors(hf, tokenizer, test, "cpu"), np.array(y_test), C=0.1, seed=0)
        one_row = 1 / len(y_test) + 1e-9
        mine = study[word]
        assert int(mine["test_rows"]) == script["test_rows"] and int(mine["layer"]) == script["layer"], word
        assert abs(float(mine["accuracy"]) - script["accuracy"]) <= one_row, word
        assert abs(float(mine["centroid_accuracy"]) - script["centroid_accuracy"]) <= one_row, word
        for row in results.rows:
            if row.subset == word:
                assert abs(row.accuracy - script[f"layer{row.layer}"]) <= one_row, (word, row.layer)
