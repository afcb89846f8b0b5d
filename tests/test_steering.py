"""Steering along a probe's direction (plugins/steering.py, probe/science/steering.py) and the record of
every intervention in results.json (probe/pipeline/interventions.py): the direction's algebra, the hook
point and tokens checked by hand, a planted signal end to end on a tiny causal LM and a tiny masked LM,
and bad options named."""

import itertools
import json
import types

import numpy as np
import pytest
import torch
from tiny_gpt2 import build_tiny_gpt2

import probe
from probe import plugins
from probe.pipeline.config import ConfigError, validate
from probe.pipeline.run import run_experiment
from probe.science.steering import SteeringError, random_direction, sense_directions
from probe.science.probes import logistic_probe

PREFIXES = ["The old", "Yesterday a small", "In the garden the", "Near the river one", "A very quiet",
            "Under the bridge the", "Every morning the", "Behind the wall a"]
SUFFIXES = ["was seen.", "slept all day.", "moved again.", "stayed there."]
WORDS = ("mole", "tower")


def clusters(seed=0, n=150, d=12, k=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    return (rng.normal(size=(k, d))[y] * 2 + rng.normal(size=(n, d))) * rng.uniform(0.5, 5, d), y


# ------------------------------------------------------------------ the direction's algebra


@pytest.mark.parametrize("k", [2, 3])
def test_a_senses_direction_is_the_gradient_of_its_score_against_the_others(k):
    X, y = clusters(k=k)
    probe_ = logistic_probe().fit(X, y)
    directions = sense_directions(probe_)
    assert sorted(directions) == list(range(k))

    def margin(x, sense):  # the sense's logit against the mean of all (binary: the signed decision value)
        scores = probe_.decision_function(x)
        if k == 2:
            return scores if sense == 1 else -scores
        return scores[:, sense] - scores.mean(1)

    x0, eye = X[:1], np.eye(X.shape[1])
    for sense, unit in directions.items():
        gradient = np.array([(margin(x0 + e, sense) - margin(x0, sense))[0] for e in eye])  # linear: exact steps
        np.testing.assert_allclose(unit, gradient / np.linalg.norm(gradient), atol=1e-8)
        assert np.linalg.norm(unit) == pytest.approx(1.0)
        moved = probe_.predict(X + 10 * X.std() * unit)  # far along it, every row is called that sense
        assert np.mean(moved == sense) > 0.95


def test_a_probe_without_linear_weights_is_refused_by_name():
    from sklearn.decomposition import PCA
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline

    X, y = clusters()
    with pytest.raises(SteeringError, match="probe 'knn' ends in KNeighborsClassifier"):
        sense_directions(KNeighborsClassifier().fit(X, y), "knn")
    with pytest.raises(SteeringError, match="probe 'pca' has a PCA step"):
        sense_directions(make_pipeline(PCA(3), logistic_probe()).fit(X, y), "pca")


def test_random_directions_are_seeded_unit_vectors():
    a, b = random_direction(50, [0, 1, 2]), random_direction(50, [0, 1, 2])
    assert np.array_equal(a, b) and np.linalg.norm(a) == pytest.approx(1.0)
    assert not np.allclose(a, random_direction(50, [0, 1, 3]))


# ------------------------------------------------------------------ the hook point and tokens, by hand


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny random GPT-2 (3 blocks) with its LM head, and rows whose label is the word at the target."""
    folder = tmp_path_factory.mktemp("steering")
    model = build_tiny_gpt2(folder / "model", n_layer=3)
    rows = [{"text": f"{prefix} {word} {suffix}", "target": word, "label": word}
            for word in WORDS for prefix, suffix in itertools.product(PREFIXES, SUFFIXES)]
    (folder / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return model, folder / "rows.jsonl"


def test_steering_adds_at_the_stream_entering_block_L_on_the_target_tokens_only(planted):
    """By hand: a plain torch pre-hook on block 1 adding v at the target's tokens gives the same hidden
    states as the plugin's hook at blocks.1.resid_pre, and that point carries hidden state 1 itself."""
    from transformers import GPT2Model

    from probe.pipeline.models import load_tokenizer
    from probe.pipeline.partial import capture_block_inputs, vectors_from
    from probe_plugins.steering import steering_hook, tiled

    folder, _ = planted
    model = probe.swap_attention(GPT2Model.from_pretrained(folder, attn_implementation="eager").eval())
    tokenizer = load_tokenizer(str(folder))
    texts = ["The old mole was seen.", "Near the river one tower moved again."]
    spans = [(t.index(w), t.index(w) + len(w)) for t, w in zip(texts, WORDS)]
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad(), probe.capture(model, "blocks.1.resid_pre") as seen:
        hidden = model(**encoded, output_hidden_states=True).hidden_states
    assert torch.equal(seen["blocks.1.resid_pre"], hidden[1])  # layer 1 = what block 1 receives

    inputs = capture_block_inputs(model, tokenizer, texts, spans, 1, batch_size=2, whole_rows=True)
    batch = inputs[0]
    v = torch.linspace(-1, 1, model.config.n_embd)
    delta = torch.zeros(batch.args[0].shape if batch.args else batch.kwargs["hidden_states"].shape)
    for i, targets in enumerate(batch.targets):
        delta[i, targets] = v
    with probe.hooks(model, {"blocks.1.resid_pre": steering_hook(delta)}):
        steered = vectors_from(model, inputs, 1, [2, 3], "target")

    def by_hand(block, args, kwargs):
        x = (args[0] if args else kwargs["hidden_states"]).clone()
        for i, targets in enumerate(batch.targets):
            x[i, targets] += v
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    handle = model.h[1].register_forward_pre_hook(by_hand, with_kwargs=True)
    try:
        expected = vectors_from(model, inputs, 1, [2, 3], "target")
    finally:
        handle.remove()
    clean = vectors_from(model, inputs, 1, [2, 3], "target")
    for layer in (2, 3):
        np.testing.assert_allclose(steered[layer], expected[layer], rtol=0, atol=1e-6)
        assert not np.allclose(steered[layer], clean[layer])
    copies = tiled(batch, 3)  # copies of a batch carry the same rows: row c·B + i is row i
    assert len(copies.rows) == 3 * len(batch.rows) and copies.targets[len(batch.rows):][:2] == batch.targets
    with probe.hooks(model, {"blocks.1.resid_pre": steering_hook(torch.zeros_like(delta))}):
        unchanged = vectors_from(model, inputs, 1, [2, 3], "target")
    for layer in (2, 3):
        assert np.array_equal(unchanged[layer], clean[layer])  # a zero vector changes nothing, bit for bit


def test_the_deltas_touch_only_held_out_rows_at_their_target_tokens(planted):
    from probe_plugins.steering import FoldFit, _deltas, tiled

    unit = np.eye(4)[0]
    fits = [FoldFit({"a": unit, "b": -unit}, {"a": 2.0, "b": 2.0}, [np.eye(4)[1]], {})]
    batch = types.SimpleNamespace(rows=[5, 6], targets=[[2, 3], [4]], last=torch.tensor([6, 7]),
                                  args=(torch.zeros(2, 8, 4),), kwargs={}, encoding={}, cut=False)
    copy = tiled(batch, 2)
    held_out = np.full(10, -1)
    held_out[5] = 0  # row 6 is in no test part: never steered
    todo = [(None, 0.0, "zero"), ("b", 3.0, "probe"), ("b", 3.0, "random-0")]
    delta = _deltas(batch, copy, [1, 2], todo, fits, held_out, {"at": "probed", "position": "target"})
    expected = torch.zeros(4, 8, 4)
    expected[0, [2, 3], 0] = -6.0  # condition 1, row 5: 3 × 2 along −unit, at its two target tokens
    expected[2, [2, 3], 1] = 6.0  # condition 2, row 5: the random direction, the same norm
    assert torch.equal(delta, expected)


# ------------------------------------------------------------------ end to end


def steering_config(model, rows, **overrides):
    config = {"name": "steer", "model": str(model), "dataset": {"name": "file", "path": str(rows)}, "folds": 4,
              "positions": ["target"], "controls": ["majority"], "reporters": ["json", "summary", "steering"],
              "options": {"steering": {"layer": 1, "alphas": [0, 2, 8], "draws": 2}}}
    return validate({**config, **overrides})


def run(config, out, cache):
    plugins.reset_plugin_manager()
    try:
        run_experiment(config, out, cache_dir=cache, progress=False, n_jobs=1)
    finally:
        plugins.reset_plugin_manager()
    return json.loads((out / "steering.json").read_text()) if (out / "steering.json").exists() else None


def test_steering_a_planted_signal_moves_later_probes_and_is_recorded(planted, tmp_path):
    model, rows = planted
    summary = run(steering_config(model, rows), tmp_path / "out", tmp_path / "cache")
    assert summary["hook_point"] == "blocks.1.resid_pre" and summary["rows"] == 64
    assert summary["alpha0_max_abs_diff"] == 0.0  # the zero vector, through the batched path: bit for bit
    table = {(r["alpha"], r["direction"], r["layer"]): r["toward"] for r in summary["layers"]}
    for layer in (2, 3):
        assert table[(0.0, "probe", layer)]["mean"] == summary["unsteered_toward"][str(layer)]
        # The label is the word itself, which every layer carries along the probe's direction: pushing
        # along it flips the later probes; a random direction of the same norm does far less.
        assert table[(8.0, "probe", layer)]["ci"][0] > 0.9
        assert table[(8.0, "random", layer)]["ci"][1] < table[(8.0, "probe", layer)]["ci"][0]
    assert summary["outputs_kind"] == "next-token"
    outputs = {(r["alpha"], r["direction"]): r for r in summary["outputs"]}
    assert outputs[(0.0, "probe")]["kl"]["mean"] == 0.0
    assert outputs[(8.0, "probe")]["kl"]["mean"] > 0
    assert outputs[(8.0, "probe")]["delta_log_p_typical"]["ci"][0] > outputs[(8.0, "random")]["delta_log_p_typical"]["ci"][1]
    for name in ("steering.png", "steering.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    (entry,) = written["interventions"]  # written again after the reporter ran
    assert entry["kind"] == "steering" and entry["plugin"] == "steering" and entry["version"]
    assert entry["hook_points"] == ["blocks.1.resid_pre"] and entry["layers"] == [1]
    assert entry["options"]["alphas"] == [0.0, 2.0, 8.0] and entry["effect"]["toward_probe"]["mean"] > 0.9
    assert "**Intervened on.**" in (tmp_path / "out" / "summary.md").read_text()
    from probe.report.html import render_report

    assert "Intervened on:</strong> steering by plugin steering at blocks.1.resid_pre" in render_report(tmp_path / "out")
    again = run(steering_config(model, rows, batch_size=3), tmp_path / "again", tmp_path / "cache")
    assert [r["toward"] for r in again["layers"]] == [r["toward"] for r in summary["layers"]]  # any batch size


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny random BertForMaskedLM with a WordPiece vocabulary of the rows' words, and the same weights
    saved as a bare BertModel (no head)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    folder = tmp_path_factory.mktemp("bert")
    words = sorted({w.lower().strip(".") for text in PREFIXES + SUFFIXES for w in text.split()} | set(WORDS))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *words]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    torch.manual_seed(0)
    lm = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=3,
                                    num_attention_heads=4, intermediate_size=64, max_position_embeddings=64))
    lm.save_pretrained(folder / "mlm")
    tokenizer.save_pretrained(folder / "mlm")
    lm.bert.save_pretrained(folder / "bare")
    tokenizer.save_pretrained(folder / "bare")
    return folder


