"""probe.pipeline.data: loading sense-labelled rows, validating them, aligning targets to tokens, pooling."""

from __future__ import annotations

import csv
import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, PreTrainedTokenizerFast

from probe.pipeline.data import (
    COLUMNS,
    DataError,
    Problem,
    last_token_index,
    load_rows,
    pool,
    prepare,
    target_token_indices,
)

# ---------------------------------------------------------------- helpers and fixtures

# Two senses, three rows each: enough for n_folds=3.
GOOD_ROWS = [
    {"text": "The mole dug a tunnel under the lawn.", "target": "mole", "label": "animal"},
    {"text": "A mole burrowed through the garden.", "target": "mole", "label": "animal"},
    {"text": "The gardener trapped the mole at dawn.", "target": "mole", "label": "animal"},
    {"text": "One mole of carbon weighs twelve grams.", "target": "mole", "label": "unit"},
    {"text": "Add a mole of salt to the solution.", "target": "mole", "label": "unit"},
    {"text": "Mole fractions sum to one.", "target": "Mole", "label": "unit"},
]


def write_rows(path, rows):
    """Write rows as JSONL, JSON, CSV or Parquet, chosen by the file suffix."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    return path


def load_prepared(tmp_path, rows, *, n_folds=3, on_error="raise", **fields):
    """Write rows to JSONL, load and prepare them."""
    path = write_rows(tmp_path / "rows.jsonl", rows)
    return prepare(load_rows(path, **fields), source=str(path), n_folds=n_folds, on_error=on_error)


def renamed(rows):
    """The rows with user-style field names."""
    return [{"sentence": r["text"], "word": r["target"], "sense": r["label"]} for r in rows]


# ---------------------------------------------------------------- load_rows


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_each_file_format_loads_with_field_renames(tmp_path, suffix):
    path = write_rows(tmp_path / f"rows{suffix}", renamed(GOOD_ROWS))
    ds = load_rows(path, text_field="sentence", target_field="word", label_field="sense")
    assert ds.column_names == list(COLUMNS)
    assert ds["text"] == [r["text"] for r in GOOD_ROWS]
    assert ds["target"] == [r["target"] for r in GOOD_ROWS]
    assert ds["label"] == [r["label"] for r in GOOD_ROWS]
    assert ds["cue"] == [None] * len(GOOD_ROWS)
    assert ds["group"] == [None] * len(GOOD_ROWS)


def test_integer_labels_and_groups_become_strings(tmp_path):
    rows = [dict(row, label=i % 2, group=i // 2) for i, row in enumerate(GOOD_ROWS)]
    ds = load_rows(write_rows(tmp_path / "rows.jsonl", rows))
    assert ds["label"] == ["0", "1", "0", "1", "0", "1"]
    assert ds["group"] == ["0", "0", "1", "1", "2", "2"]


def test_cue_and_group_columns_are_kept(tmp_path):
    rows = [dict(row, cue="left", group="t1") for row in GOOD_ROWS]
    ds = load_rows(write_rows(tmp_path / "rows.csv", rows))
    assert set(ds["cue"]) == {"left"} and set(ds["group"]) == {"t1"}


def test_missing_field_names_the_field_the_file_and_the_columns(tmp_path):
    path = write_rows(tmp_path / "rows.jsonl", renamed(GOOD_ROWS))
    with pytest.raises(DataError) as error:
        load_rows(path, text_field="sentence", label_field="meaning", target_field="word")
    message = str(error.value)
    assert "'meaning'" in message and str(path) in message
    assert "'sentence'" in message and "'sense'" in message  # the columns that do exist


def test_unsupported_file_type_is_a_data_error(tmp_path):
    path = tmp_path / "rows.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_rows(path)


def test_missing_file_is_a_data_error_naming_where_it_looked(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="no such file"):
        load_rows(tmp_path / "absent.jsonl")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=f"absent.jsonl: no such file \\(looked for {tmp_path}/absent.jsonl\\)"):
        load_rows("absent.jsonl")


# ---------------------------------------------------------------- prepare: spans


def test_prepare_computes_spans(tmp_path):
    ds, problems = load_prepared(tmp_path, GOOD_ROWS)
    assert problems == []
    for row in ds:
        assert row["text"][row["span_start"] : row["span_end"]] == row["target"]


def test_span_picks_one_of_two_occurrences(tmp_path):
    text = "The mole saw another mole in the garden."
    second = text.rindex("mole")
    rows = [dict(row, span=None) for row in GOOD_ROWS]
    rows.append({"text": text, "target": "mole", "label": "animal", "span": [second, second + 4]})
    ds, _ = load_prepared(tmp_path, rows, span_field="span")
    assert (ds[-1]["span_start"], ds[-1]["span_end"]) == (second, second + 4)
    assert ds[-1]["target"] == "mole"


def test_span_without_target_column_reads_the_target_off_the_text(tmp_path):
    rows = [{"text": r["text"], "label": r["label"], "span": list(_find(r["text"], r["target"]))} for r in GOOD_ROWS]
    ds, _ = load_prepared(tmp_path, rows, span_field="span")
    assert ds["target"] == [r["target"] for r in GOOD_ROWS]


def test_span_stored_as_text_in_csv(tmp_path):
    rows = [dict(row, span=json.dumps(list(_find(row["text"], row["target"])))) for row in GOOD_ROWS]
    path = write_rows(tmp_path / "rows.csv", rows)
    ds, _ = prepare(load_rows(path, span_field="span"), source=str(path), n_folds=3)
    assert ds["span_start"] == [_find(r["text"], r["target"])[0] for r in GOOD_ROWS]


def test_malformed_span_names_file_row_and_value(tmp_path):
    rows = [dict(row, span=None) for row in GOOD_ROWS]
    rows[1]["span"] = "four to eight"
    path = write_rows(tmp_path / "rows.csv", rows)
    with pytest.raises(DataError) as error:
        load_rows(path, span_field="span")
    assert str(path) in str(error.value) and "row 2" in str(error.value) and "four to eight" in str(error.value)


def _find(text, word):
    start = text.index(word)
    return start, start + len(word)


# ---------------------------------------------------------------- prepare: validation


BAD_ROWS = {
    "empty text": ({"text": "   ", "target": "mole", "label": "animal"}, "text", "'   '"),
    "target not found": ({"text": "The vole dug a hole.", "target": "mole", "label": "animal"}, "target", "'mole'"),
    "target only inside a longer word": (
        {"text": "The moles dug a hole.", "target": "mole", "label": "animal"},
        "target",
        "The moles dug",
    ),
    "target twice without a span": (
        {"text": "A mole met a mole.", "target": "mole", "label": "animal"},
        "target",
        "span",
    ),
    "bad cue": ({"text": "The mole dug.", "target": "mole", "label": "animal", "cue": "above"}, "cue", "'above'"),
    "span disagrees with target": (
        {"text": "The mole dug.", "target": "mole", "label": "animal", "span": [0, 3]},
        "target",
        "'The'",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_each_row_problem_names_file_row_and_value(tmp_path, case):
    bad_row, field, value = BAD_ROWS[case]
    rows = [dict(row, span=None) for row in GOOD_ROWS]
    rows.insert(1, dict({"span": None}, **bad_row))  # row 2 of the file
    path = write_rows(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as error:
        prepare(load_rows(path, span_field="span"), source=str(path), n_folds=3)
    message = str(error.value)
    assert str(path) in message and "row 2" in message and value in message
    assert [(p.row, p.field) for p in error.value.problems] == [(2, field)]


def test_raise_lists_every_problem_not_just_the_first(tmp_path):
    rows = list(GOOD_ROWS) + [BAD_ROWS["empty text"][0], BAD_ROWS["bad cue"][0]]
    with pytest.raises(DataError) as error:
        load_prepared(tmp_path, rows)
    assert [p.row for p in error.value.problems] == [7, 8]
    assert "row 7" in str(error.value) and "row 8" in str(error.value)


def test_target_in_different_case_gets_a_hint(tmp_path):
    rows = list(GOOD_ROWS) + [{"text": "Mole traps work.", "target": "mole", "label": "animal"}]
    with pytest.raises(DataError, match="different case"):
        load_prepared(tmp_path, rows)


def test_label_with_fewer_rows_than_folds(tmp_path):
    with pytest.raises(DataError, match=r"label 'unit' has 3 row\(s\), fewer than n_folds=4"):
        load_prepared(tmp_path, GOOD_ROWS, n_folds=4, on_error="skip")


def test_single_label_is_an_error(tmp_path):
    rows = [dict(row, label="animal") for row in GOOD_ROWS]
    with pytest.raises(DataError, match="need at least 2 labels"):
        load_prepared(tmp_path, rows)


def test_skip_drops_bad_rows_and_reports_them(tmp_path):
    rows = list(GOOD_ROWS)
    rows.insert(0, BAD_ROWS["bad cue"][0])
    rows.insert(4, BAD_ROWS["target not found"][0])
    ds, problems = load_prepared(tmp_path, rows, on_error="skip")
    assert ds["text"] == [r["text"] for r in GOOD_ROWS]
    assert [(p.row, p.field) for p in problems] == [(1, "cue"), (5, "target")]
    assert all(isinstance(p, Problem) and p.source.endswith("rows.jsonl") for p in problems)


def test_skip_rechecks_labels_after_dropping_rows(tmp_path):
    rows = list(GOOD_ROWS)
    rows[3] = dict(rows[3], cue="nowhere")  # leaves 'unit' with 2 rows < 3 folds
    with pytest.raises(DataError, match=r"label 'unit' has 2 row\(s\)"):
        load_prepared(tmp_path, rows, on_error="skip")


# ---------------------------------------------------------------- token alignment

# Sentences to train a tiny byte-level BPE on; "mole" is frequent enough to become one token.
BPE_CORPUS = [
    "The mole dug a tunnel under the garden.",
    "A mole of carbon weighs twelve grams.",
    "The doctor removed a mole from her arm.",
    "The mole in the agency leaked secrets.",
    "Mole sauce is made with chocolate.",
] * 10


def byte_level_bpe(trim_offsets: bool) -> PreTrainedTokenizerFast:
    """A GPT-2-style tokenizer (byte-level BPE, no prefix space) trained on BPE_CORPUS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=trim_offsets)
    trainer = trainers.BpeTrainer(
        vocab_size=350,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer.train_from_iterator(BPE_CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")


@pytest.fixture(scope="module", params=[False, True], ids=["untrimmed_offsets", "trimmed_offsets"])
def bpe(request):
    return byte_level_bpe(trim_offsets=request.param)


def aligned_words(tokenizer, texts, spans):
    """Decode the tokens aligned to each span back to text (spaces stripped)."""
    indices = target_token_indices(tokenizer, texts, spans)
    ids = tokenizer(list(texts))["input_ids"]
    return indices, [tokenizer.decode([ids[i][j] for j in row]).strip() for i, row in enumerate(indices)]


@pytest.mark.parametrize(
    "text, target",
    [
        ("The mole dug a tunnel.", "mole"),  # one token with a folded-in leading space
        ("Mole sauce is made with chocolate.", "Mole"),  # sentence start: no leading space
        ("She bought a Moleskine notebook.", "Moleskine"),  # not in the corpus: several subwords
        ("A spectrogram of the mole.", "spectrogram"),
    ],
)
def test_byte_level_bpe_alignment_decodes_to_the_target(bpe, text, target):
    _, words = aligned_words(bpe, [text], [_find(text, target)])
    assert words == [target]


def test_byte_level_bpe_splits_an_unseen_word_into_several_tokens(bpe):
    text = "She bought a Moleskine notebook."
    indices = target_token_indices(bpe, [text], [_find(text, "Moleskine")])
    assert len(indices[0]) > 1 and indices[0] == list(range(indices[0][0], indices[0][-1] + 1))


def test_byte_level_bpe_explicit_span_picks_the_second_occurrence(bpe):
    text = "The mole saw another mole."
    first, second = _find(text, "mole"), (text.rindex("mole"), text.rindex("mole") + 4)
    indices, words = aligned_words(bpe, [text, text], [first, second])
    assert words == ["mole", "mole"]
    assert indices[0][0] < indices[1][0]


WORDS = ["the", "mole", "dug", "a", "tunnel", "spectroscopy", "Moleskine", "grams", "zyx", "agency"]


@settings(max_examples=40, deadline=None)
@given(sentence=st.lists(st.sampled_from(WORDS), min_size=1, max_size=8), data=st.data())
def test_byte_level_bpe_alignment_property(sentence, data):
    tokenizer = _cached_bpe()
    position = data.draw(st.integers(0, len(sentence) - 1))
    start = sum(len(word) + 1 for word in sentence[:position])
    text = " ".join(sentence) + "."
    _, words = aligned_words(tokenizer, [text], [(start, start + len(sentence[position]))])
    assert words == [sentence[position]]


_BPE_CACHE: dict[str, PreTrainedTokenizerFast] = {}


def _cached_bpe() -> PreTrainedTokenizerFast:
    """One untrimmed BPE for the property test (hypothesis can't use function-scoped fixtures)."""
    if "bpe" not in _BPE_CACHE:
        _BPE_CACHE["bpe"] = byte_level_bpe(trim_offsets=False)
    return _BPE_CACHE["bpe"]


@pytest.fixture(scope="module")
def wordpiece():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "dug", "of", "gas", ".", "mo", "##le", "mole"]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)


