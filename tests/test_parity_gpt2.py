"""probe's GPT-2 attention against Hugging Face's: bit-identical to eager in every mode, close to sdpa.

"Bit-identical" means torch.equal (max abs diff exactly 0.0) — no tolerance. Where a query has no key to
attend to (left padding), Hugging Face's eager attention spreads it uniformly over masked keys and probe
gives zeros; those rows (and the positions whose outputs depend on them) are compared separately.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import (
    PAD_ID,
    TINY,
    assert_bitwise,
    assert_patterns_bitwise,
    keep_mask,
    load,
    load_pair,
    make_inputs,
    make_mask,
    max_diff,
    positions_from_mask,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

import probe

# Tiny configurations covering every scaling path; d_head 12 and 6 have a 1/sqrt(d) that is not a power of 2.
VARIANTS = {
    "base-d12": {},
    "d24": dict(n_embd=48, n_head=2),
    "d8-3heads": dict(n_embd=24, n_head=3),
    "d6-4heads": dict(n_embd=24, n_head=4),
    "no-scale": dict(scale_attn_weights=False),
    "inverse-layer-idx": dict(scale_attn_by_inverse_layer_idx=True, n_layer=3),
    "reorder-upcast": dict(reorder_and_upcast_attn=True),
    "upcast+inverse-layer": dict(reorder_and_upcast_attn=True, scale_attn_by_inverse_layer_idx=True, n_layer=3),
    "upcast+no-scale": dict(reorder_and_upcast_attn=True, scale_attn_weights=False),
}
SOME_VARIANTS = ["base-d12", "no-scale", "inverse-layer-idx", "reorder-upcast", "upcast+inverse-layer"]
PADDINGS = ["none", "left", "right"]


def run(model, inputs, **kwargs):
    return model(**inputs, output_attentions=True, output_hidden_states=True, **kwargs)


def assert_outputs_bitwise(ref_out, probe_out, keep, *, cross=False, what=""):
    """Logits, every hidden state and every attention pattern bit-identical at the kept positions."""
    assert_bitwise(ref_out.logits[keep], probe_out.logits[keep], f"{what} logits")
    if ref_out.hidden_states is not None:
        assert len(ref_out.hidden_states) == len(probe_out.hidden_states)
        for i, (a, b) in enumerate(zip(ref_out.hidden_states, probe_out.hidden_states)):
            assert_bitwise(a[keep], b[keep], f"{what} hidden_states[{i}]")
    assert_patterns_bitwise(ref_out.attentions, probe_out.attentions, keep, f"{what} attentions")
    if cross:
        # Cross-attention: every decoder query sees the (non-padding) encoder keys, so no row is all-zero;
        # rows of padding decoder queries carry different hidden states and are not compared.
        assert_patterns_bitwise(
            ref_out.cross_attentions, probe_out.cross_attentions, keep, f"{what} cross_attentions", rest_zero=False
        )


def assert_cache_bitwise(ref_cache, probe_cache, key_keep, what=""):
    """Every layer's cached keys and values equal at the kept key positions (batch, key)."""
    assert type(ref_cache) is type(probe_cache), f"{what}: {type(ref_cache)} vs {type(probe_cache)}"
    if isinstance(ref_cache, EncoderDecoderCache):
        assert_cache_bitwise(ref_cache.self_attention_cache, probe_cache.self_attention_cache, key_keep, what)
        for i, (a, b) in enumerate(zip(ref_cache.cross_attention_cache.layers, probe_cache.cross_attention_cache.layers)):
            assert_bitwise(a.keys, b.keys, f"{what} cross cache[{i}].keys")
            assert_bitwise(a.values, b.values, f"{what} cross cache[{i}].values")
        assert dict(ref_cache.is_updated) == dict(probe_cache.is_updated)
        return
    assert len(ref_cache.layers) == len(probe_cache.layers) > 0
    for i, (a, b) in enumerate(zip(ref_cache.layers, probe_cache.layers)):
        for field in ("keys", "values"):
            x, y = getattr(a, field), getattr(b, field)
            assert x.shape == y.shape, f"{what} cache[{i}].{field}: {tuple(x.shape)} vs {tuple(y.shape)}"
            # (batch, head, key, d) → select kept keys per row
            assert_bitwise(x.transpose(1, 2)[key_keep], y.transpose(1, 2)[key_keep], f"{what} cache[{i}].{field}")