def test_a_masked_lm_reports_its_own_predictions_and_a_bare_encoder_says_not_available(planted, tiny_bert, tmp_path):
    _, rows = planted
    options = {"steering": {"layer": 1, "alphas": [0, 4], "draws": 1}, "erasure": {"layer": 1, "draws": 1}}
    reporters = ["json", "steering", "erasure"]
    summary = run(steering_config(tiny_bert / "mlm", rows, options=options, reporters=reporters),
                  tmp_path / "mlm", tmp_path / "cache")
    assert summary["outputs_kind"] == "masked-LM" and summary["alpha0_max_abs_diff"] == 0.0
    outputs = {(r["alpha"], r["direction"]): r for r in summary["outputs"]}
    assert outputs[(0.0, "probe")]["kl"]["mean"] == 0.0 and outputs[(4.0, "probe")]["kl"]["mean"] > 0
    erasure = json.loads((tmp_path / "mlm" / "erasure.json").read_text())
    assert erasure["outputs"]["available"] and erasure["outputs"]["kind"] == "masked-LM"
    assert erasure["outputs"]["kl"]["leace"]["mean"] > 0 and not erasure["loss"]["available"]
    kinds = [entry["kind"] for entry in json.loads((tmp_path / "mlm" / "results.json").read_text())["interventions"]]
    assert kinds == ["steering", "erasure"]

    bare = run(steering_config(tiny_bert / "bare", rows, options=options, reporters=reporters),
               tmp_path / "bare", tmp_path / "cache")
    assert bare["outputs_kind"] is None and bare["outputs"] == []
    assert "not available" in bare["outputs_reason"] and "BertModel" in bare["outputs_reason"]
    erasure = json.loads((tmp_path / "bare" / "erasure.json").read_text())
    assert not erasure["outputs"]["available"] and "not available" in erasure["outputs"]["reason"]


