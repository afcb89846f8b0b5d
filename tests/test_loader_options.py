"""The file loader keeps every column, takes a span as one column or as start/end columns, and refuses
options that would be silently ignored; a dataset refuses options it does not take."""

from __future__ import annotations

import json

import pytest

from probe.pipeline.config import ConfigError, validate
from probe.pipeline.data import DataError, load_rows, prepare
from probe.pipeline.run import load_dataset

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py

TWICE = "The mole saw a mole."


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rows_with_splits():
    rows = []
    for i in range(12):
        label = "animal" if i % 2 else "unit"
        rows.append({"text": f"Row {i}: the {label} mole.", "target": "mole", "label": label,
                     "split": "test" if i < 4 else "train", "word": "mole", "score": i / 2})
    return rows


def test_every_column_of_a_file_is_kept_with_its_type(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", rows_with_splits())
    ds = load_rows(path)
    assert {"split", "word", "score"} <= set(ds.column_names)
    assert ds[0]["split"] == "test" and ds[3]["score"] == 1.5
    prepared, _ = prepare(ds, source=str(path), n_folds=2)
    assert prepared["split"] == ds["split"]  # validation keeps them too


def test_filter_and_split_by_can_use_a_files_own_column(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", rows_with_splits())
    config = validate({"model": "m", "dataset": {"name": "file", "path": str(path)}, "folds": 2,
                       "filter": {"split": ["train"]}, "split_by": "word"})
    rows, _ = load_dataset(config)
    assert len(rows) == 8 and set(rows["split"]) == {"train"}


def test_a_split_for_a_local_file_is_refused_not_ignored(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", rows_with_splits())
    with pytest.raises(DataError, match="option split='test' applies to hub datasets"):
        load_rows(path, split="test")
    with pytest.raises(DataError, match="option revision='main' applies to hub datasets"):
        load_rows(path, revision="main")


def test_separate_start_and_end_columns_locate_a_word_that_occurs_twice(tmp_path):
    second = TWICE.rindex("mole")
    rows = [{"sentence": TWICE, "sense": s, "from": second, "to": second + 4} for s in ("animal", "spy")] * 2
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    ds, _ = prepare(load_rows(path, text_field="sentence", label_field="sense", span_start_field="from",
                              span_end_field="to"), source=str(path), n_folds=2)
    assert ds[0]["span_start"] == second and ds[0]["target"] == "mole"


def test_span_start_and_span_end_columns_are_used_unasked(tmp_path):
    rows = [{"text": TWICE, "target": "mole", "label": s, "span_start": 4, "span_end": 8} for s in ("a", "b")] * 2
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    ds, _ = prepare(load_rows(path), source=str(path), n_folds=2)  # no "occurs 2 times" complaint
    assert ds["span_start"] == [4] * 4
    without = write_jsonl(tmp_path / "plain.jsonl", [{"text": TWICE, "target": "mole", "label": "a"}])
    with pytest.raises(DataError, match="occurs 2 times"):
        prepare(load_rows(without), source=str(without), n_folds=1)


@pytest.mark.parametrize("options, message", [
    ({"span_field": "span", "span_start_field": "from"}, "either span_field"),
    ({"span_start_field": "from"}, "go together"),
])
def test_span_options_that_conflict_are_refused(tmp_path, options, message):
    path = write_jsonl(tmp_path / "rows.jsonl", rows_with_splits())
    with pytest.raises(DataError, match=message):
        load_rows(path, **options)


def test_a_bad_start_or_end_cell_names_the_row(tmp_path):
    rows = [{"text": TWICE, "label": "a", "from": 4, "to": 8}, {"text": TWICE, "label": "b", "from": "x", "to": 8}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError, match=r"row 2, field 'from / to': a span offset must be a whole number"):
        load_rows(path, span_start_field="from", span_end_field="to")


def test_an_option_the_dataset_does_not_take_is_refused_with_the_ones_it_does(tmp_path):
    config = validate({"model": "m", "dataset": {"name": "mole", "path": "x.jsonl"}})
    with pytest.raises(ConfigError, match="dataset 'mole' has no option 'path'; it takes no options"):
        load_dataset(config)
    config = validate({"model": "m", "dataset": {"name": "file", "path": "x.jsonl", "span": "s"}})
    with pytest.raises(ConfigError, match="dataset 'file' has no option 'span'; it takes path, text_field"):
        load_dataset(config)