# --- plain forward ----------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_bitwise_vs_eager(gpt2_pair, variant, padding):
    ref, swapped = gpt2_pair(**VARIANTS[variant])
    inputs = make_inputs(batch=3, length=7, padding=padding)
    keep = keep_mask(inputs)
    with torch.no_grad():
        a, b = run(ref, inputs), run(swapped, inputs)
    assert_outputs_bitwise(a, b, keep, what=variant)
    n_layer = ref.config.n_layer
    assert len(b.attentions) == n_layer and len(b.hidden_states) == n_layer + 1
    if padding == "left":
        # The left-padding rows do differ (uniform vs zero): the comparison above really is selective.
        assert (~keep).any()
        assert not torch.equal(a.attentions[0], b.attentions[0])
    if padding == "right":
        assert keep.all()  # every right-padding query still sees the real tokens before it


def test_forward_without_cache_and_without_outputs(gpt2_pair):
    ref, swapped = gpt2_pair()
    inputs = make_inputs(padding="left")
    keep = keep_mask(inputs)
    with torch.no_grad():
        a = ref(**inputs, use_cache=False)
        b = swapped(**inputs, use_cache=False)
    assert a.cache is None and b.cache is None
    assert_bitwise(a.logits[keep], b.logits[keep], "logits")
    # output_attentions off: nothing recorded, and identical logits.
    assert not b.attentions and not b.hidden_states


def test_tuple_output_bitwise(gpt2_pair):
    """return_dict=False goes through the same attention."""
    ref, swapped = gpt2_pair()
    inputs = make_inputs(padding="right")
    with torch.no_grad():
        a = ref(**inputs, return_dict=False, use_cache=False)
        b = swapped(**inputs, return_dict=False, use_cache=False)
    assert_bitwise(a[0], b[0], "logits (tuple output)")


# --- GPT-2 small's real shape (once; the checkpoint is ~500 MB) -------------------------------------


@pytest.fixture(scope="session")
def gpt2_small_pair(saved_gpt2):
    config = GPT2Config()  # 12 layers, 768 wide, 12 heads, 50257 vocab; random init
    assert (config.n_layer, config.n_embd, config.n_head) == (12, 768, 12)
    path = saved_gpt2(GPT2LMHeadModel, config=config)
    pair = load_pair(path)
    shutil.rmtree(path)  # ~500 MB; both loads are done (pytest keeps the last few temp dirs around)
    return pair


def test_gpt2_small_shape_bitwise(gpt2_small_pair):
    ref, swapped = gpt2_small_pair
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, ref.config.vocab_size, (2, 6), generator=g)
    mask = make_mask(2, 6, [2, 0], "left")
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    keep = keep_mask(inputs)
    with torch.no_grad():
        a, b = run(ref, inputs), run(swapped, inputs)
        assert_outputs_bitwise(a, b, keep, what="gpt2-small")
        assert len(b.attentions) == 12 and b.attentions[0].shape == (2, 12, 6, 6)
        # One cached decoding step on top.
        nxt = a.logits[:, -1].argmax(-1, keepdim=True)
        mask2 = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
        pos2 = inputs["position_ids"][:, -1:] + 1
        step = dict(input_ids=nxt, attention_mask=mask2, position_ids=pos2)
        a2 = ref(**step, cache=a.cache, output_attentions=True)
        b2 = swapped(**step, cache=b.cache, output_attentions=True)
    assert_bitwise(a2.logits, b2.logits, "gpt2-small step logits")
    assert_patterns_bitwise(a2.attentions, b2.attentions, None, "gpt2-small step attentions")


# --- KV cache, step by step -------------------------------------------------------------------------


