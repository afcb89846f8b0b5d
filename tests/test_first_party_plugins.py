"""The first-party plugins in plugins/: nearest-centroid probe, JSONL-folder datasets, head ablation, attention report."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from probe_plugins import (
    attention_report,
    head_ablation,
    jsonl_folder,
    nearest_centroid,
)
from tiny_gpt2 import build_tiny_gpt2

import probe
import probe.pipeline.context
from probe import plugins
from probe.pipeline.config import load_config, validate
from probe.pipeline.models import load_tokenizer
from probe.pipeline.run import run_experiment

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(autouse=True)
def fresh_plugins():
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()


def test_first_party_plugins_are_installed_through_entry_points():
    loaded = dict(plugins.describe())
    assert loaded["head_ablation"] == ["activation_hooks", "register_reporters"]
    assert loaded["attention_report"] == ["register_reporters"]
    assert loaded["nearest_centroid"] == ["register_probes"]
    assert loaded["jsonl_folder"] == ["register_datasets"]
    assert loaded["mdl"] == ["register_measures"]


def test_probe_plugins_env_var_switches_installed_plugins_off(monkeypatch):
    monkeypatch.setenv("PROBE_PLUGINS", "nearest_centroid")
    loaded = dict(plugins.describe())
    assert "nearest_centroid" in loaded and "head_ablation" not in loaded
    assert "probe.builtin.datasets" in loaded  # built-ins always load


def test_every_experiment_config_validates():
    configs = sorted(EXPERIMENTS.glob("*.yaml"))
    assert len(configs) >= 6
    for path in configs:
        config = load_config(path)
        for name in config.reporters:
            plugins.lookup("reporter", name)
        plugins.lookup("probe", config.probe_name)
        plugins.lookup("dataset", config.dataset_name)


# ------------------------------------------------------------------ nearest centroid


def test_nearest_centroid_finds_clusters_and_is_registered():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 20)) * 3
    y = np.repeat(["a", "b", "c"], 40)
    X = centres[np.repeat([0, 1, 2], 40)] + rng.normal(size=(120, 20))
    factory = plugins.lookup("probe", "nearest-centroid").value
    model = factory(seed=0).fit(X[::2], y[::2])
    assert (model.predict(X[1::2]) == y[1::2]).mean() > 0.95
    # cosine: shrinking a vector does not change its sense; euclidean collapses it onto one centroid
    assert np.array_equal(model.predict(X[1::2] * 0.01), model.predict(X[1::2]))
    euclid = nearest_centroid.nearest_centroid_probe(metric="euclidean").fit(X[::2], y[::2])
    assert (euclid.predict(X[1::2]) == y[1::2]).mean() > 0.95
    assert len(set(euclid.predict(X[1::2] * 0.01))) == 1


# ------------------------------------------------------------------ JSONL folder


def _write(path: Path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_folder_reads_one_file_per_word(tmp_path):
    _write(tmp_path / "mole.jsonl", [{"text": "The mole dug.", "target": "mole", "label": "animal"}])
    _write(tmp_path / "bank.jsonl", [{"text": "The bank shut.", "target": "bank", "label": "money"},
                                     {"text": "The river bank.", "target": "bank", "label": "river"}])
    rows = plugins.lookup("dataset", "jsonl-folder").value(path=str(tmp_path))
    assert sorted(rows["label"]) == ["bank:money", "bank:river", "mole:animal"]
    only = jsonl_folder.load_jsonl_folder(str(tmp_path), words=["mole"])
    assert only["label"] == ["mole:animal"]
    with pytest.raises(ValueError, match="no file for word.*tower"):
        jsonl_folder.load_jsonl_folder(str(tmp_path), words=["tower"])
    with pytest.raises(ValueError, match="not a folder"):
        jsonl_folder.load_jsonl_folder(str(tmp_path / "missing"))


# ------------------------------------------------------------------ head ablation


def test_ablate_zeroes_only_the_chosen_head_or_sets_its_mean():
    z = torch.randn(2, 4, 5, 3)
    out = head_ablation.ablate([1])(z, "blocks.0.attn.z")
    assert torch.all(out[:, 1] == 0)
    assert torch.equal(out[:, [0, 2, 3]], z[:, [0, 2, 3]])
    mean = torch.randn(4, 3)
    out = head_ablation.ablate([2], mean)(z, "blocks.0.attn.z")
    assert torch.equal(out[:, 2], mean[2].expand(2, 5, 3))
    assert torch.equal(z, z.clone())  # the input is not modified in place


def test_activation_hooks_ablate_configured_heads(tiny_model):
    from transformers import GPT2Model

    model = probe.swap_attention(GPT2Model.from_pretrained(tiny_model, attn_implementation="eager").eval())
    config = validate({"model": "x", "dataset": "mole", "options": {"ablate_heads": [[1, 0], [1, 3]]}})
    fns = head_ablation.activation_hooks(model, config)
    assert list(fns) == ["blocks.1.attn.z"]
    ids = torch.tensor([[5, 6, 7, 8]])
    with probe.hooks(model, fns), probe.capture(model, "blocks.1.attn.z") as seen:
        model(ids)
    assert torch.all(seen["blocks.1.attn.z"][:, [0, 3]] == 0)
    assert seen["blocks.1.attn.z"][:, 1].abs().sum() > 0


def test_head_ablation_experiment_writes_a_block_by_head_table(tiny_model, tmp_path):
    config = load_config(EXPERIMENTS / "mole-heads.yaml", {
        "model": str(tiny_model), "folds": 3, "controls": ["majority"],
        "options": {"head_ablation": {"mode": "mean", "probe_layer": 2}, "attention_report": {"examples": 1}},
    })
    run_experiment(config, tmp_path / "out", cache_dir=tmp_path / "cache", progress=False)
    table = json.loads((tmp_path / "out" / "head_ablation.json").read_text())
    assert table["mode"] == "mean" and table["probe_layer"] == 2
    assert [(h["block"], h["head"]) for h in table["heads"]] == [(b, h) for b in (0, 1) for h in range(4)]
    assert all(math.isfinite(h["accuracy_drop"]) for h in table["heads"])
    for name in ("head_ablation.png", "head_ablation.csv", "attention_report.md", "attention_entropy.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0

    # A rerun on the full cache reads no weights: every head's vectors and the attention report are kept.
    def no_model(*args, **kwargs):
        raise AssertionError("a rerun on a full cache loaded the model")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(probe.pipeline.context.Services, "load_weights", no_model)
        run_experiment(config, tmp_path / "again", cache_dir=tmp_path / "cache", progress=False)
    for name in ("head_ablation.json", "attention_report.json", "attention_report.md"):
        assert (tmp_path / "again" / name).read_text() == (tmp_path / "out" / name).read_text()

    # A cached entropy entry without its key and digest (damaged, or from an older probe) is computed again.
    (kept,) = [p for p in (tmp_path / "cache" / "attention").glob("*.json") if "mean_entropy_bits" in p.read_text()]
    kept.write_text("{}")
    run_experiment(config, tmp_path / "third", cache_dir=tmp_path / "cache", progress=False)
    third, first = (tmp_path / run / "attention_report.json" for run in ("third", "out"))
    assert third.read_text() == first.read_text()


def test_head_ablation_changes_the_extracted_vectors(tiny_model, tmp_path):
    from transformers import GPT2Model

    from probe.pipeline.extract import extract

    model = probe.swap_attention(GPT2Model.from_pretrained(tiny_model, attn_implementation="eager").eval())
    tokenizer = load_tokenizer(str(tiny_model))
    texts = ["The gardener trapped the mole.", "One mole of gas fills the flask."]
    spans = [(t.index("mole"), t.index("mole") + 4) for t in texts]
    plain = extract(lambda: (model, tokenizer), texts, spans, layers=[1, 2], folder=tmp_path / "a", progress=False)
    with probe.hooks(model, {"blocks.1.attn.z": head_ablation.ablate([0, 1, 2, 3])}):
        ablated = extract(lambda: (model, tokenizer), texts, spans, layers=[1, 2], folder=tmp_path / "b",
                          progress=False)
    assert np.array_equal(plain.layer("target", 1), ablated.layer("target", 1))  # before block 1
    assert not np.allclose(plain.layer("target", 2), ablated.layer("target", 2))


def _block_inputs(tiny_model, block: int, whole_rows: bool = False):
    from transformers import GPT2Model

    from probe.pipeline.partial import capture_block_inputs

    model = probe.swap_attention(GPT2Model.from_pretrained(tiny_model, attn_implementation="eager").eval())
    tokenizer = load_tokenizer(str(tiny_model))
    texts = ["The gardener trapped the mole.", "One mole of gas fills the flask.", "A mole.", "The spy mole hid.",
             "The old mole dug.", "The new mole ran.", "A mole hid."]
    spans = [(t.index("mole"), t.index("mole") + 4) for t in texts]
    return model, capture_block_inputs(model, tokenizer, texts, spans, block, batch_size=3, whole_rows=whole_rows)


def _one_head_at_a_time(model, inputs, heads, replacement, position="target"):
    from probe.pipeline.partial import vectors_at

    out = []
    for head in heads:
        ablation = {} if head is None else {"blocks.0.attn.z": head_ablation.ablate([head], replacement)}
        with probe.hooks(model, ablation):
            out.append(vectors_at(model, inputs, 0, 2, position))
    return out


@pytest.mark.parametrize("mode", ["zero", "mean"])
@pytest.mark.parametrize("position", ["target", "last"])
def test_heads_ablated_in_one_forward_equal_one_head_at_a_time(tiny_model, mode, position):
    """Every head's copy (and an unablated one) of each batch in one forward: each copy's hook ablates only
    its own rows, so each copy's vectors are those of ablating that head alone. Not bit for bit: the float32
    matrix products of a batch 5× taller take other BLAS kernel paths and round the last bits differently
    (about 1e-8 here), far below what an ablation changes."""
    from probe.pipeline.partial import Edit, vectors_of_copies

    model, inputs = _block_inputs(tiny_model, 0, whole_rows=position == "last")
    replacement = torch.randn(4, 8, generator=torch.Generator().manual_seed(0)) if mode == "mean" else None
    heads = [None, 0, 1, 2, 3]
    values = [0.0] * 4 if replacement is None else list(replacement)
    copies = [None if head is None else [Edit("blocks.0.attn.z", head, values[head])] for head in heads]
    together = vectors_of_copies(model, inputs, 0, 2, copies, position, per_forward=len(copies))
    alone = _one_head_at_a_time(model, inputs, heads, replacement, position)
    for head, batched, single in zip(heads, together, alone):
        np.testing.assert_allclose(batched, single, rtol=1e-5, atol=1e-6, err_msg=f"head {head}")
    for ablated in together[1:]:  # each ablation moves the vectors far more than the rounding
        assert np.abs(ablated - together[0]).max() > 1e-3


def test_batched_ablation_does_not_depend_on_copies_per_forward(tiny_model):
    from probe.pipeline.partial import Edit, vectors_of_copies

    model, inputs = _block_inputs(tiny_model, 0)
    copies = [None] + [[Edit("blocks.0.attn.z", head, 0.0)] for head in range(4)]
    runs = {n: vectors_of_copies(model, inputs, 0, 2, copies, per_forward=n) for n in (1, 2, 3, 5, 64)}
    for n, vectors in runs.items():
        for copy, (these, first) in enumerate(zip(vectors, runs[1])):
            # Rounding only, as above: how many copies share a forward changes the products' shapes.
            np.testing.assert_allclose(these, first, rtol=1e-5, atol=1e-6, err_msg=f"per_forward {n}, copy {copy}")
    with pytest.raises(ValueError, match="per_forward is 0"):
        vectors_of_copies(model, inputs, 0, 2, copies, per_forward=0)


def test_a_repeated_batch_lays_its_copies_out_one_after_another(tiny_model):
    from probe.pipeline.partial import repeated

    _, inputs = _block_inputs(tiny_model, 1)
    batch = inputs[0]
    copies = repeated(batch, 3)
    hidden, grown = batch.args[0], copies.args[0]
    n = len(batch.rows)
    assert grown.shape == (3 * n, *hidden.shape[1:]) and copies.rows == list(range(3 * n))
    for copy in range(3):
        assert torch.equal(grown[copy * n:(copy + 1) * n], hidden)
    assert copies.targets == batch.targets * 3 and torch.equal(copies.last, batch.last.repeat(3))


@pytest.mark.parametrize("bad", [0, -2, 1.5, "all", True])
def test_copies_per_forward_must_be_a_whole_number(tiny_model, bad):
    from types import SimpleNamespace

    config = validate({"model": "x", "dataset": "mole", "options": {"head_ablation": {"copies_per_forward": bad}}})
    results = SimpleNamespace(rows=[SimpleNamespace(position="target", subset="all", layer=1, accuracy=0.5)])
    with pytest.raises(ValueError, match="options.head_ablation.copies_per_forward"):
        head_ablation.sweep_settings(results, config)


# ------------------------------------------------------------------ attention report


def test_entropy_in_bits():
    assert attention_report.entropy(np.full(8, 1 / 8)) == pytest.approx(3.0)
    assert attention_report.entropy(np.array([1.0, 0.0, 0.0])) == 0.0


def test_target_patterns_are_distributions_over_the_sentence(tiny_model):
    from transformers import GPT2Model

    model = probe.swap_attention(GPT2Model.from_pretrained(tiny_model, attn_implementation="eager").eval())
    tokenizer = load_tokenizer(str(tiny_model))
    texts = ["A mole.", "The chemist weighed one mole of salt today."]
    spans = [(t.index("mole"), t.index("mole") + 4) for t in texts]
    for tokens, target, patterns in attention_report.target_patterns(model, tokenizer, texts, spans):
        assert tokens[target] == "mole"
        assert patterns.shape == (2, 4, len(tokens))
        np.testing.assert_allclose(patterns.sum(-1), 1.0, rtol=1e-5)
        assert np.all(patterns[..., target + 1:] == 0)  # causal: nothing after the word


def test_mean_z_is_every_tokens_z_averaged(tiny_model):
    from transformers import GPT2Model

    from probe.core.hooks import capture

    model = probe.swap_attention(GPT2Model.from_pretrained(tiny_model).eval())
    tokenizer = load_tokenizer(str(tiny_model))
    texts = ["The gardener trapped the mole.", "A mole.", "The spy mole hid.", "The old mole dug.", "A mole hid."]
    spans = [(t.index("mole"), t.index("mole") + 4) for t in texts]
    means = [head_ablation.mean_z(model, tokenizer, texts, spans, [0, 1], batch_size=size) for size in (1, 2, 16)]
    for block in (0, 1):
        for other in means[1:]:  # other batch sizes: the matrix products round differently, nothing more
            torch.testing.assert_close(other[block], means[0][block], rtol=1e-5, atol=1e-6)
        z = []
        for text in texts:  # one sentence at a time: (heads, tokens, d_head) → every token's (heads, d_head)
            with capture(model, [f"blocks.{block}.attn.z"]) as seen, torch.no_grad():
                model(**tokenizer(text, return_tensors="pt"))
            z.append(seen[f"blocks.{block}.attn.z"][0].transpose(0, 1))
        torch.testing.assert_close(means[0][block], torch.cat(z).mean(0))


def test_relabelled_rows_are_not_shown_with_their_old_labels(tiny_model, tmp_path):
    """The attention caches are keyed by the activations (the texts); what a report says about its rows
    (their labels, which also pick report.html's example rows) must come from the rows themselves."""
    mole = Path(probe.__file__).parent / "builtin" / "data" / "mole.jsonl"
    rows = [json.loads(line) for line in mole.read_text().splitlines() if line.strip()][::4]
    for name, prefix in (("old", ""), ("new", "x-")):
        relabelled = [{**row, "label": prefix + row["label"]} for row in rows]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in relabelled))
        config = validate({"model": str(tiny_model), "dataset": {"name": "file", "path": str(tmp_path / f"{name}.jsonl")},
                           "folds": 3, "controls": ["majority"], "reporters": ["json", "html", "attention-report"],
                           "options": {"attention_report": {"examples": 2}}})
        run_experiment(config, tmp_path / name, cache_dir=tmp_path / "cache", progress=False)
    viewer = json.loads((tmp_path / "new" / "report_data.json").read_text())["attention"]
    report = json.loads((tmp_path / "new" / "attention_report.json").read_text())["examples"]
    assert viewer and all(sentence["label"].startswith("x-") for sentence in viewer)
    assert report and all(example["label"].startswith("x-") for example in report)


