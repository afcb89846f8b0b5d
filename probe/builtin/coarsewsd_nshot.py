"""Dataset source for CoarseWSD-20's n-shot release (``CoarseWSD-20_nshot``), read from a folder the user
supplies:

    dataset: {name: coarsewsd-nshot, path: /data/CoarseWSD-20_nshot, words: [apple], shots: [1, 3, 10, 30]}
    evaluation: {split_field: split, train: train, test: test}
    split_by: sample

The folder holds one sub-folder per draw (``set1``, ``set2``, ``set3`` in the release); each draw holds one
folder per word and number of examples per sense, named ``<word>_<shots>`` (``apple_1``, ``apple_3``,
``apple_10``, ``apple_30``), and each of those is a CoarseWSD-20 word folder (classes_map.txt,
train.data.txt, train.gold.txt, test.data.txt, test.gold.txt; see probe/builtin/coarsewsd.py).

Each instance becomes a row as in ``coarsewsd``, with three more columns: ``shots`` (the number in the
folder's name), ``draw`` (the draw folder) and ``sample`` (``<draw>/<word>_<shots>``, one fit's rows: run
with ``split_by: sample`` so that each sample is trained on its own training rows and scored on its own
test rows). Every draw must hold the same word × shots folders: a folder missing from one draw is an error
naming it, as is a folder name without ``_<shots>``.
"""

from __future__ import annotations

import re
from pathlib import Path

from probe.builtin.coarsewsd import row_features, word_rows
from probe.pipeline.data import DataError

SAMPLE_NAME = re.compile(r"(?P<word>.+)_(?P<shots>[0-9]+)")


def load_coarsewsd_nshot(path: str, words: list[str] | None = None, shots: list[int] | None = None,
                         draws: list[str] | None = None):
    """Rows of every draw × word × shots folder (or of those named) of a CoarseWSD-20_nshot folder."""
    import datasets

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"coarsewsd-nshot: {root} is not a folder (expected one sub-folder per draw, e.g. set1)")
    layout = read_layout(root)
    chosen_draws = _chosen("draw", draws, sorted(layout), root)
    every_sample = sorted({sample for draw in chosen_draws for sample in layout[draw]})
    chosen_words = _chosen("word", words, sorted({word for word, _ in every_sample}), root)
    chosen_shots = _chosen("shots", shots, sorted({n for _, n in every_sample}), root)
    samples = [(word, n) for word, n in every_sample if word in chosen_words and n in chosen_shots]
    for draw in chosen_draws:
        missing = [f"{word}_{n}" for word, n in samples if (word, n) not in layout[draw]]
        if missing:
            raise DataError(f"coarsewsd-nshot: draw folder {root / draw} lacks {', '.join(missing)}, which "
                            f"other draws have; every draw needs the same <word>_<shots> folders")
    rows = []
    for draw in chosen_draws:
        for word, n in samples:
            sample = f"{draw}/{word}_{n}"
            rows += [{**row, "shots": n, "draw": draw, "sample": sample}
                     for row in word_rows(root / draw / f"{word}_{n}", word=word)]
    more = {"shots": datasets.Value("int64"), "draw": datasets.Value("string"), "sample": datasets.Value("string")}
    return datasets.Dataset.from_list(rows, features=row_features(**more))


def read_layout(root: Path) -> dict[str, set[tuple[str, int]]]:
    """Each draw folder's (word, shots) samples: its sub-folders that hold a classes_map.txt."""
    layout = {}
    for draw in sorted(folder for folder in root.iterdir() if folder.is_dir()):
        samples = set()
        for folder in sorted(f for f in draw.iterdir() if (f / "classes_map.txt").is_file()):
            named = SAMPLE_NAME.fullmatch(folder.name)
            if named is None:
                raise DataError(f"coarsewsd-nshot: {folder} is not named <word>_<shots> (e.g. apple_10)")
            samples.add((named["word"], int(named["shots"])))
        if samples:
            layout[draw.name] = samples
    if not layout:
        raise DataError(f"coarsewsd-nshot: {root} has no draw folder (e.g. set1) holding <word>_<shots> folders "
                        "with a classes_map.txt")
    return layout


def _chosen(what: str, asked, found: list, root: Path) -> list:
    """``asked`` (all of ``found`` when None), each checked to be there."""
    if asked is None:
        return found
    asked = list(asked) if isinstance(asked, (list, tuple)) else [asked]
    missing = [value for value in asked if value not in found]
    if missing:
        raise DataError(f"coarsewsd-nshot: no {what} {', '.join(map(repr, missing))} in {root}; found: "
                        f"{', '.join(map(str, found))}")
    return [value for value in found if value in asked]