def decode_steps(model, inputs, n_steps, first_kwargs=None, step_kwargs=None):
    """Prefill with ``inputs``, then feed the reference's greedy tokens one at a time through the cache."""
    outs = [model(**inputs, use_cache=True, output_attentions=True, **(first_kwargs or {}))]
    mask = inputs.get("attention_mask")
    pos = inputs.get("position_ids")
    for t in range(n_steps):
        cache = outs[-1].cache
        token = STEP_TOKENS[t % len(STEP_TOKENS)].expand(inputs["input_ids"].shape[0], 1)
        step = {"input_ids": token}
        if mask is not None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            step["attention_mask"] = mask
        if pos is not None:
            pos = pos[:, -1:] + 1
            step["position_ids"] = pos
        outs.append(model(**step, cache=cache, use_cache=True, output_attentions=True, **(step_kwargs or {})))
    return outs


STEP_TOKENS = [torch.tensor([[5]]), torch.tensor([[17]]), torch.tensor([[3]]), torch.tensor([[41]])]


@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("variant", SOME_VARIANTS)
def test_kv_cache_decoding_bitwise(gpt2_pair, variant, padding):
    ref, swapped = gpt2_pair(**VARIANTS[variant])
    inputs = make_inputs(batch=3, length=5, padding=padding)
    keep = keep_mask(inputs)
    with torch.no_grad():
        ref_outs = decode_steps(ref, inputs, 4)
        probe_outs = decode_steps(swapped, inputs, 4)
    assert isinstance(probe_outs[0].cache, DynamicCache)
    assert_outputs_bitwise(ref_outs[0], probe_outs[0], keep, what="prefill")
    for t, (a, b) in enumerate(zip(ref_outs[1:], probe_outs[1:]), start=1):
        assert b.logits.shape == (3, 1, TINY["vocab_size"])
        assert_bitwise(a.logits, b.logits, f"step {t} logits")
        # The new query is a real token: its whole row (over all cached keys) must match.
        assert_patterns_bitwise(a.attentions, b.attentions, None, f"step {t} attentions")
        assert b.attentions[0].shape[-1] == 5 + t
    # The cache object is updated in place from step to step: compare its final contents.
    key_keep = torch.cat([keep, torch.ones(3, 4, dtype=torch.bool)], dim=1)
    assert_cache_bitwise(ref_outs[-1].cache, probe_outs[-1].cache, key_keep, "final cache")
    assert probe_outs[-1].cache.get_seq_length() == 5 + 4


# --- cross-attention --------------------------------------------------------------------------------

CROSS_VARIANTS = {
    "cross": dict(add_cross_attention=True),
    "cross+upcast+inverse-layer": dict(
        add_cross_attention=True, reorder_and_upcast_attn=True, scale_attn_by_inverse_layer_idx=True
    ),
    "cross+no-scale": dict(add_cross_attention=True, scale_attn_weights=False),
}


def encoder_inputs(batch=3, n_enc=6, width=TINY["n_embd"]):
    g = torch.Generator().manual_seed(7)
    states = torch.randn(batch, n_enc, width, generator=g)
    mask = make_mask(batch, n_enc, [2, 0, 4][:batch], "right")  # padded encoder rows
    return {"encoder_hidden_states": states, "encoder_attention_mask": mask}


@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("variant", list(CROSS_VARIANTS))
def test_cross_attention_bitwise(gpt2_pair, variant, padding):
    ref, swapped = gpt2_pair(**CROSS_VARIANTS[variant])
    # The cross-attention slots are swapped as well.
    assert type(swapped.transformer.h[0].crossattention).__module__.startswith("probe")
    inputs = make_inputs(batch=3, length=5, padding=padding)
    keep = keep_mask(inputs)
    enc = encoder_inputs()
    with torch.no_grad():
        a = run(ref, inputs, **enc, use_cache=False)
        b = run(swapped, inputs, **enc, use_cache=False)
    assert_outputs_bitwise(a, b, keep, cross=True, what=variant)
    assert len(b.cross_attentions) == ref.config.n_layer
    # Padded encoder keys get exactly zero weight from every decoder query.
    for pattern in b.cross_attentions:
        assert torch.equal(pattern[0, :, :, 4:], torch.zeros_like(pattern[0, :, :, 4:]))
        assert torch.equal(pattern[2, :, :, 2:], torch.zeros_like(pattern[2, :, :, 2:]))


