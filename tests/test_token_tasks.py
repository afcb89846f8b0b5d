"""Token tasks: tagged sentences from CoNLL-U or JSONL become one row per word (grouped by sentence), their
vectors come from one forward per sentence, folds keep sentences whole, and the control task gives each
word type one tag."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
import torch
from safetensors import safe_open
from conftest import shared_folder
from tiny_gpt2 import build_tiny_gpt2, build_tokenizer, corpus

from probe.pipeline.data import DataError
from probe.pipeline.extract import extract
from probe.pipeline.words import (
    drop_words_without_tokens,
    load_tagged,
    sentence_text,
)
from probe.science import control_tasks

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


def conllu_line(index, form, upos="NOUN", xpos="NN", deprel="dep"):
    return "\t".join([str(index), form, "_", upos, xpos, "_", "0", deprel, "_", "_"])


GOOD_CONLLU = "\n".join([
    "# newdoc id = d1",
    "# sent_id = a",
    "# text = The mole dug.",
    conllu_line(1, "The", "DET", "DT", "det"),
    conllu_line(2, "mole", "NOUN", "NN", "nsubj"),
    conllu_line(3, "dug", "VERB", "VBD", "root"),
    conllu_line(4, ".", "PUNCT", ".", "punct"),
    "",
    "# sent_id = b",
    "# text = It isn't here",  # "isn't" is a multiword token: its range line is skipped, its words kept
    conllu_line(1, "It", "PRON", "PRP", "nsubj"),
    "2-3\tisn't\t_\t_\t_\t_\t_\t_\t_\t_",
    conllu_line(2, "is", "AUX", "VBZ", "cop"),
    conllu_line(3, "n't", "PART", "RB", "advmod"),
    conllu_line(4, "here", "ADV", "RB", "root"),
    "4.1\tgone\t_\tVERB\t_\t_\t_\t_\t_\t_",  # an empty node: not a word
    "",
    "# text = a line whose words are not these",  # no sent_id; the text does not hold the words
    conllu_line(1, "Moles", "NOUN", "NNS", "root"),
    conllu_line(2, "dig", "VERB", "VBP", "root"),
    "",
])


def write(folder, name, text):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- reading CoNLL-U


def test_conllu_rows_are_words_grouped_by_sentence(tmp_path):
    rows = load_tagged(str(write(tmp_path, "good.conllu", GOOD_CONLLU))).to_list()
    assert [row["target"] for row in rows] == ["The", "mole", "dug", ".", "It", "is", "n't", "here", "Moles", "dig"]
    assert [row["label"] for row in rows] == ["DET", "NOUN", "VERB", "PUNCT", "PRON", "AUX", "PART", "ADV",
                                              "NOUN", "VERB"]
    assert [row["group"] for row in rows] == ["a"] * 4 + ["b"] * 4 + ["sentence-3"] * 2
    assert [row["word_index"] for row in rows] == [1, 2, 3, 4, 1, 2, 3, 4, 1, 2]
    assert [row["line"] for row in rows[:5]] == [4, 5, 6, 7, 11]
    # The file's own text where the words are found in it in order, else the words joined by spaces.
    assert rows[0]["text"] == "The mole dug." and rows[4]["text"] == "It isn't here"
    assert rows[8]["text"] == "Moles dig"
    for row in rows:
        assert row["text"][row["span_start"]:row["span_end"]] == row["target"]


@pytest.mark.parametrize("column, expected", [("xpos", ["DT", "NN", "VBD", "."]),
                                              ("deprel", ["det", "nsubj", "root", "punct"])])
def test_the_tag_column_is_chosen_in_the_options(tmp_path, column, expected):
    rows = load_tagged(str(write(tmp_path, "good.conllu", GOOD_CONLLU)), column=column)
    assert rows["label"][:4] == expected


@pytest.mark.parametrize("lines, message", [
    ([conllu_line(1, "The"), "2\tmole\t_\tNOUN"], r"bad\.conllu, line 2, field 'columns': 4 tab-separated "
                                                   r"column\(s\), a word line has 10"),
    ([conllu_line(1, "The"), conllu_line(2, " ")], r"bad\.conllu, line 2, field 'FORM': the word is empty"),
    ([conllu_line(1, "The", upos="_")], r"bad\.conllu, line 1, field 'UPOS': word 'The' has no tag"),
    (["# sent_id = s", conllu_line(1, "A"), "", "# sent_id = s", conllu_line(1, "B")],
     r"bad\.conllu, line 5, field 'sent_id': sentence id 's' was already used by the sentence on line 2"),
    (["# only a comment"], r"bad\.conllu: no sentences"),
])
def test_a_bad_conllu_file_names_its_line(tmp_path, lines, message):
    path = write(tmp_path, "bad.conllu", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        load_tagged(str(path))


def test_a_tag_column_conllu_lacks_is_refused(tmp_path):
    path = write(tmp_path, "good.conllu", GOOD_CONLLU)
    with pytest.raises(DataError, match=r"column='lemma' is not a CoNLL-U tag column; use one of upos, xpos, deprel"):
        load_tagged(str(path), column="lemma")


# ---------------------------------------------------------------- reading JSONL


def test_jsonl_rows_take_their_text_and_id(tmp_path):
    lines = [{"id": "x", "tokens": ["A", "mole", "dug"], "tags": ["DET", "NOUN", "VERB"], "text": "A mole dug"},
             {"words": ["Moles", "dig"], "pos": ["NOUN", "VERB"]}]
    path = write(tmp_path, "rows.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataError, match=r"rows\.jsonl, line 2, field 'tokens': must be a non-empty list, got None"):
        load_tagged(str(path))
    path = write(tmp_path, "rows.jsonl", json.dumps({"words": ["Moles", "dig"], "pos": ["NOUN", "VERB"]}) + "\n")
    rows = load_tagged(str(path), tokens_field="words", tags_field="pos")
    assert rows["group"] == ["line-1", "line-1"] and rows["text"][0] == "Moles dig"


@pytest.mark.parametrize("row, message", [
    ({"tokens": ["a", "b"], "tags": ["X"]}, r"line 1, field 'tags': 1 tag\(s\) for 2 word\(s\)"),
    ({"tokens": ["a", " "], "tags": ["X", "Y"]}, r"line 1, field 'tokens': word 2 is empty or not text"),
    ({"tokens": [], "tags": []}, r"line 1, field 'tokens': must be a non-empty list, got \[\]"),
    ({"tokens": ["a"], "tags": [None]}, r"line 1, field 'tags': tag 1 is empty or not text"),
])
def test_a_bad_jsonl_row_names_its_line_and_field(tmp_path, row, message):
    path = write(tmp_path, "bad.jsonl", json.dumps(row) + "\n")
    with pytest.raises(DataError, match=message):
        load_tagged(str(path))


def test_a_file_of_another_kind_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"a tagged dataset is a \.conllu or \.jsonl file, not '\.csv'"):
        load_tagged(str(write(tmp_path, "rows.csv", "tokens,tags\n")))


def test_a_text_without_the_words_in_order_falls_back_to_spaces():
    assert sentence_text(["b", "a"], "a b") == ("b a", [(0, 1), (2, 3)])
    assert sentence_text(["a", "b"], "a, b!") == ("a, b!", [(0, 1), (3, 4)])


# ---------------------------------------------------------------- vectors


TAGGED = [(["The", "mole", "dug", "a", "tunnel", "."], "The mole dug a tunnel."),
          (["A", "mole", "of", "gas"], None),
          (["She", "removed", "the", "mole", "from", "her", "arm", "."], "She removed the mole from her arm."),
          (["Moles", "dig"], None),
          (["The", "spy", "was", "a", "mole", "."], "The spy was a mole.")]


@pytest.fixture(scope="module")
def word_rows_of_sentences():
    """(texts, spans, sentence of each row) of TAGGED's words."""
    texts, spans, sentence = [], [], []
    for number, (words, given) in enumerate(TAGGED):
        text, word_spans = sentence_text(words, given)
        texts += [text] * len(words)
        spans += word_spans
        sentence += [number] * len(words)
    return texts, spans, sentence


