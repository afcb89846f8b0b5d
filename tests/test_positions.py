"""Positions (probe/pipeline/positions.py): the config's spellings and their messages, the token each
picks in a BERT-like and a GPT-2-like model (checked against the model's own hidden_states), the causal
cut kept only where it is valid, cache keys per position set, and sentence-level rows without a target."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from probe.core.architectures import ARCHITECTURES
from probe.pipeline.config import ConfigError, validate
from probe.pipeline.data import DataError
from probe.pipeline.extract import extract
from probe.pipeline.run import run_experiment
from tests.test_experiment import config_for, feature_folders, tiny_model  # noqa: F401 (fixture)

TEXTS = ["The mole dug a long tunnel under the garden wall .",
         "A mole of gas fills the flask .",
         "She found the mole in the ministry after years of work ."]
SPANS = [(text.index("mole"), text.index("mole") + 4) for text in TEXTS]
# Another span per row, given by two columns: the sentence's second word.
SECOND = [(len(text.split()[0]) + 1, len(text.split()[0]) + 1 + len(text.split()[1])) for text in TEXTS]
EVERY = ["target", "first", "last", "mean", {"index": -2}, {"index": 1}, {"span": ["w_start", "w_end"]}]


# ---------------------------------------------------------------- config


def _positions(value):
    return validate({"model": "gpt2", "dataset": "mole", "positions": value}).positions


def test_every_spelling_becomes_one_name_safe_in_a_file_name():
    assert _positions(EVERY) == ["target", "first", "last", "mean", "index-2", "index1", "span-w_start-w_end"]
    assert _positions(["cls", "first"]) == ["first"]  # one token, one name
    assert _positions("mean") == ["mean"]
    assert _positions({"index": -2}) == ["index-2"]
    assert _positions(["index-2", "span-a-b"]) == ["index-2", "span-a-b"]  # results.json's names read back


@pytest.mark.parametrize("value, expected", [
    (["fist"], r"field 'positions' has a bad entry: 'fist' is not a position \(did you mean 'first'\?\); accepted values: "),
    (["indx"], r"'indx' is not a position \(did you mean \{index: …\}\?\)"),
    ([{"index": 1.5}], r"field 'positions' .*\{index: N\} needs a whole number N .* got 1\.5"),
    ([{"index": True}], r"needs a whole number N"),
    ([{"index": 1, "span": ["a", "b"]}], r"is not a position; accepted values: target, first, last, mean, cls"),
    ([{"span": ["start"]}], r"needs the names of two columns"),
    ([{"span": ["a b", "c"]}], r"span column 'a b' must be letters, digits and _ only"),
    ([], r"needs at least one of target"),
    (["every"], r"'every' is not a position: tagged data .* already gives one row per word"),
])
def test_bad_positions_are_named_with_what_to_write(value, expected):
    with pytest.raises(ConfigError, match=expected):
        _positions(value)


def test_a_window_around_the_target_refuses_positions_it_would_move():
    with pytest.raises(ConfigError, match=r"'long_texts' is window, .* would move what position\(s\) mean read"):
        validate({"model": "gpt2", "dataset": "mole", "positions": ["target", "mean"], "long_texts": "window"})
    with pytest.raises(ConfigError, match=r"needs positions: \[target\]"):
        validate({"model": "gpt2", "dataset": "mole", "positions": ["last"], "long_texts": "window"})


# ---------------------------------------------------------------- the token each position picks


def _tokenizer(bert_like: bool) -> PreTrainedTokenizerFast:
    """Word-level, with offsets; BERT-like adds [CLS] … [SEP] (marked special), GPT-2-like adds nothing."""
    words = sorted({w for text in TEXTS for w in text.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bert_like:
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def _extract(model, tokenizer, folder, positions, **kwargs):
    names = validate({"model": "gpt2", "dataset": "mole", "positions": positions}).positions
    return extract(lambda: (model, tokenizer), TEXTS, SPANS, layers=[0, 1], folder=folder, positions=names,
                   position_spans={"span-w_start-w_end": SECOND}, batch_size=2, progress=False, **kwargs)


def _by_hand(model, tokenizer, text, layer, bert_like):
    """Each position's vector from the model's own hidden_states on the text alone (no padding)."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer][0]
    n = len(ids[0])
    words = text.split()
    shift = 1 if bert_like else 0  # [CLS] first; every word one token
    target = shift + words.index("mole")
    return {"target": hidden[target], "first": hidden[0], "last": hidden[n - 1 - shift],
            "mean": hidden.mean(0), "index-2": hidden[n - 2], "index1": hidden[1],
            "span-w_start-w_end": hidden[shift + 1]}


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_each_position_reads_the_token_the_docs_name(name, tmp_path):
    """BERT: first is [CLS], last the word before [SEP], index -2 that same word, mean over [CLS] … [SEP];
    GPT-2 (no special tokens): first is the first word, last and index -1 the final '.'."""
    bert_like = name == "bert"
    model, tokenizer = ARCHITECTURES[name].random_model(seed=0).eval(), _tokenizer(bert_like)
    store = _extract(model, tokenizer, tmp_path / "f", EVERY)
    assert store.positions == ("target", "first", "last", "mean", "index-2", "index1", "span-w_start-w_end")
    for layer in (0, 1):
        for row, text in enumerate(TEXTS):
            for position, expected in _by_hand(model, tokenizer, text, layer, bert_like).items():
                np.testing.assert_allclose(store.layer(position, layer)[row], expected.numpy(), rtol=0, atol=1e-5,
                                           err_msg=f"{name}: {position} at layer {layer}, row {row}")
    if bert_like:  # [SEP] is special: last skips it, index -1 does not
        np.testing.assert_allclose(store.layer("last", 1), store.layer("index-2", 1), rtol=0, atol=0)