@pytest.mark.parametrize("variant", list(CROSS_VARIANTS))
def test_cross_attention_kv_cache_bitwise(gpt2_pair, variant):
    ref, swapped = gpt2_pair(**CROSS_VARIANTS[variant])
    inputs = make_inputs(batch=3, length=4, padding="left")
    keep = keep_mask(inputs)
    enc = encoder_inputs()
    with torch.no_grad():
        ref_outs = decode_steps(ref, inputs, 3, enc, enc)
        probe_outs = decode_steps(swapped, inputs, 3, enc, enc)
    assert isinstance(probe_outs[0].cache, EncoderDecoderCache)
    assert_outputs_bitwise(ref_outs[0], probe_outs[0], keep, what="prefill")
    assert_patterns_bitwise(
        ref_outs[0].cross_attentions, probe_outs[0].cross_attentions, keep, "prefill cross", rest_zero=False
    )
    for t, (a, b) in enumerate(zip(ref_outs[1:], probe_outs[1:]), start=1):
        assert_bitwise(a.logits, b.logits, f"step {t} logits")
        assert_patterns_bitwise(a.attentions, b.attentions, None, f"step {t} attentions")
        assert_patterns_bitwise(a.cross_attentions, b.cross_attentions, None, f"step {t} cross_attentions")
        assert b.cross_attentions[0].shape[-2:] == (1, 6)
    key_keep = torch.cat([keep, torch.ones(3, 3, dtype=torch.bool)], dim=1)
    assert_cache_bitwise(ref_outs[-1].cache, probe_outs[-1].cache, key_keep, "final cache")
    assert probe_outs[-1].cache.get_seq_length() == 4 + 3


def test_cross_attention_model_without_encoder_states(gpt2_pair):
    """A cross-attention model called without encoder states skips cross-attention, like HF."""
    ref, swapped = gpt2_pair(**CROSS_VARIANTS["cross"])
    inputs = make_inputs(padding="right")
    with torch.no_grad():
        a, b = run(ref, inputs), run(swapped, inputs)
    assert_outputs_bitwise(a, b, keep_mask(inputs))


# --- training mode: dropout and gradients -----------------------------------------------------------

DROPOUT = dict(attn_pdrop=0.3, resid_pdrop=0.2, embd_pdrop=0.1)


def labels_for(inputs):
    """Language-modelling labels that only score logits at kept positions.

    The loss shifts by one: logits at t predict the label at t + 1, so the label right after the last
    left-padding position is ignored too (that logit comes from a padding query, which legitimately
    differs between Hugging Face and probe).
    """
    labels = inputs["input_ids"].clone()
    keep = keep_mask(inputs)
    labels = labels.masked_fill(~keep, -100)
    labels[:, 1:] = labels[:, 1:].masked_fill(~keep[:, :-1], -100)
    return labels


def forward_backward(model, inputs, seed, **kwargs):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(**inputs, labels=labels_for(inputs), output_attentions=True, **kwargs)
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return out, grads


def assert_grads_bitwise(ref_grads, probe_grads):
    assert sorted(ref_grads) == sorted(probe_grads), "parameter names differ"
    for name, g in ref_grads.items():
        assert g is not None, f"reference has no gradient for {name}"
        assert probe_grads[name] is not None, f"probe has no gradient for {name}"
        assert_bitwise(g, probe_grads[name], f"grad of {name}")
    assert any(g.abs().sum() > 0 for name, g in probe_grads.items() if ".attn.c_attn." in name)


@pytest.mark.parametrize("padding", ["none", "left", "right"])
@pytest.mark.parametrize("variant", ["base-d12", "inverse-layer-idx", "upcast+inverse-layer", "d6-4heads"])
def test_gradients_bitwise(gpt2_pair, variant, padding):
    ref, swapped = gpt2_pair(**VARIANTS[variant])
    inputs = make_inputs(batch=3, length=6, padding=padding)
    a, ga = forward_backward(ref, inputs, seed=0, use_cache=False)
    b, gb = forward_backward(swapped, inputs, seed=0, use_cache=False)
    assert_bitwise(a.loss, b.loss, "loss")
    assert_grads_bitwise(ga, gb)
    for name, g in gb.items():
        assert torch.isfinite(g).all(), f"non-finite gradient in {name}"