@pytest.fixture(scope="module")
def tokenizers():
    """A BERT-style tokenizer ([CLS] … [SEP], ## word pieces) and a byte-level BPE one, trained here, small
    enough to split words into pieces."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    backend = BertWordPieceTokenizer(lowercase=True)
    backend.train_from_iterator(corpus(), vocab_size=120, min_frequency=1)
    wordpiece = PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                        pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]")
    return {"bert": wordpiece, "gpt2": build_tokenizer(corpus())}


def _model(family: str, vocab_size: int):
    from transformers import BertConfig, BertModel, GPT2Config, GPT2Model

    torch.manual_seed(0)
    if family == "bert":
        config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
        return BertModel(config).eval()
    config = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                        attn_implementation="eager")
    return GPT2Model(config).eval()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
@pytest.mark.parametrize("pooling", ["mean", "first"])
def test_every_word_vector_is_its_pooled_subwords_from_one_forward_per_sentence(family, pooling, tmp_path,
                                                                               tokenizers, word_rows_of_sentences):
    texts, spans, sentence = word_rows_of_sentences
    tokenizer = tokenizers[family]
    model = _model(family, len(tokenizer))
    forwarded = []
    real_forward = model.forward

    def counting_forward(*args, **kwargs):
        forwarded.append(kwargs["input_ids"].shape[0])  # sentences in this forward
        return real_forward(*args, **kwargs)

    model.forward = counting_forward
    store = extract(lambda: (model, tokenizer), texts, spans, layers=[0, 1, 2], folder=tmp_path / "features",
                    pooling=pooling, positions=["target", "mean"], batch_size=2, progress=False)
    assert sum(forwarded) == len(TAGGED) and len(forwarded) == 3  # one forward per sentence, 2 sentences a batch
    forwarded.clear()
    small_chunks = extract(lambda: (model, tokenizer), texts, spans, layers=[1], folder=tmp_path / "chunks",
                           pooling=pooling, positions=["target"], batch_size=2, chunk_rows=5, progress=False)
    assert sum(forwarded) == len(TAGGED)  # chunks of 5 rows end at a sentence's end: none is run twice
    sentences_per_chunk = []
    for path in small_chunks.chunks():
        with safe_open(path, framework="pt") as chunk:
            sentences_per_chunk.append({sentence[row] for row in chunk.get_tensor("rows").tolist()})
    assert len(sentences_per_chunk) > 1 and sum(map(len, sentences_per_chunk)) == len(TAGGED)
    np.testing.assert_allclose(small_chunks.layer("target", 1), store.layer("target", 1), rtol=0, atol=1e-5)
    by_hand = {layer: np.empty_like(store.layer("target", layer)) for layer in (0, 1, 2)}
    split_words = 0
    forwards = {}
    for text in dict.fromkeys(texts):  # each sentence alone, unpadded
        encoding = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
        offsets = encoding.pop("offset_mapping")[0].tolist()
        with torch.no_grad():
            forwards[text] = offsets, real_forward(**encoding, output_hidden_states=True).hidden_states
    for row, (text, (start, end)) in enumerate(zip(texts, spans)):
        offsets, hidden_states = forwards[text]
        pieces = [i for i, (a, b) in enumerate(offsets) if text[max(a, start):min(b, end)].strip()]
        split_words += len(pieces) > 1
        for layer in by_hand:
            vectors = hidden_states[layer][0, pieces]
            by_hand[layer][row] = (vectors.mean(0) if pooling == "mean" else vectors[0]).numpy()
    for layer, expected in by_hand.items():
        np.testing.assert_allclose(store.layer("target", layer), expected, rtol=0, atol=2e-5)
        # Another position of the same forwards: each row reads its own sentence's tokens, not a batch-mate's.
        sentence_means = np.stack([forwards[text][1][layer][0].mean(0).numpy() for text in texts])
        np.testing.assert_allclose(store.layer("mean", layer), sentence_means, rtol=0, atol=2e-5)
    assert split_words > 0  # some words are several pieces, so pooling is tested


def test_rows_of_one_text_stay_in_one_batch_whatever_their_cut_lengths(tokenizers, word_rows_of_sentences):
    from probe.pipeline.extract import extraction_batches, length_sorted

    texts, spans, sentence = word_rows_of_sentences
    order, lengths = length_sorted(tokenizers["gpt2"], texts, spans, cut=True)  # each word cut after itself
    assert len(set(lengths)) > len(TAGGED)
    batches = extraction_batches(order, 2, chunk_rows=256, texts=texts)
    assert [len({texts[row] for row in batch}) for batch in batches] == [2, 2, 1]
    assert sorted(row for batch in batches for row in batch) == list(range(len(texts)))
    longest = [max(length for length, text in zip(lengths, texts) if text == texts[batch[0]]) for batch in batches]
    assert longest == sorted(longest, reverse=True)  # sentences longest first, as distinct texts would be
    distinct = list(dict.fromkeys(texts))
    alone = extraction_batches(list(range(len(distinct))), 2, texts=distinct)
    assert alone == extraction_batches(list(range(len(distinct))), 2)  # distinct texts batch as before


def test_a_cache_is_complete_with_the_chunks_its_marker_records(tmp_path):
    from probe.pipeline.extract import is_complete

    for n in range(2):
        (tmp_path / f"chunk-{n:05d}.safetensors").touch()
    marker = tmp_path / "complete.json"
    marker.write_text(json.dumps({"rows": 10, "layers": [1]}))  # a cache from before: a chunk per 5 rows
    assert is_complete(tmp_path, 10, chunk_rows=5) and not is_complete(tmp_path, 11, chunk_rows=5)
    marker.write_text(json.dumps({"rows": 10, "layers": [1], "chunks": 3}))  # chunks cut at sentence ends
    assert not is_complete(tmp_path, 10, chunk_rows=5)
    (tmp_path / "chunk-00002.safetensors").touch()
    assert is_complete(tmp_path, 10, chunk_rows=5)
    for damaged in ("{", "[]", '{"chunks": "3"}'):
        marker.write_text(damaged)
        assert not is_complete(tmp_path, 10, chunk_rows=5)


# ---------------------------------------------------------------- words without a token


def test_a_word_the_tokenizer_drops_is_named_with_its_line(tmp_path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "mole": 2}, unk_token="[UNK]"))
    backend.normalizer = normalizers.Replace("§", "")  # this tokenizer drops "§": the word has no token
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    path = write(tmp_path, "t.conllu", "\n".join([conllu_line(1, "a"), conllu_line(2, "§"), conllu_line(3, "mole")]))
    rows = load_tagged(str(path))
    with pytest.raises(DataError, match=r"t\.conllu, line 2, field 'tokens': word 2 \('§'\) of sentence "
                                        r"'sentence-1' maps to no token"):
        drop_words_without_tokens(rows, [1, 2, 3], tokenizer, "raise", str(path))
    kept, numbers, problems = drop_words_without_tokens(rows, [1, 2, 3], tokenizer, "skip", str(path))
    assert kept["target"] == ["a", "mole"] and numbers == [1, 3] and len(problems) == 1


# ---------------------------------------------------------------- folds and the control task


def test_folds_never_split_a_sentence():
    from probe.builtin.datasets import DATA
    from probe.pipeline.config import validate
    from probe.pipeline.data import prepare
    from probe.pipeline.run import make_splits

    rows, _ = prepare(load_tagged(str(DATA / "pos.conllu")), source="pos", n_folds=5)
    config = validate({"model": "gpt2", "dataset": "pos", "controls": ["shuffled"]})
    (split,) = make_splits(rows, config)
    groups = np.asarray(rows["group"])
    for folds in (split.folds, split.shuffled_folds):
        assert len(folds) == 5
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])
        assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(len(rows)))


def test_the_empirical_control_task_gives_each_word_type_one_tag_drawn_by_frequency():
    words = ["the", "The", "mole", "dug", "a", "tunnel", "moles", "dig"] * 5 + [f"w{i}" for i in range(200)]
    tags = (["DET", "DET", "NOUN", "VERB", "DET", "NOUN", "NOUN", "VERB"] * 5 + ["NOUN"] * 150 + ["ADV"] * 50)
    control = control_tasks.control_labels(words, tags, seed=0, draw="empirical")
    by_type = defaultdict(set)
    for word, tag in zip(words, control):
        by_type[word.casefold()].add(tag)
    assert all(len(assigned) == 1 for assigned in by_type.values())  # one tag per word type, "The" is "the"
    drawn = [next(iter(assigned)) for assigned in by_type.values()]
    assert drawn.count("NOUN") > drawn.count("ADV") > drawn.count("VERB")  # 165 : 50 : 10 among the rows
    assert list(control) == list(control_tasks.control_labels(words, tags, seed=0, draw="empirical"))
    assert list(control) != list(control_tasks.control_labels(words, tags, seed=1, draw="empirical"))
    with pytest.raises(ValueError, match="draw must be one of balanced, empirical, got 'uniform'"):
        control_tasks.control_labels(words, tags, seed=0, draw="uniform")


def test_the_control_draw_is_empirical_for_words_unless_the_options_say_otherwise(tmp_path):
    from types import SimpleNamespace

    from probe.builtin.datasets import DATA
    from probe.pipeline.config import ConfigError, validate
    from probe.pipeline.controls import control_draw
    from probe.pipeline.data import load_rows

    words = SimpleNamespace(table=load_tagged(str(DATA / "pos.conllu")))
    senses = SimpleNamespace(table=load_rows(DATA / "mole.jsonl"))

    def config(**options):
        return validate({"model": "gpt2", "dataset": "pos", "options": options}, source="pos.yaml")

    assert control_draw(config(), words) == "empirical" and control_draw(config(), senses) == "balanced"
    assert control_draw(config(control_task={"draw": "balanced"}), words) == "balanced"
    with pytest.raises(ConfigError, match=r"pos\.yaml: options\.control_task\.draw is 'uniform'; accepted: "
                                          "balanced, empirical"):
        control_draw(config(control_task={"draw": "uniform"}), words)


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """test_experiment's tiny GPT-2 (the same shared folder: built once per session)."""
    folder = shared_folder(tmp_path_factory, "tiny-gpt2-n2-d32-s1",
                           lambda f: build_tiny_gpt2(f / "model", n_layer=2, n_embd=32, seed=1))
    return folder / "model"


