"""CoarseWSD-20 as one study, on small synthetic folders written here (no benchmark data): the study table
(each word's numbers as a run on that word alone gives them, the sense-centroid baseline beside the probe,
the macro average), the n-shot folder layout and its errors, and the few-shot curves."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_coarsewsd import WORDS, write_folder, write_word
from test_evaluation import stored_vectors
from tiny_gpt2 import build_tiny_gpt2

from probe.builtin.coarsewsd import load_coarsewsd
from probe.builtin.coarsewsd_nshot import load_coarsewsd_nshot
from probe.pipeline.config import validate
from probe.pipeline.data import DataError
from probe.pipeline.run import run_experiment

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py

FIXED = {"split_field": "split", "train": "train", "test": "test"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("model") / "tiny", n_layer=2, n_embd=32, seed=5)


@pytest.fixture()
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "CoarseWSD-20", {"train": 30, "test": 14})


def run(model, dataset: dict, out: Path, reporters, **more):
    config = validate({"model": str(model), "dataset": dataset, "evaluation": FIXED, "controls": ["majority"],
                       "reporters": reporters, "layers": [1, 2], **more})
    return run_experiment(config, out, cache_dir=out.parent / f"{out.name}-cache", progress=False, n_jobs=1)


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines()))


def test_the_study_gives_each_word_the_numbers_of_a_run_on_that_word_alone(model, folder, tmp_path):
    dataset = {"name": "coarsewsd", "path": str(folder)}
    run(model, dataset, tmp_path / "all", ["study", "html"], split_by="word")
    table = {row["subset"]: row for row in read_csv(tmp_path / "all" / "study.csv")}
    assert list(table) == ["mole", "tower", "macro average"]
    for word in WORDS:
        run(model, {**dataset, "words": [word]}, tmp_path / word, ["study"])
        [alone] = read_csv(tmp_path / word / "study.csv")[:1]
        assert alone["subset"] == "all" and alone["layer"] != ""
        for column in ("senses", "train_rows", "test_rows", "layer", "accuracy", "accuracy_ci_low",
                       "accuracy_ci_high", "centroid_accuracy", "centroid_ci_low", "centroid_ci_high"):
            assert table[word][column] == alone[column], (word, column)
    words = [table[word] for word in WORDS]
    for name in ("accuracy", "centroid_accuracy"):
        macro = float(table["macro average"][name])
        assert macro == pytest.approx(np.mean([float(row[name]) for row in words]))
    low, high = float(table["macro average"]["accuracy_ci_low"]), float(table["macro average"]["accuracy_ci_high"])
    assert low <= float(table["macro average"]["accuracy"]) <= high
    markdown = (tmp_path / "all" / "study.md").read_text()
    assert "| mole | 2 | 30 | 14 |" in markdown and "**macro average**" in markdown
    page = (tmp_path / "all" / "report.html").read_text()
    assert "Study: best layer per subset" in page and "<td>tower</td>" in page


def test_the_centroid_column_is_cosine_to_the_mean_of_raw_training_vectors(model, folder, tmp_path):
    run(model, {"name": "coarsewsd", "path": str(folder), "words": ["tower"]}, tmp_path / "out", ["study"])
    [row] = read_csv(tmp_path / "out" / "study.csv")[:1]
    rows = load_coarsewsd(str(folder), words=["tower"])
    y, parts = np.array(rows["label"]), np.array(rows["split"])
    X = stored_vectors(tmp_path / "out-cache", len(rows))[int(row["layer"])].astype(np.float64)
    train, test = parts == "train", parts == "test"
    senses = sorted(set(y))
    centroids = np.stack([X[train & (y == sense)].mean(axis=0) for sense in senses])
    cosine = (X[test] @ centroids.T) / np.outer(np.linalg.norm(X[test], axis=1), np.linalg.norm(centroids, axis=1))
    by_hand = np.mean(np.array(senses)[cosine.argmax(axis=1)] == y[test])
    assert float(row["centroid_accuracy"]) == pytest.approx(by_hand)


# ---------------------------------------------------------------- the n-shot layout


def write_nshot(root: Path, draws=("set1", "set2"), shots=(1, 3)) -> Path:
    """The release's layout: <draw>/<word>_<shots>/, each a CoarseWSD-20 word folder with its own train part
    (shots rows per sense) and the word's test part."""
    for draw_number, draw in enumerate(draws):
        for word in WORDS:
            for n in shots:
                scratch = root / ".scratch"
                write_word(scratch, word, {"train": 2 * n + 2 * draw_number, "test": 10})
                lines = (scratch / word / "train.data.txt").read_text().splitlines()[2 * draw_number:]
                gold = (scratch / word / "train.gold.txt").read_text().splitlines()[2 * draw_number:]
                (scratch / word / "train.data.txt").write_text("\n".join(lines) + "\n")
                (scratch / word / "train.gold.txt").write_text("\n".join(gold))  # the release ends without a newline
                shutil.move(str(scratch / word), root / draw / f"{word}_{n}")
                shutil.rmtree(scratch)
    return root