@pytest.mark.parametrize("variant", ["base-d12", "reorder-upcast", "cross"])
def test_training_mode_dropout_same_seed_bitwise(gpt2_pair, variant):
    overrides = {**(VARIANTS[variant] if variant in VARIANTS else CROSS_VARIANTS[variant]), **DROPOUT}
    ref, swapped = gpt2_pair(**overrides)
    ref.train(), swapped.train()
    inputs = make_inputs(batch=3, length=6, padding="left")
    keep = keep_mask(inputs)
    extra = encoder_inputs() if "cross" in variant else {}
    a, ga = forward_backward(ref, inputs, seed=1234, use_cache=False, **extra)
    b, gb = forward_backward(swapped, inputs, seed=1234, use_cache=False, **extra)
    assert_bitwise(a.logits[keep], b.logits[keep], "training logits")
    assert_patterns_bitwise(a.attentions, b.attentions, keep, "training attentions (after dropout)", rest_zero=False)
    assert_bitwise(a.loss, b.loss, "training loss")
    assert_grads_bitwise(ga, gb)
    # Dropout really was on: another seed gives other logits, and eval mode differs from training mode.
    with torch.no_grad():
        torch.manual_seed(99)
        c = swapped(**inputs, use_cache=False, **extra)
        swapped.eval()
        d = swapped(**inputs, use_cache=False, **extra)
    assert not torch.equal(c.logits[keep], b.logits[keep].detach())
    assert not torch.equal(d.logits[keep], b.logits[keep].detach())


# --- generate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["base-d12", "upcast+inverse-layer", "d24"])
def test_greedy_generate_token_identical(gpt2_pair, variant):
    ref, swapped = gpt2_pair(**VARIANTS[variant])
    inputs = make_inputs(batch=3, length=5, padding="left")
    inputs.pop("position_ids")  # generate computes them from the mask
    kwargs = dict(
        max_new_tokens=8,
        min_new_tokens=8,
        do_sample=False,
        pad_token_id=PAD_ID,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        a = ref.generate(**inputs, **kwargs)
        b = swapped.generate(**inputs, **kwargs)
    assert a.sequences.shape == (3, 13)
    assert torch.equal(a.sequences, b.sequences), f"{a.sequences}\n{b.sequences}"
    for t, (x, y) in enumerate(zip(a.scores, b.scores)):
        assert_bitwise(x, y, f"scores at step {t}")


def test_generate_without_padding_token_identical(gpt2_pair):
    ref, swapped = gpt2_pair()
    ids = make_inputs(batch=2, length=4)["input_ids"]
    kwargs = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=PAD_ID)
    with torch.no_grad():
        a, b = ref.generate(ids, **kwargs), swapped.generate(ids, **kwargs)
    assert a.shape == (2, 10) and torch.equal(a, b)


