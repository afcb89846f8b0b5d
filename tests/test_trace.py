"""Causal tracing (probe.pipeline.patching and the ``trace`` reporter) against patches done by hand."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from probe_plugins import causal_trace
from tiny_gpt2 import build_tiny_gpt2
from transformers import GPT2LMHeadModel, GPT2Model

import probe
from probe import plugins
from probe.pipeline.config import ConfigError, load_config
from probe.pipeline.models import load_tokenizer
from probe.pipeline.patching import (
    TARGET,
    Component,
    Pair,
    TracePoints,
    aligned,
    encode_sentence,
    patched_vectors,
    sample_pairs,
    summarise,
    trace_pair,
)
from probe.pipeline.run import run_experiment
from probe.science.probes import logistic_probe

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
LAYER = 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), n_layer=3)  # layer 2: no final norm
    model = probe.swap_attention(GPT2Model.from_pretrained(folder, attn_implementation="eager").eval())
    return folder, model, load_tokenizer(str(folder))


@pytest.fixture(autouse=True)
def fresh_plugins():
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def _sentence(tokenizer, text, word="mole"):
    start = text.lower().index(word)
    return encode_sentence(tokenizer, text, (start, start + len(word)), cut=True)


def _hidden(model, sentence, layer, edit=None):
    """The hidden state at ``layer`` of one sentence, with an optional hook on one point."""
    with probe.hooks(model, edit or {}), torch.no_grad():
        states = model(**sentence.encoding, output_hidden_states=True).hidden_states
    return states[layer][0, sentence.targets].mean(0).numpy()[None]


@pytest.fixture(scope="module")
def setting(tiny):
    """A base and a source of different senses and lengths (the source has two more tokens before the
    target), and a probe fitted on random vectors with the two senses as its classes."""
    _, model, tokenizer = tiny
    base = _sentence(tokenizer, "The gardener trapped the mole.")
    source = _sentence(tokenizer, "After the chemistry lesson on amounts we weighed one mole")
    assert source.targets[0] > base.targets[0] and len(base.targets) == len(source.targets)
    rng = np.random.default_rng(0)
    fitted = logistic_probe().fit(rng.normal(size=(40, model.config.n_embd)), ["animal", "unit"] * 20)
    points = TracePoints(n_blocks=3, n_heads=4, layer=LAYER, has_mlp=True)
    return model, fitted, base, source, points


def _difference(fitted, vectors):
    log_p = fitted.predict_log_proba(vectors)
    return log_p[:, 1] - log_p[:, 0]  # source sense (unit) minus base sense (animal)


def test_one_head_patch_matches_a_patch_done_by_hand(setting):
    model, fitted, base, source, points = setting
    traced = trace_pair(model, fitted, ["animal", "unit"], base, source, ("animal", "unit"), points)
    shift = source.targets[0] - base.targets[0]
    with probe.capture(model, "blocks.1.attn.z") as seen, torch.no_grad():
        model(**source.encoding)
    source_z = seen["blocks.1.attn.z"]

    def write_head_2(z, name):  # every base position that has a partner in the source, head 2 only
        z = z.clone()
        for p in range(base.length):
            if 0 <= p + shift < source.length:
                z[0, 2, p] = source_z[0, 2, p + shift]
        return z

    by_hand = _difference(fitted, _hidden(model, base, LAYER, {"blocks.1.attn.z": write_head_2}))
    clean = _difference(fitted, _hidden(model, base, LAYER))
    moved = traced["moved"][traced["components"].index(Component("head", 1, 2))]
    assert moved != 0
    assert moved == pytest.approx(by_hand[0] - clean[0], abs=1e-5)
    assert traced["full"] == pytest.approx(_difference(fitted, _hidden(model, source, LAYER))[0] - clean[0], abs=1e-5)


def test_next_token_change_matches_the_language_model_run_by_hand(tiny, setting):
    model, fitted, base, source, points = setting
    language_model = GPT2LMHeadModel.from_pretrained(tiny[0], attn_implementation="eager").eval()
    probe.swap_attention(language_model)
    following = 7
    traced = trace_pair(model, fitted, ["animal", "unit"], base, source, ("animal", "unit"), points,
                        head=language_model.get_output_embeddings(), next_token=following)
    with probe.capture(language_model, "blocks.0.attn.out") as seen, torch.no_grad():
        source_log_p = language_model(**source.encoding).logits[0, -1].log_softmax(-1)[following]
    shift = source.targets[0] - base.targets[0]

    def write_attention(out, name):
        out = out.clone()
        out[0, :] = seen["blocks.0.attn.out"][0, shift:shift + base.length]
        return out

    def log_p(edit=None):
        with probe.hooks(language_model, edit or {}), torch.no_grad():
            return language_model(**base.encoding).logits[0, base.targets[-1]].log_softmax(-1)[following].item()

    clean = log_p()
    moved = traced["next_moved"][traced["components"].index(Component("attn", 0))]
    assert moved != 0
    assert moved == pytest.approx(log_p({"blocks.0.attn.out": write_attention}) - clean, abs=1e-4)
    assert traced["next_full"] == pytest.approx(source_log_p.item() - clean, abs=1e-4)
    rows = summarise([traced], draws=20)
    assert rows[0]["next_token_change"] == pytest.approx(traced["next_moved"][0])


def test_residual_patch_at_one_position_matches_a_patch_done_by_hand(setting):
    model, fitted, base, source, points = setting
    traced = trace_pair(model, fitted, ["animal", "unit"], base, source, ("animal", "unit"), points)
    with probe.capture(model, "blocks.1.resid_pre") as seen, torch.no_grad():
        model(**source.encoding)
    before = base.targets[0] - 1  # relative position -1

    def write(x, name):
        x = x.clone()
        x[0, before] = seen["blocks.1.resid_pre"][0, source.targets[0] - 1]
        return x

    by_hand = _difference(fitted, _hidden(model, base, LAYER, {"blocks.1.resid_pre": write}))
    clean = _difference(fitted, _hidden(model, base, LAYER))
    moved = traced["moved"][traced["components"].index(Component("resid", 1, position=-1))]
    assert moved == pytest.approx(by_hand[0] - clean[0], abs=1e-5)


def test_whole_residual_at_the_target_scores_one_and_no_patch_zero(setting):
    model, fitted, base, source, points = setting
    traced = trace_pair(model, fitted, ["animal", "unit"], base, source, ("animal", "unit"), points)
    rows = summarise([traced, traced], seed=0, draws=50)
    whole = next(r for r in rows if r["head"] == "resid" and r["block"] == LAYER and r["position"] == TARGET)
    assert whole["effect"] == pytest.approx(1.0, abs=1e-6)
    assert whole["ci_low"] == pytest.approx(1.0, abs=1e-6) and whole["ci_high"] == pytest.approx(1.0, abs=1e-6)
    # An unpatched copy, alone in its forward, reads the base's own vector: it moves nothing.
    components = [None, None, Component("head", 0, 1)]
    values = _source_values(model, source, points)
    vectors, _ = patched_vectors(model, base, source, components, points, values, batch=1)
    assert _difference(fitted, vectors[1:2])[0] - _difference(fitted, vectors[:1])[0] == pytest.approx(0, abs=1e-6)
    assert np.allclose(vectors[0], _hidden(model, base, LAYER), atol=1e-5)


def _source_values(model, source, points):
    from probe.pipeline.patching import clean_run

    names = [f"blocks.{b}.attn.z" for b in range(2)] + [points.residual(points.layer)]
    return clean_run(model, source, names)[0]


def test_a_batch_of_patches_equals_the_patches_one_at_a_time(setting):
    model, fitted, base, source, points = setting
    together = trace_pair(model, fitted, ["animal", "unit"], base, source, ("animal", "unit"), points, batch=512)
    alone = trace_pair(model, fitted, ["animal", "unit"], base, source, ("animal", "unit"), points, batch=1)
    assert together["components"] == alone["components"]
    assert len(together["components"]) == 2 * (4 + 2) + 2 * len(aligned(base, source)) + 1
    np.testing.assert_allclose(together["moved"], alone["moved"], atol=1e-6)


def test_positions_align_on_the_target_and_unpaired_ones_are_left_out(setting):
    _, _, base, source, _ = setting
    alignment = aligned(base, source)
    shift = source.targets[0] - base.targets[0]
    assert alignment[TARGET] == (base.targets, [t + shift for t in base.targets])
    assert alignment[-1] == ([base.targets[0] - 1], [source.targets[0] - 1])
    assert all(0 <= s < source.length for _, sources in alignment.values() for s in sources)
    assert sum(len(b) for b, _ in alignment.values()) == base.length  # the source is longer before the target


def test_pairs_are_seeded_same_word_different_sense_same_group_first():
    targets = ["mole"] * 6 + ["bank"] * 2
    labels = ["a", "b", "a", "b", "a", "a", "x", "y"]
    groups = ["g1", "g1", "g2", "g2", "g3", "g3", "g4", "g4"]
    tokens = [1] * 8
    pairs = sample_pairs(targets, labels, groups, tokens, 6, seed=3)
    assert pairs == sample_pairs(targets, labels, groups, tokens, 6, seed=3)
    for pair in pairs:
        assert targets[pair.base] == targets[pair.source] and labels[pair.base] != labels[pair.source]
    same = [p for p in pairs if groups[p.base] == groups[p.source]]
    assert set(same) == {Pair(0, 1), Pair(1, 0), Pair(2, 3), Pair(3, 2), Pair(6, 7), Pair(7, 6)}
    assert len(pairs) == 6
    more, other_seed = (sample_pairs(targets, labels, groups, tokens, 20, seed=seed) for seed in (3, 4))
    assert more != other_seed and set(more) == set(other_seed)  # same pairs, another order
    assert set(more[:6]) == set(same)  # all same-group pairs before any other
    assert {frozenset((p.base, p.source)) for p in more[6:]} <= {frozenset((a, b)) for a in range(6) for b in range(6)}
    # A target split into a different number of tokens, or the same input up to the target, makes no pair.
    split_target = sample_pairs(targets, labels, groups, [1, 2] + [1] * 6, 20, seed=0, contexts=list(range(8)))
    assert Pair(0, 1) not in split_target and Pair(2, 3) in split_target
    same_input = [0, 1, 2, 2, 4, 5, 6, 7]  # rows 2 and 3 read the same tokens up to the target
    assert Pair(2, 3) not in sample_pairs(targets, labels, groups, tokens, 20, seed=0, contexts=same_input)


def _config(tiny_folder, **trace):
    return load_config(EXPERIMENTS / "mole-trace.yaml", {
        "model": str(tiny_folder), "folds": 3, "controls": ["majority"],
        "options": {"trace": {"pairs": 3, "layer": LAYER, "draws": 50, **trace}},
    })


def test_trace_experiment_writes_table_figures_and_report_section(tiny, tmp_path):
    folder = tiny[0]
    run_experiment(_config(folder), tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    out = tmp_path / "out"
    with open(out / "trace.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(causal_trace.COLUMNS + causal_trace.NEXT_COLUMNS)  # a GPT-2 with its LM head
    assert {r["head"] for r in rows} == {"0", "1", "2", "3", "attn", "mlp", "resid"}
    whole = next(r for r in rows if r["head"] == "resid" and r["block"] == str(LAYER) and r["position"] == TARGET)
    assert float(whole["effect"]) == pytest.approx(1.0, abs=1e-6) and whole["pairs"] == "3"
    summary = json.loads((out / "trace.json").read_text())
    assert len(summary["pairs"]) == 3 and summary["settings"]["layer"] == LAYER
    for name in ("trace_heads.png", "trace_heads.svg", "trace_positions.png", "trace_positions.svg"):
        assert (out / name).stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "Causal trace: heads" in page and "data:image/png;base64," in page


def test_trace_is_reproducible_under_its_seed_and_batch(tiny, tmp_path):
    folder = tiny[0]
    tables = []
    for name, batch in (("a", 256), ("b", 7)):
        run_experiment(_config(folder, batch=batch, seed=5), tmp_path / name, cache_dir=tmp_path / "cache",
                       progress=False)
        tables.append(json.loads((tmp_path / name / "trace.json").read_text()))
    assert tables[0]["pairs"] == tables[1]["pairs"]
    for first, second in zip(tables[0]["rows"], tables[1]["rows"]):
        assert [first[k] for k in ("block", "head", "position")] == [second[k] for k in ("block", "head", "position")]
        assert first["effect"] == pytest.approx(second["effect"], abs=1e-5)


@pytest.mark.parametrize(("options", "named"), [
    ({"pairs": 0}, "options.trace.pairs"), ({"layer": 9}, "options.trace.layer"),
    ({"batch": "many"}, "options.trace.batch"), ({"colour": 1}, "colour"), ({"window": -1}, "options.trace.window"),
])
def test_bad_options_are_named(tiny, tmp_path, options, named):
    config = load_config(EXPERIMENTS / "mole-trace.yaml", {"model": str(tiny[0]), "options": {"trace": options}})
    results = _FakeResults()
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        causal_trace.trace_settings(results, config, n_blocks=3)


class _FakeResults:
    """Only what trace_settings reads: the target rows' accuracy per layer."""

    class _Row:
        def __init__(self, layer, accuracy):
            self.layer, self.accuracy, self.position, self.subset = layer, accuracy, "target", "all"

    rows = [_Row(0, 0.5), _Row(1, 0.9), _Row(2, 0.7)]


def test_default_layer_is_the_best_probed_one(tiny):
    config = load_config(EXPERIMENTS / "mole-trace.yaml", {"model": str(tiny[0])})
    assert causal_trace.trace_settings(_FakeResults(), config, n_blocks=3)["layer"] == 1