def test_wordpiece_alignment_skips_special_tokens_and_joins_subwords(wordpiece):
    texts = ["The mole dug.", "a mole of gas", "the mole dug."]
    spans = [_find(text, "mole") for text in texts]
    indices, words = aligned_words(wordpiece, texts, spans)
    assert words == ["mole", "mole", "mole"]
    assert all(0 not in row for row in indices)  # [CLS] sits at 0


def test_wordpiece_word_in_several_pieces():
    text = "the mole dug."
    # Without "mole" in the vocabulary WordPiece must use "mo ##le".
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "dug", ".", "mo", "##le"]
    split = BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    indices, words = aligned_words(split, [text], [_find(text, "mole")])
    assert indices == [[2, 3]] and words == ["mole"]


def test_slow_tokenizer_is_refused():
    class SlowTokenizer:
        is_fast = False

    with pytest.raises(TypeError, match="slow tokenizer"):
        target_token_indices(SlowTokenizer(), ["a mole"], [(2, 6)])


def test_span_covering_no_token_is_an_error(bpe):
    with pytest.raises(ValueError, match="no token covers"):
        target_token_indices(bpe, ["a mole"], [(1, 2)])  # just the space


# ---------------------------------------------------------------- pooling


@pytest.mark.parametrize("make", [np.asarray, torch.tensor], ids=["numpy", "torch"])
def test_pool_first_last_mean(make):
    vectors = make([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    assert pool(vectors, "first").tolist() == [1.0, 2.0]
    assert pool(vectors, "last").tolist() == [5.0, 9.0]
    assert pool(vectors, "mean").tolist() == [3.0, 5.0]
    assert type(pool(vectors, "mean")) is type(vectors)


def test_pool_over_layers_keeps_the_leading_axes():
    vectors = np.arange(13 * 3 * 4, dtype=np.float32).reshape(13, 3, 4)  # (layers, subwords, d)
    assert pool(vectors, "mean").shape == (13, 4)
    np.testing.assert_array_equal(pool(vectors, "first"), vectors[:, 0])


def test_pool_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'first', 'last' or 'mean'"):
        pool(np.zeros((2, 3)), "max")


@pytest.mark.parametrize(
    "mask, expected",
    [([1, 1, 1, 0, 0], 2), ([0, 0, 1, 1, 1], 4), (torch.tensor([1, 1, 0]), 1)],
    ids=["right_padded", "left_padded", "torch"],
)
def test_last_token_index(mask, expected):
    assert last_token_index(mask) == expected