def test_an_nshot_folder_becomes_rows_with_their_draw_shots_and_sample(tmp_path):
    root = write_nshot(tmp_path / "CoarseWSD-20_nshot")
    ds = load_coarsewsd_nshot(str(root))
    assert sorted(set(ds["sample"])) == [f"{d}/{w}_{n}" for d in ("set1", "set2") for w in WORDS for n in (1, 3)]
    train = [r for r in ds if r["sample"] == "set2/tower_3" and r["split"] == "train"]
    assert len(train) == 6 and {r["word"] for r in train} == {"tower"} and {r["shots"] for r in train} == {3}
    assert sorted({r["label"] for r in train}) == sorted(WORDS["tower"].values())
    chosen = load_coarsewsd_nshot(str(root), words=["mole"], shots=[3], draws=["set2"])
    assert set(chosen["sample"]) == {"set2/mole_3"} and len(chosen) == 6 + 10


def test_nshot_layout_errors_name_the_folder_file_and_line(tmp_path):
    root = write_nshot(tmp_path / "nshot")
    with pytest.raises(DataError, match=r"no draw 'set3' in .*nshot; found: set1, set2"):
        load_coarsewsd_nshot(str(root), draws=["set1", "set3"])
    with pytest.raises(DataError, match=r"no shots 30 in .*; found: 1, 3"):
        load_coarsewsd_nshot(str(root), shots=[30])
    gold = root / "set1" / "mole_3" / "train.gold.txt"
    gold.write_text("\n".join(gold.read_text().splitlines()[:4]))
    with pytest.raises(DataError, match=r"set1/mole_3/train.data.txt has 6 lines but .*train.gold.txt has 4; "
                                        r".*train.data.txt, line 5 has no partner"):
        load_coarsewsd_nshot(str(root))
    shutil.rmtree(root / "set2" / "tower_1")
    with pytest.raises(DataError, match=r"draw folder .*set2 lacks tower_1, which other draws have"):
        load_coarsewsd_nshot(str(root), shots=[1])
    (root / "set1" / "tower").mkdir()
    (root / "set1" / "tower" / "classes_map.txt").write_text("{}")
    with pytest.raises(DataError, match=r"set1/tower is not named <word>_<shots>"):
        load_coarsewsd_nshot(str(root))
    with pytest.raises(DataError, match="is not a folder"):
        load_coarsewsd_nshot(str(tmp_path / "absent"))


def test_few_shot_curves_average_words_then_draws(model, tmp_path):
    root = write_nshot(tmp_path / "nshot")
    results = run(model, {"name": "coarsewsd-nshot", "path": str(root)}, tmp_path / "out", ["few-shot", "html"],
                  split_by="sample", options={"few_shot": {"layer": 1}})
    table = read_csv(tmp_path / "out" / "few_shot.csv")
    macro = {int(r["shots"]): r for r in table if r["word"] == "macro average"}
    assert sorted(macro) == [1, 3] and {r["draws"] for r in macro.values()} == {"2"}
    accuracy = {row.subset: row.accuracy for row in results.rows if row.layer == 1 and row.position == "target"}
    for n in (1, 3):
        per_draw = {d: np.mean([accuracy[f"{d}/{w}_{n}"] for w in WORDS]) for d in ("set1", "set2")}
        assert float(macro[n]["probe_accuracy"]) == pytest.approx(np.mean(list(per_draw.values())))
        listed = dict(item.split(":") for item in macro[n]["probe_per_draw"].split())
        assert {d: float(v) for d, v in listed.items()} == pytest.approx(per_draw, abs=1e-4)
        assert float(macro[n]["probe_ci_low"]) <= float(macro[n]["probe_accuracy"]) <= float(macro[n]["probe_ci_high"])
    assert {r["word"] for r in table} == {"macro average", *WORDS}
    assert (tmp_path / "out" / "few_shot.png").stat().st_size > 0
    assert "Few-shot curves" in (tmp_path / "out" / "report.html").read_text()


def test_a_few_shot_layer_the_run_did_not_probe_is_named(model, tmp_path):
    from probe.pipeline.config import ConfigError

    root = write_nshot(tmp_path / "nshot", draws=("set1",), shots=(3,))
    with pytest.raises(ConfigError, match=r"options.few_shot.layer is 5, which the run did not probe; its layers: 1, 2"):
        run(model, {"name": "coarsewsd-nshot", "path": str(root)}, tmp_path / "out", ["few-shot"],
            split_by="sample", options={"few_shot": {"layer": 5}})
    assert not (tmp_path / "out").exists()  # nothing published