def test_nearest_centroid_uses_the_papers_rule_and_names_the_other():
    """The paper's rule: cosine to the mean of each sense's raw training vectors. The earlier rule (Euclidean
    to the mean of unit-length vectors) ranks differently once the vectors' lengths vary."""
    rng = np.random.default_rng(3)
    y = np.repeat(["a", "b"], 30)
    X = rng.normal(size=(60, 8)) + np.where(y == "a", 0.4, -0.4)[:, None]
    X *= rng.uniform(0.1, 10, size=(60, 1))  # lengths from 0.1 to 10 times
    train, test = np.arange(0, 60, 2), np.arange(1, 60, 2)

    def by_hand(normalise_first: bool):
        rows = X[train] / np.linalg.norm(X[train], axis=1, keepdims=True) if normalise_first else X[train]
        centroids = np.stack([rows[y[train] == label].mean(0) for label in ("a", "b")])
        unit = X[test] / np.linalg.norm(X[test], axis=1, keepdims=True)
        if normalise_first:
            distance = np.linalg.norm(unit[:, None, :] - centroids[None], axis=2)
            return np.array(["a", "b"])[distance.argmin(1)]
        cosine = unit @ (centroids / np.linalg.norm(centroids, axis=1, keepdims=True)).T
        return np.array(["a", "b"])[cosine.argmax(1)]

    paper = nearest_centroid.nearest_centroid_probe().fit(X[train], y[train]).predict(X[test])
    earlier = nearest_centroid.nearest_centroid_probe(centroids="normalised").fit(X[train], y[train])
    earlier = earlier.predict(X[test])
    assert np.array_equal(paper, by_hand(False)) and np.array_equal(earlier, by_hand(True))
    # Where they part: sense a's raw mean is pulled toward its one long vector, its unit-length mean is not.
    train_x, train_y = np.array([[10.0, 0, 0], [0, 1, 0], [0, 1, 1], [0, 1, 1]]), np.array(["a", "a", "b", "b"])
    row = np.array([[0, 1, 0.05]])  # cosine to a's raw mean 0.10, to b's 0.74; unit-length: 0.708 from a, 0.719 b
    for centroids, sense in (("raw", "b"), ("normalised", "a")):
        fitted = nearest_centroid.nearest_centroid_probe(centroids=centroids).fit(train_x, train_y)
        assert fitted.predict(row).tolist() == [sense], centroids
    with pytest.raises(ValueError, match="centroids must be one of raw, normalised"):
        nearest_centroid.nearest_centroid_probe(centroids="mean")


def test_the_logistic_probe_scales_only_when_asked():
    from sklearn.linear_model import LogisticRegression

    from probe.science.probes import logistic_probe

    rng = np.random.default_rng(4)
    y = np.repeat(["a", "b", "c"], 40)
    X = rng.normal(size=(120, 6)) * np.array([100, 1, 0.01, 10, 1, 1]) + (y == "a")[:, None] * 0.5
    plain = LogisticRegression(C=1.0, solver="newton-cg", max_iter=2000, random_state=0).fit(X, y)
    unscaled = logistic_probe(C=1.0, scale=False).fit(X, y)
    assert np.array_equal(unscaled.predict_proba(X), plain.predict_proba(X))  # a plain script's probe
    scaled = logistic_probe(C=1.0).fit(X, y)
    assert not np.allclose(scaled.predict_proba(X), plain.predict_proba(X))  # the default standardises first
    with pytest.raises(ValueError, match="scale must be true or false"):
        logistic_probe(scale="yes")
