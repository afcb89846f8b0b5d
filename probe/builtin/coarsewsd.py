"""Dataset source for the CoarseWSD-20 on-disk format, read from a folder the user supplies (probe ships
none of the benchmark's data).

    dataset: {name: coarsewsd, path: /data/CoarseWSD-20, words: [apple, java]}
    evaluation: {split_field: split, train: train, test: test}

The folder holds one sub-folder per word; in each:

- ``classes_map.txt``: a JSON object from class id to sense name, e.g. ``{"0": "apple_inc", "1": "apple"}``;
- ``{part}.data.txt`` for each part (``train``, ``test``, and any other such as ``dev``): one instance a
  line, ``<token index><TAB><sentence>``, the sentence already tokenized with tokens separated by spaces
  and the index (0-based) saying which token is the word;
- ``{part}.gold.txt``: one class id a line, line n labelling line n of ``{part}.data.txt``.

Each instance becomes a row: ``text`` the sentence as written, the indexed token's character span (so a
word that occurs twice needs nothing more), ``label`` its sense name, and the columns ``split`` (the part),
``word`` (the sub-folder) and ``line`` (1-based, in the part's files). Anything else — a data line without
exactly one tab, an index that is not a token of its sentence, a gold id missing from classes_map.txt,
files of different lengths — is an error naming the file and line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from probe.pipeline.data import FEATURES, DataError
from probe.pipeline.datafiles import utf8

DATA_SUFFIX, GOLD_SUFFIX = ".data.txt", ".gold.txt"


def load_coarsewsd(path: str, words: list[str] | None = None):
    """Rows of every word (or of ``words``) in a CoarseWSD-20-format folder, every part of each."""
    import datasets

    root = Path(path)
    if not root.is_dir():
        raise DataError(f"coarsewsd: {root} is not a folder (expected one sub-folder per word)")
    found = sorted(folder.name for folder in root.iterdir() if (folder / "classes_map.txt").is_file())
    if words is not None:
        words = [words] if isinstance(words, str) else list(words)
        missing = [word for word in words if word not in found]
        if missing:
            raise DataError(f"coarsewsd: no word folder with a classes_map.txt for {', '.join(map(repr, missing))} "
                            f"in {root}; found: {', '.join(found) or 'none'}")
    chosen = found if words is None else words
    if not chosen:
        raise DataError(f"coarsewsd: {root} has no word folder with a classes_map.txt")
    rows = [row for word in chosen for row in word_rows(root / word)]
    return datasets.Dataset.from_list(rows, features=row_features())


def row_features(**more):
    """The columns of a CoarseWSD-20 row (and ``more``), as ``datasets`` types."""
    import datasets

    return datasets.Features({**FEATURES, "split": datasets.Value("string"), "word": datasets.Value("string"),
                              "line": datasets.Value("int64"), **more})


def word_rows(folder: Path, word: str | None = None) -> list[dict]:
    """One word's rows, part by part in name order; ``word``: its name when it is not the folder's."""
    senses = read_classes_map(folder / "classes_map.txt")
    parts = sorted(p.name[: -len(DATA_SUFFIX)] for p in folder.glob(f"*{DATA_SUFFIX}"))
    if not parts:
        raise DataError(f"coarsewsd: {folder} has no *{DATA_SUFFIX} file (expected train{DATA_SUFFIX}, "
                        f"test{DATA_SUFFIX})")
    return [row for part in parts for row in part_rows(folder, part, senses, word or folder.name)]


def read_classes_map(path: Path) -> dict[str, str]:
    try:
        senses = json.loads(utf8(path.read_bytes(), path, DataError))
    except json.JSONDecodeError as error:
        raise DataError(f"coarsewsd: {path} is not JSON ({error}); expected an object of class id → sense "
                        'name, e.g. {"0": "apple_inc", "1": "apple"}') from None
    if not isinstance(senses, dict) or not senses or not all(isinstance(v, str) for v in senses.values()):
        raise DataError(f"coarsewsd: {path} must be a non-empty JSON object of class id → sense name, "
                        f"got {senses!r}")
    return {str(key): value for key, value in senses.items()}


def part_rows(folder: Path, part: str, senses: dict[str, str], word: str) -> list[dict]:
    data_path, gold_path = folder / f"{part}{DATA_SUFFIX}", folder / f"{part}{GOLD_SUFFIX}"
    if not gold_path.is_file():
        raise DataError(f"coarsewsd: {data_path} has no labels: {gold_path} is missing")
    data = utf8(data_path.read_bytes(), data_path, DataError).splitlines()
    gold = utf8(gold_path.read_bytes(), gold_path, DataError).splitlines()
    if len(data) != len(gold):
        longer = data_path if len(data) > len(gold) else gold_path
        raise DataError(f"coarsewsd: {data_path} has {len(data)} lines but {gold_path} has {len(gold)}; "
                        f"line n of one labels line n of the other, so {longer}, line {min(len(data), len(gold)) + 1} "
                        "has no partner")
    rows = []
    for number, (line, class_id) in enumerate(zip(data, gold), start=1):
        text, start, end = parse_instance(line, f"{data_path}, line {number}")
        class_id = class_id.strip()
        if class_id not in senses:
            raise DataError(f"coarsewsd: {gold_path}, line {number}: class id {class_id!r} is not in "
                            f"{folder / 'classes_map.txt'} (ids: {', '.join(senses)})")
        rows.append({"text": text, "target": text[start:end], "label": senses[class_id], "cue": None,
                     "group": None, "span_start": start, "span_end": end, "split": part, "word": word,
                     "line": number})
    return rows


def parse_instance(line: str, where: str) -> tuple[str, int, int]:
    """``<token index>\\t<sentence>`` → (sentence, start, end) of the indexed space-separated token."""
    fields = line.split("\t")
    if len(fields) != 2:
        raise DataError(f"coarsewsd: {where}: expected <token index><TAB><sentence>, got {len(fields)} "
                        f"tab-separated field(s): {line!r}")
    index, text = fields
    if not index.strip().isdigit():
        raise DataError(f"coarsewsd: {where}: the token index {index!r} is not a whole number ≥ 0")
    tokens = [match.span() for match in re.finditer(r"\S+", text)]
    position = int(index)
    if position >= len(tokens):
        raise DataError(f"coarsewsd: {where}: token index {position} is past the sentence's {len(tokens)} "
                        f"token(s): {text!r}")
    return (text, *tokens[position])