def test_an_activation_hooks_plugin_is_recorded_whether_or_not_the_features_were_cached(planted, tmp_path):
    model, rows = planted
    config = steering_config(model, rows, reporters=["json", "summary"], options={"ablate_heads": [[2, 0], [0, 1]]})
    for name in ("first", "cached"):
        run(config, tmp_path / name, tmp_path / "cache")
        (entry,) = json.loads((tmp_path / name / "results.json").read_text())["interventions"]
        assert entry["kind"] == "activation_hooks" and entry["plugin"] == "head_ablation" and entry["version"]
        assert entry["hook_points"] == ["blocks.0.attn.z", "blocks.2.attn.z"] and entry["blocks"] == [0, 2]
        assert entry["options"] == {"ablate_heads": [[2, 0], [0, 1]]}
        assert "head_ablation" in (tmp_path / name / "summary.md").read_text()
    run(steering_config(model, rows, reporters=["json"], options={}), tmp_path / "clean", tmp_path / "cache")
    assert json.loads((tmp_path / "clean" / "results.json").read_text())["interventions"] == []  # a clean run says so


def test_bad_steering_options_name_the_option():
    from probe_plugins.steering import steering_settings

    rows = [types.SimpleNamespace(layer=layer, position="target", subset="all", accuracy=accuracy)
            for layer, accuracy in enumerate([0.3, 0.8, 0.9, 0.95])]
    results = types.SimpleNamespace(rows=rows)

    def settings(**options):
        config = validate({"model": "x", "dataset": "mole", "options": {"steering": options}})
        return steering_settings(results, config, 3, ["a", "b"])

    assert settings()["layer"] == 2 and settings()["hook_point"] == "blocks.2.resid_pre"
    assert settings(alphas=[4, 0, 4])["alphas"] == [0.0, 4.0]
    with pytest.raises(ConfigError, match="options.steering: unknown key.*lyer"):
        settings(lyer=1)
    for options, message in [({"layer": 3}, "layer is 3.*0..2"),
                             ({"alphas": []}, "alphas must be"), ({"alphas": ["big"]}, "alphas must be"),
                             ({"senses": ["c"]}, "senses must be.*a, b"), ({"at": "cue"}, "at is 'cue'"),
                             ({"draws": 0}, "draws must be a positive integer"), ({"position": "last"}, "position")]:
        with pytest.raises(SteeringError, match=f"options.steering: {message}"):
            settings(**options)
