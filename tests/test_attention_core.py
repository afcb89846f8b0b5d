"""The standalone attention core, MaskedMultiHeadAttention, against a textbook implementation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probe import MaskedMultiHeadAttention
from probe.core.attention import STEPS


def make_core(n_heads=4, d_head=6, d_model=16, seed=0, **kwargs):
    torch.manual_seed(seed)
    core = MaskedMultiHeadAttention(n_heads, d_head, d_model=d_model, **kwargs).eval()
    with torch.no_grad():  # non-zero biases, so that a missing bias shows
        core.W_qkv.bias.normal_(0, 0.3)
        core.W_o.bias.normal_(0, 0.3)
    return core


def naive_attention(core, x, attention_mask=None, context=None):
    """Textbook multi-head attention in float64, one head, one query, one key at a time.

    Returns (out, pattern); a query that may attend to no key gets an all-zero pattern row.
    """
    x = x.detach().double()
    ctx = x if context is None else context.detach().double()
    n_heads, n_kv, d = core.n_heads, core.n_kv_heads, core.d_head
    W = core.W_qkv.weight.detach().double()
    b = core.W_qkv.bias.detach().double()
    Wq, Wk, Wv = W[: n_heads * d], W[n_heads * d : (n_heads + n_kv) * d], W[(n_heads + n_kv) * d :]
    bq, bk, bv = b[: n_heads * d], b[n_heads * d : (n_heads + n_kv) * d], b[(n_heads + n_kv) * d :]
    batch, n_q, _ = x.shape
    n_k = ctx.shape[1]
    n_past = n_k - n_q
    group = n_heads // n_kv
    pattern = torch.zeros(batch, n_heads, n_q, n_k, dtype=torch.float64)
    heads_out = []
    for h in range(n_heads):
        kv = h // group  # query head h reads key/value head h // group
        q = x @ Wq[h * d : (h + 1) * d].T + bq[h * d : (h + 1) * d]
        k = ctx @ Wk[kv * d : (kv + 1) * d].T + bk[kv * d : (kv + 1) * d]
        v = ctx @ Wv[kv * d : (kv + 1) * d].T + bv[kv * d : (kv + 1) * d]
        z = torch.zeros(batch, n_q, d, dtype=torch.float64)
        for bi in range(batch):
            for i in range(n_q):
                allowed = []
                for j in range(n_k):
                    ok = (not core.causal) or j <= n_past + i
                    if attention_mask is not None:
                        m = attention_mask[bi if attention_mask.shape[0] > 1 else 0]
                        m = m[h if m.shape[0] > 1 else 0]
                        ok = ok and bool(m[i if m.shape[0] > 1 else 0, j])
                    allowed.append(ok)
                scores = [float(q[bi, i] @ k[bi, j]) * core.scale for j in range(n_k)]
                if not any(allowed):
                    continue  # nothing to attend to: zeros
                top = max(s for s, ok in zip(scores, allowed) if ok)
                weights = [math.exp(s - top) if ok else 0.0 for s, ok in zip(scores, allowed)]
                total = sum(weights)
                for j in range(n_k):
                    pattern[bi, h, i, j] = weights[j] / total
                    z[bi, i] += pattern[bi, h, i, j] * v[bi, j]
        heads_out.append(z)
    merged = torch.cat(heads_out, dim=-1)
    out = merged @ core.W_o.weight.detach().double().T + core.W_o.bias.detach().double()
    return out, pattern


def assert_close_to_naive(core, x, attention_mask=None, context=None, atol=2e-6):
    with torch.no_grad():
        out, pattern = core(x, attention_mask, context=context)
    ref_out, ref_pattern = naive_attention(core, x, attention_mask, context)
    assert out.dtype == x.dtype and pattern.dtype == x.dtype
    assert not torch.isnan(out).any() and not torch.isnan(pattern).any()
    torch.testing.assert_close(pattern.double(), ref_pattern, rtol=0, atol=atol)
    torch.testing.assert_close(out.double(), ref_out, rtol=0, atol=atol)
    return out, pattern


def padding_mask(batch, n, pads, side="left"):
    """(batch, 1, 1, n) bool key mask: True = may attend."""
    keep = torch.ones(batch, n, dtype=torch.bool)
    for b, p in enumerate(pads):
        if p:
            if side == "left":
                keep[b, :p] = False
            else:
                keep[b, n - p :] = False
    return keep[:, None, None, :]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("masking", ["none", "left-padding", "right-padding", "per-query"])
@pytest.mark.parametrize("heads", [(4, 6), (3, 12), (1, 8), (2, 5)], ids=lambda h: f"{h[0]}x{h[1]}")
def test_matches_naive_attention(causal, masking, heads):
    n_heads, d_head = heads
    core = make_core(n_heads, d_head, d_model=16, causal=causal)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 16, generator=g)
    mask = None
    if masking == "left-padding":
        mask = padding_mask(3, 5, [2, 0, 1], "left")
    elif masking == "right-padding":
        mask = padding_mask(3, 5, [2, 0, 1], "right")
    elif masking == "per-query":
        mask = torch.rand(3, 1, 5, 5, generator=g) > 0.3
    assert_close_to_naive(core, x, mask)


def test_default_scale_is_one_over_sqrt_d_head_and_custom_scale_is_used():
    assert make_core(2, 12).scale == 12**-0.5
    core = make_core(2, 12, d_model=16, scale=0.05)
    assert core.scale == 0.05
    assert_close_to_naive(core, torch.randn(2, 4, 16))


def test_fully_masked_query_row_gives_zeros_and_no_nan():
    core = make_core(2, 6, d_model=16, causal=True)
    x = torch.randn(2, 4, 16, requires_grad=True)
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
    mask[0, :, 2, :] = False  # query 2 of row 0 may see nothing
    mask[1, :, :, 0] = False  # row 1: key 0 is padding → query 0 (causal) sees nothing
    out, pattern = core(x, mask)
    assert not torch.isnan(pattern).any() and not torch.isnan(out).any()
    assert torch.equal(pattern[0, :, 2], torch.zeros_like(pattern[0, :, 2]))
    assert torch.equal(pattern[1, :, 0], torch.zeros_like(pattern[1, :, 0]))
    # Nothing attended: the head outputs are 0, so the output is exactly the output bias.
    assert torch.equal(out[0, 2], core.W_o.bias) and torch.equal(out[1, 0], core.W_o.bias)
    # Every other row is a proper distribution.
    sums = pattern.sum(-1)
    sums[0, :, 2] = 1
    sums[1, :, 0] = 1
    torch.testing.assert_close(sums, torch.ones_like(sums))
    assert_close_to_naive(core, x.detach(), mask)
    # And no NaN flows back through the masked rows either.
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in core.parameters())


def test_all_keys_masked_everywhere_gives_zero_pattern():
    core = make_core(2, 6, d_model=16, causal=False)
    mask = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    out, pattern = core(torch.randn(1, 3, 16), mask)
    assert torch.equal(pattern, torch.zeros_like(pattern))
    assert torch.equal(out, core.W_o.bias.expand_as(out))


@pytest.mark.parametrize("n_q, n_k", [(1, 5), (2, 6), (3, 3), (4, 9)])
def test_causal_mask_with_kv_offset(n_q, n_k):
    """With n_k > n_q (cached keys), query i sits at position n_past + i and sees keys 0 .. n_past + i."""
    core = make_core(2, 6, d_model=16, causal=True)
    n_past = n_k - n_q
    allowed = core.allowed_keys(n_q, n_k, None, device="cpu")
    for i in range(n_q):
        for j in range(n_k):
            assert bool(allowed[i, j]) == (j <= n_past + i), (i, j)
    # Through the forward: keys and values from a longer context.
    x, context = torch.randn(2, n_q, 16), torch.randn(2, n_k, 16)
    _, pattern = assert_close_to_naive(core, x, context=context)
    visible = pattern > 0
    expected = torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_past)
    assert torch.equal(visible, expected.expand_as(visible))
    # The offset combines with a padding mask.
    mask = padding_mask(2, n_k, [1, 0], "left")
    _, pattern = assert_close_to_naive(core, x, mask, context=context)
    assert (pattern[0, :, :, 0] == 0).all()


def test_bidirectional_core_sees_every_key():
    core = make_core(2, 6, d_model=16, causal=False)
    assert core.allowed_keys(3, 5, None, device="cpu") is None
    _, pattern = assert_close_to_naive(core, torch.randn(2, 3, 16), context=torch.randn(2, 5, 16))
    assert (pattern > 0).all()


@pytest.mark.parametrize(
    "shape",
    [(2, 1, 4, 5), (2, 1, 3, 4), (2, 4, 4), (4, 4), (2, 1, 1, 4, 4)],
    ids=["keys+1", "queries-1", "3d", "2d", "5d"],
)
def test_bool_mask_of_wrong_shape_is_a_value_error(shape):
    core = make_core(2, 6, d_model=16)
    with pytest.raises(ValueError, match="attention_mask"):
        core(torch.randn(2, 4, 16), torch.ones(shape, dtype=torch.bool))


@pytest.mark.parametrize("shape", [(2, 1, 4, 4), (2, 1, 1, 4), (1, 1, 4, 4), (2, 2, 4, 4)])
def test_bool_masks_that_broadcast_are_accepted(shape):
    core = make_core(2, 6, d_model=16)
    mask = torch.ones(shape, dtype=torch.bool)
    mask[..., 0] = False
    assert_close_to_naive(core, torch.randn(2, 4, 16), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.long, torch.uint8])
def test_non_bool_mask_is_a_type_error(dtype):
    core = make_core(2, 6, d_model=16)
    with pytest.raises(TypeError, match="bool"):
        core(torch.randn(2, 4, 16), torch.zeros(2, 1, 4, 4, dtype=dtype))


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 2), (4, 1), (6, 3), (6, 2)])
def test_grouped_query_attention(n_heads, n_kv_heads):
    core = make_core(n_heads, 4, d_model=16, n_kv_heads=n_kv_heads)
    assert core.W_qkv.out_features == (n_heads + 2 * n_kv_heads) * 4
    x = torch.randn(2, 5, 16)
    mask = padding_mask(2, 5, [1, 0])
    seen = {}
    for step in ("k", "pattern"):
        getattr(core, f"hook_{step}").add(lambda t, name: seen.__setitem__(name, t))
    out, pattern = assert_close_to_naive(core, x, mask)
    assert pattern.shape == (2, n_heads, 5, 5) and out.shape == (2, 5, 16)
    assert seen["k"].shape == (2, n_kv_heads, 5, 4)  # the k hook sees the shared heads, before repetition
    # And with keys/values from a longer context (cross-attention / cached keys).
    assert_close_to_naive(core, x, padding_mask(2, 7, [3, 0]), context=torch.randn(2, 7, 16))


def test_every_step_has_a_hook_point_and_hooks_can_replace():
    core = make_core(2, 6, d_model=16)
    for step in STEPS:
        assert getattr(core, f"hook_{step}").name == step
    x = torch.randn(1, 3, 16)
    uniform = torch.tril(torch.ones(3, 3)) / torch.arange(1, 4).unsqueeze(1)
    core.hook_pattern.add(lambda p, name: uniform.expand_as(p))
    seen = {}
    core.hook_v.add(lambda v, name: seen.__setitem__("v", v))
    core.hook_z.add(lambda z, name: seen.__setitem__("z", z))
    with torch.no_grad():
        out, pattern = core(x)
    assert torch.equal(pattern, uniform.expand_as(pattern))
    torch.testing.assert_close(seen["z"], uniform @ seen["v"])


def test_attention_dropout_only_in_training_mode():
    core = make_core(2, 6, d_model=16, attn_dropout=0.5)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        _, eval_pattern = core(x)
        core.train()
        torch.manual_seed(0)
        out1, train_pattern = core(x)
        torch.manual_seed(0)
        out2, _ = core(x)
    assert torch.equal(out1, out2)  # same seed, same dropout mask
    zeros = (train_pattern == 0) & (eval_pattern > 0)
    assert zeros.any()
    kept = train_pattern > 0
    torch.testing.assert_close(train_pattern[kept], 2 * eval_pattern[kept])


def test_scores_in_float32_for_half_inputs():
    core = make_core(2, 8, d_model=16, scores_in_float32=True).to(torch.bfloat16)
    seen = {}
    core.hook_scores.add(lambda s, name: seen.__setitem__("scores", s))
    x = torch.randn(2, 4, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        out, pattern = core(x, padding_mask(2, 4, [1, 0]))
    assert seen["scores"].dtype == torch.float32
    assert pattern.dtype == out.dtype == torch.bfloat16
    assert not torch.isnan(out).any()
    assert (pattern[0, :, 0] == 0).all()


@settings(derandomize=True, deadline=None, max_examples=30)
@given(
    batch=st.integers(1, 3),
    n_q=st.integers(1, 5),
    extra_k=st.integers(0, 3),
    n_kv_heads=st.sampled_from([1, 2]),
    group=st.integers(1, 3),
    d_head=st.sampled_from([1, 3, 4, 6, 12]),
    causal=st.booleans(),
    pads=st.lists(st.integers(0, 8), min_size=3, max_size=3),
)
def test_property_matches_naive(batch, n_q, extra_k, n_kv_heads, group, d_head, causal, pads):
    n_heads = n_kv_heads * group
    n_k = n_q + extra_k
    core = make_core(n_heads, d_head, d_model=8, causal=causal, n_kv_heads=n_kv_heads)
    g = torch.Generator().manual_seed(batch * 100 + n_q)
    x = torch.randn(batch, n_q, 8, generator=g)
    context = torch.randn(batch, n_k, 8, generator=g) if extra_k else None
    mask = padding_mask(batch, n_k, [p % (n_k + 1) for p in pads[:batch]], "left")  # may mask whole rows
    assert_close_to_naive(core, x, mask, context=context)


def test_a_float_mask_is_checked_in_every_forward_and_outside_one(saved_gpt2):
    """bool_mask reads a float mask's values once per forward of a swapped model (the model hands the same
    mask to every block) and forgets it when the forward ends, raises, or is nested in another one; a mask
    changed in place between calls is refused, inference-mode tensors (no in-place version) included."""
    from transformers import GPT2LMHeadModel

    import probe
    from probe.core.adapters.base import bool_mask

    model = probe.swap_attention(GPT2LMHeadModel.from_pretrained(saved_gpt2(), attn_implementation="eager").eval())
    ids = torch.tensor([[5, 9, 14, 3]])
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 1:].triu_(1).masked_fill_(torch.ones(4, 3, dtype=torch.bool).triu(0), torch.finfo(mask.dtype).min)
    checked = []
    checks = model._probe_swap.mask_checks  # this swap's own record, handed to each of its cores
    assert all(core.mask_checks is checks for core in model._probe_swap.cores)

    def watch(pattern, name):
        checked.append(checks.seen(mask))

    with torch.inference_mode(), probe.hooks(model, {"blocks.*.attn.pattern": watch}):
        model(ids, attention_mask=mask)
        assert checked == [True, True]  # checked in block 0, remembered for block 1
        assert not checks.in_forward and not checks.checked  # forgotten when the forward ended
        mask[0, 0, 3, 1] = -2.5  # an additive bias, which a bool mask cannot express
        with pytest.raises(ValueError, match="additive biases"):
            model(ids, attention_mask=mask)
        assert not checks.in_forward  # the end ran although the forward raised
        with pytest.raises(ValueError, match="additive biases"):
            bool_mask(mask, checks)  # outside a forward: checked on every call
    assert model._forward_pre_hooks and next(iter(model._forward_pre_hooks.values())).__name__ == "_forward_begins"
    probe.restore_attention(model)
    assert not model._forward_pre_hooks and not model._forward_hooks
    with pytest.raises(ValueError, match="additive biases"):
        bool_mask(torch.full((1, 1, 2, 2), 0.5))


def test_a_causal_core_with_more_queries_than_keys_gives_zeros_not_nan():
    """Causal masking alone leaves a query no key when there are more queries than keys."""
    core = make_core(2, 4, d_model=8)
    for fast in (False, True):
        core.fast = fast
        out, _ = core(torch.randn(1, 5, 8), context=torch.randn(1, 3, 8))
        assert not torch.isnan(out).any()


def test_each_swapped_model_keeps_its_own_mask_checks(saved_gpt2):
    """The record of masks checked in a forward belongs to one swap: a second model, or a deep copy, has its
    own, so a forward of one never makes another skip a check."""
    import copy

    from transformers import GPT2LMHeadModel

    import probe

    load = lambda: GPT2LMHeadModel.from_pretrained(saved_gpt2(), attn_implementation="eager").eval()  # noqa: E731
    first, second = probe.swap_attention(load()), probe.swap_attention(load())
    twin = copy.deepcopy(first)
    records = [m._probe_swap.mask_checks for m in (first, second, twin)]
    assert len({id(record) for record in records}) == 3
    assert all(core.mask_checks is twin._probe_swap.mask_checks for core in twin._probe_swap.cores)
    ids = torch.tensor([[5, 9, 14, 3]])
    with torch.inference_mode():
        assert torch.equal(twin(ids).logits, first(ids).logits)