def test_a_pos_experiment_runs_end_to_end_with_the_control_task(tiny_model, tmp_path):
    from probe.pipeline.config import validate
    from probe.pipeline.run import run_experiment

    config = validate({"model": str(tiny_model), "dataset": "pos", "layers": [0, 2], "folds": 3,
                       "controls": ["majority", "shuffled", "control_task"], "reporters": ["json", "csv", "summary"]})
    results = run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False, n_jobs=1)
    assert results.dataset.rows == 610 and len(set(results.dataset.groups)) == 71
    assert {"NOUN", "VERB", "DET", "PUNCT"} <= set(results.dataset.labels)
    for row in results.rows:
        low, high = row.accuracy_ci
        assert low <= row.accuracy <= high
        assert row.control_task_selectivity == pytest.approx(row.accuracy - row.control_task_accuracy)
        low, high = row.control_task_selectivity_ci
        assert low < row.control_task_selectivity < high
    assert min(row.accuracy for row in results.rows) > results.baselines["majority"].accuracy
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["evaluation"]["splitter"] == "StratifiedGroupKFold"
    assert "selectivity (ctrl) 95% CI" in (tmp_path / "out" / "summary.md").read_text()
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert {"control_task_selectivity_ci_low", "control_task_selectivity_ci_high"} <= set(header)


def test_the_selectivity_interval_pairs_each_rows_two_results():
    from probe.pipeline.statistics import difference_interval

    assert difference_interval("1111", "0000", None, seed=0) == [1.0, 1.0]
    assert difference_interval("1.10", "0.10", [0, 1, 1, 2], seed=0) == pytest.approx([0.0, 1.0])
    low, high = difference_interval("1" * 30 + "0" * 10, "1" * 20 + "0" * 20, list(range(40)), seed=0)
    assert low < 0.25 < high and low > 0  # the difference (0.25) has an interval above zero
    with pytest.raises(ValueError, match="scored on different rows"):
        difference_interval("1.", ".1", None, seed=0)