def _counting(model):
    """The model, recording each forward's width in tokens."""
    widths, forward = [], model.forward

    def counting(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    model.forward = counting
    return widths


def test_the_causal_cut_is_kept_for_first_and_dropped_for_later_tokens(tmp_path):
    model, tokenizer = ARCHITECTURES["gpt2"].random_model(seed=0).eval(), _tokenizer(False)
    widths = _counting(model)
    whole = _extract(model, tokenizer, tmp_path / "whole", ["target", "first", "mean", {"index": -2}])
    whole_width, widths[:] = sum(widths), []
    cut = _extract(model, tokenizer, tmp_path / "cut", ["target", "first"])
    assert sum(widths) < whole_width  # first comes before the target: the cut stays
    for position in ("target", "first"):
        np.testing.assert_allclose(cut.layer(position, 1), whole.layer(position, 1), rtol=0, atol=1e-5)
    for n, later in enumerate((["target", "mean"], ["target", {"index": 1}], ["target", {"span": ["w_start", "w_end"]}])):
        widths[:] = []
        store = _extract(model, tokenizer, tmp_path / f"later-{n}", later)
        assert sum(widths) == whole_width, later  # each may read past the target: whole rows
        for position in set(store.positions) & set(whole.positions):
            np.testing.assert_allclose(store.layer(position, 1), whole.layer(position, 1), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- runs


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _sentences(n_pairs=12):
    """Minimal pairs told apart by one word; no target, a second-word span in columns w_start/w_end."""
    rows = []
    for i in range(n_pairs):
        for label, verb in (("present", "digs"), ("past", "dug")):
            text = f"The mole {verb} a tunnel {'again ' * (i % 3)}."
            rows.append({"text": text, "label": label, "group": f"g{i}", "w_start": 4, "w_end": 8})
    return rows


def test_a_sentence_level_run_end_to_end_and_its_cache_keys(tiny_model, tmp_path):  # noqa: F811
    data = _write(tmp_path / "sentences.jsonl", _sentences())
    cache = tmp_path / "cache"

    def run(positions, out, reporters=("json",)):
        config = config_for(tiny_model, {"name": "file", "path": str(data)}, positions=positions, layers=[0, 1, 2],
                            reporters=list(reporters))
        return run_experiment(config, tmp_path / out, cache_dir=cache, progress=False)

    # Every reporter reads rows without a target (the attention figures start from the last token).
    results = run(["first", "mean", "last"], "a", reporters=["json", "csv", "summary", "plots", "html"])
    assert {"accuracy.png", "attention.png", "report.html"} <= {p.name for p in (tmp_path / "a").iterdir()}
    assert "probe at mean over the tokens" in (tmp_path / "a" / "report.html").read_text()
    assert {(r.position, r.subset) for r in results.rows} == {(p, "all") for p in ("first", "mean", "last")}
    assert set(results.layers["position"]) == {"first", "mean", "last"}
    written = json.loads((tmp_path / "a" / "results.json").read_text())
    assert {row["position"] for row in written["layers"]} == {"first", "mean", "last"}
    assert "| mean | all |" in (tmp_path / "a" / "summary.md").read_text()
    # GPT-2-like, no BOS: the first token is "The" in every row, so it knows nothing of the verb.
    first = [r for r in results.rows if r.position == "first"]
    assert all(r.accuracy <= 0.5 + 1e-9 for r in first)
    identical = [d for d in results.diagnostics if d.code == "identical-vectors"]
    assert [d.details["position"] for d in identical] == ["first"]
    assert "a control that must stay at chance" in identical[0].advice

    # Another position set gets its own folder; "cls" is "first" (the same key: no new folder).
    run(["cls", "mean", "last"], "b")
    assert len(feature_folders(cache)) == 1
    run(["mean", {"span": ["w_start", "w_end"]}], "c")
    assert len(feature_folders(cache)) == 2
    mean_a = [r.accuracy for r in results.rows if r.position == "mean"]
    again = json.loads((tmp_path / "c" / "results.json").read_text())
    assert [r["accuracy"] for r in again["layers"] if r["position"] == "mean"] == mean_a

    # The span's columns are part of the key: moved spans are new vectors, not the cached ones.
    _write(data, [{**row, "w_start": 0, "w_end": 3} for row in _sentences()])
    run(["mean", {"span": ["w_start", "w_end"]}], "d")
    assert len(feature_folders(cache)) == 3


def test_rows_without_a_target_are_refused_only_where_a_position_reads_it(tiny_model, tmp_path):  # noqa: F811
    data = _write(tmp_path / "sentences.jsonl", _sentences())

    def config(positions, path=data):
        return config_for(tiny_model, {"name": "file", "path": str(path)}, positions=positions, layers=[1])

    with pytest.raises(DataError, match=r"sentences\.jsonl: no row gives a target \(a 'target' column or a span\), "
                                        r"and the position 'target' reads one"):
        run_experiment(config(["target", "mean"]), tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    some = _write(tmp_path / "some.jsonl", [{**row, "target": "mole"} if n != 1 else row
                                            for n, row in enumerate(_sentences())])
    with pytest.raises(DataError, match=r"some\.jsonl: 1 problem\(s\) in the data:\n  - .*some\.jsonl, row 2, "
                                        r"field 'target': target is empty \(None\) and no span was given; the "
                                        r"position 'target' reads it"):
        run_experiment(config(["target", "mean"], some), tmp_path / "out", cache_dir=tmp_path / "cache",
                       progress=False)
    with pytest.raises(DataError, match=r"row 1, field 'text': position \{index: -40\} needs at least 40 tokens"):
        run_experiment(config([{"index": -40}]), tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    no_span = _write(tmp_path / "no-span.jsonl", [{k: v for k, v in row.items() if k != "w_end"} if n == 2 else row
                                                  for n, row in enumerate(_sentences())])
    with pytest.raises(DataError, match=r"row 3, field 'w_start': position 'span-w_start-w_end' needs a span"):
        run_experiment(config([{"span": ["w_start", "w_end"]}], no_span), tmp_path / "out",
                       cache_dir=tmp_path / "cache", progress=False)
    skipped = config_for(tiny_model, {"name": "file", "path": str(no_span)}, layers=[1], on_bad_rows="skip",
                         positions=[{"span": ["w_start", "w_end"]}, "mean"])
    results = run_experiment(skipped, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    assert results.dataset.rows == 23 and len(results.dataset.skipped_rows) == 1
    assert "row 3, field 'w_start'" in results.dataset.skipped_rows[0]


def test_run_with_cache_gives_each_position_s_tokens(tiny_model):  # noqa: F811
    import probe
    from probe.notebook import PositionError

    texts = ["The mole dug a tunnel .", "A mole of gas ."]
    _, cache = probe.run_with_cache(str(tiny_model), texts, names="blocks.0.resid_post", target="mole",
                                    positions=["target", "cls", "mean", "last", {"index": -2}])
    lengths = [len(tokens) for tokens in cache.tokens]
    assert list(cache.positions) == ["target", "first", "mean", "last", "index-2"]
    assert cache.positions["target"] == cache.targets
    assert cache.positions["first"] == [[0], [0]]
    assert cache.positions["mean"] == [list(range(n)) for n in lengths]
    assert cache.positions["last"] == [[n - 1] for n in lengths]  # no special tokens in this tokenizer
    assert cache.positions["index-2"] == [[n - 2] for n in lengths]
    assert [cache.tokens[i][j].strip() for i, (j,) in enumerate(cache.positions["last"])] == [".", "."]
    with pytest.raises(PositionError, match=r"'target' needs target="):
        probe.run_with_cache(str(tiny_model), texts, names="blocks.0.resid_post", positions="target")
    with pytest.raises(PositionError, match=r"position \{index: 29\} needs at least 30 tokens; 'The mole dug a tunnel \.' has \d+"):
        probe.run_with_cache(str(tiny_model), texts, names="blocks.0.resid_post", positions={"index": 29})


def test_probe_run_takes_the_new_positions(tiny_model, tmp_path):  # noqa: F811
    import probe

    data = _write(tmp_path / "sentences.jsonl", _sentences())
    results = probe.run({"model": str(tiny_model), "dataset": {"name": "file", "path": str(data)}, "folds": 3,
                         "controls": ["majority"], "reporters": ["json"], "layers": [1]},
                        positions=[{"index": -2}, "cls"], output=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert [r.position for r in results.rows] == ["index-2", "first"]
    assert results.settings["positions"] == ["index-2", "first"]