# --- half precision ---------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["none", "left"])
@pytest.mark.parametrize("variant", ["base-d12", "reorder-upcast", "inverse-layer-idx"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_bitwise_vs_eager_same_dtype(gpt2_pair, dtype, variant, padding):
    ref, swapped = gpt2_pair(**VARIANTS[variant], load_kwargs={"dtype": dtype})
    assert ref.dtype == swapped.dtype == dtype
    inputs = make_inputs(batch=3, length=6, padding=padding)
    keep = keep_mask(inputs)
    with torch.no_grad():
        a, b = run(ref, inputs), run(swapped, inputs)
    assert b.logits.dtype == dtype
    assert_outputs_bitwise(a, b, keep, what=f"{dtype}")


def test_half_precision_kv_cache_bitwise(gpt2_pair):
    ref, swapped = gpt2_pair(load_kwargs={"dtype": torch.bfloat16})
    inputs = make_inputs(batch=3, length=4, padding="left")
    with torch.no_grad():
        ref_outs, probe_outs = decode_steps(ref, inputs, 3), decode_steps(swapped, inputs, 3)
    for t, (a, b) in enumerate(zip(ref_outs[1:], probe_outs[1:]), start=1):
        assert_bitwise(a.logits, b.logits, f"bf16 step {t} logits")


# --- sdpa -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("variant", ["base-d12", "d24", "inverse-layer-idx", "no-scale"])
def test_close_to_sdpa(gpt2_pair, variant, padding):
    ref, swapped = gpt2_pair(**VARIANTS[variant], reference="sdpa")
    assert ref.config._attn_implementation == "sdpa"
    inputs = make_inputs(batch=3, length=7, padding=padding)
    keep = keep_mask(inputs)
    with torch.no_grad():
        a = ref(**inputs, output_hidden_states=True)
        b = swapped(**inputs, output_hidden_states=True)
    assert max_diff(a.logits[keep], b.logits[keep]) <= 1e-5
    for x, y in zip(a.hidden_states, b.hidden_states):
        assert max_diff(x[keep], y[keep]) <= 1e-5


def test_close_to_sdpa_with_cache_and_cross_attention(gpt2_pair):
    ref, swapped = gpt2_pair(**CROSS_VARIANTS["cross"], reference="sdpa")
    inputs = make_inputs(batch=3, length=4, padding="left")
    keep = keep_mask(inputs)
    enc = encoder_inputs()
    with torch.no_grad():
        ref_outs = decode_steps(ref, inputs, 3, enc, enc)
        probe_outs = decode_steps(swapped, inputs, 3, enc, enc)
    assert max_diff(ref_outs[0].logits[keep], probe_outs[0].logits[keep]) <= 1e-5
    for a, b in zip(ref_outs[1:], probe_outs[1:]):
        assert max_diff(a.logits, b.logits) <= 1e-5


def test_swapping_an_sdpa_loaded_model_gives_eager_exact_attention(saved_gpt2):
    """A model loaded with the default sdpa implementation and then swapped is bit-identical to eager."""
    path = saved_gpt2()
    ref = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    swapped = GPT2LMHeadModel.from_pretrained(path, attn_implementation="sdpa").eval()
    probe.swap_attention(swapped)
    for padding in PADDINGS:
        inputs = make_inputs(padding=padding)
        with torch.no_grad():
            a, b = run(ref, inputs), run(swapped, inputs)
        assert_outputs_bitwise(a, b, keep_mask(inputs), what=f"sdpa-loaded, {padding}")


# --- property-based ---------------------------------------------------------------------------------


@st.composite
def shapes(draw):
    n_head = draw(st.integers(1, 3))
    d_head = draw(st.sampled_from([4, 6, 8, 12]))
    batch = draw(st.integers(1, 3))
    length = draw(st.integers(1, 8))
    side = draw(st.sampled_from(["none", "left", "right"]))
    pads = [0] * batch
    if side != "none":
        # Every row keeps at least one real token.
        pads = draw(st.lists(st.integers(0, length - 1), min_size=batch, max_size=batch))
    flags = draw(
        st.fixed_dictionaries(
            {"reorder_and_upcast_attn": st.booleans(), "scale_attn_by_inverse_layer_idx": st.booleans()}
        )
    )
    return n_head, d_head, batch, length, side, pads, flags


def property_inputs(batch, length, side, pads, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, TINY["vocab_size"], (batch, length), generator=g)
    if side == "none":
        return {"input_ids": ids}
    mask = make_mask(batch, length, pads, side)
    inputs = {"input_ids": ids.masked_fill(mask == 0, PAD_ID), "attention_mask": mask}
    if side == "left":
        inputs["position_ids"] = positions_from_mask(mask)
    return inputs


@settings(derandomize=True, deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(shapes())
def test_property_forward_bitwise(gpt2_pair, shape):
    n_head, d_head, batch, length, side, pads, flags = shape
    ref, swapped = gpt2_pair(n_head=n_head, n_embd=n_head * d_head, **flags)
    inputs = property_inputs(batch, length, side, pads)
    keep = keep_mask(inputs)
    with torch.no_grad():
        a, b = run(ref, inputs), run(swapped, inputs)
    assert_outputs_bitwise(a, b, keep, what=str(shape))
    for pattern in b.attentions:
        assert pattern.shape == (batch, n_head, length, length)


@settings(derandomize=True, deadline=None, max_examples=20, suppress_health_check=[HealthCheck.too_slow])
@given(shapes(), st.integers(1, 3))
def test_property_cached_decoding_bitwise(gpt2_pair, shape, n_steps):
    n_head, d_head, batch, length, side, pads, flags = shape
    if side == "right":
        side = "left"  # decoding continues after the prompt: pad on the left
    ref, swapped = gpt2_pair(n_head=n_head, n_embd=n_head * d_head, **flags)
    inputs = property_inputs(batch, length, side, pads)
    with torch.no_grad():
        ref_outs = decode_steps(ref, inputs, n_steps)
        probe_outs = decode_steps(swapped, inputs, n_steps)
    assert_bitwise(ref_outs[0].logits[keep_mask(inputs)], probe_outs[0].logits[keep_mask(inputs)], "prefill")
    for t, (a, b) in enumerate(zip(ref_outs[1:], probe_outs[1:]), start=1):
        assert_bitwise(a.logits, b.logits, f"step {t} logits")
        assert_patterns_bitwise(a.attentions, b.attentions, None, f"step {t} attentions")


# --- more ways in: activation checkpointing, autocast, casting after the swap, generate with encoder ----


def test_activation_checkpointing_training_bitwise(gpt2_pair):
    ref, swapped = gpt2_pair(**DROPOUT)
    for model in (ref, swapped):
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
        model.train()
    inputs = make_inputs(batch=3, length=6, padding="right")
    a, ga = forward_backward(ref, inputs, seed=7, use_cache=False)
    b, gb = forward_backward(swapped, inputs, seed=7, use_cache=False)
    assert_bitwise(a.logits, b.logits, "logits")
    assert_bitwise(a.loss, b.loss, "loss")
    assert_grads_bitwise(ga, gb)


@pytest.mark.parametrize("variant", ["base-d12", "reorder-upcast"])
def test_cpu_autocast_bf16_bitwise(gpt2_pair, variant):
    ref, swapped = gpt2_pair(**VARIANTS[variant])
    inputs = make_inputs(padding="left")
    keep = keep_mask(inputs)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = run(ref, inputs), run(swapped, inputs)
    assert b.logits.dtype == torch.bfloat16
    assert_outputs_bitwise(a, b, keep, what="autocast")


def test_casting_a_swapped_model_to_bf16_matches_a_bf16_eager_load(saved_gpt2):
    path = saved_gpt2()
    ref = load(path, dtype=torch.bfloat16)
    swapped = probe.swap_attention(load(path)).to(torch.bfloat16)
    inputs = make_inputs(padding="left")
    with torch.no_grad():
        a, b = run(ref, inputs), run(swapped, inputs)
    assert_outputs_bitwise(a, b, keep_mask(inputs), what="cast after swap")


def test_greedy_generate_with_encoder_states_token_identical(gpt2_pair):
    ref, swapped = gpt2_pair(**CROSS_VARIANTS["cross+upcast+inverse-layer"])
    inputs = make_inputs(batch=3, length=5, padding="left")
    inputs.pop("position_ids")
    kwargs = dict(
        **encoder_inputs(),
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
        pad_token_id=PAD_ID,
        output_scores=True,
        return_dict_in_generate=True,
    )
    with torch.no_grad():
        a, b = ref.generate(**inputs, **kwargs), swapped.generate(**inputs, **kwargs)
    assert torch.equal(a.sequences, b.sequences)
    for t, (x, y) in enumerate(zip(a.scores, b.scores)):
        assert_bitwise(x, y, f"scores at step {t}")


def test_cached_cross_attention_does_not_recompute_encoder_keys(saved_gpt2):
    """Once the cache holds the encoder's keys/values, later steps read them instead of projecting again."""
    from transformers import GPT2LMHeadModel
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    import probe

    path = saved_gpt2(GPT2LMHeadModel, n_layer=2, n_embd=24, n_head=4, vocab_size=64, n_positions=32,
                      add_cross_attention=True, bos_token_id=0, eos_token_id=0)
    model = probe.swap_attention(GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval())
    calls = []
    model.transformer.h[0].crossattention.c_attn.register_forward_hook(lambda *a: calls.append(1))
    encoder = torch.randn(1, 5, 24)
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), encoder_hidden_states=encoder, cache=cache, use_cache=True)
        model(torch.tensor([[4]]), encoder_hidden_states=encoder, cache=cache, use_cache=True)
    assert len(calls) == 1
