"""Named hook points on a swapped GPT-2: reading, replacing, scoping, naming, residual stream."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_bitwise, keep_mask, load, load_pair, make_inputs

import probe
from probe.core.attention import STEPS
from probe.core.hooks import HookPoint

N_HEAD, D_HEAD = 4, 6  # n_embd 24; head 2 exists


@pytest.fixture
def pair(saved_gpt2):
    """(reference, swapped) tiny GPT-2 with 3 layers and 4 heads."""
    return load_pair(saved_gpt2(n_layer=3, n_head=N_HEAD, n_embd=N_HEAD * D_HEAD))


@pytest.fixture
def model(pair):
    return pair[1]


def test_hook_point_names(saved_gpt2):
    model = probe.swap_attention(load(saved_gpt2(add_cross_attention=True, n_layer=2)))
    names = set(probe.hook_points(model))
    expected = set()
    for i in range(2):
        expected |= {f"blocks.{i}.attn.{s}" for s in STEPS}
        expected |= {f"blocks.{i}.cross_attn.{s}" for s in STEPS}
        expected |= {f"blocks.{i}.{p}" for p in ("resid_pre", "resid_mid", "resid_post")}
        expected |= {f"blocks.{i}.{p}.out" for p in ("ln1", "ln2", "mlp")}
    expected |= {"embed", "ln_final.out"}
    assert names == expected
    assert set(STEPS) == {"q", "k", "v", "scores", "masked_scores", "pattern", "z", "head_out", "out"}
    for name, point in probe.hook_points(model).items():
        assert isinstance(point, HookPoint) and point.name == name


def test_unswapped_model_has_no_hook_points(saved_gpt2):
    model = load(saved_gpt2())
    with pytest.raises(ValueError, match="swap_attention"):
        probe.hook_points(model)


def test_no_hook_attached_means_no_point_is_active(model):
    points = probe.hook_points(model)
    assert points and not any(p.active for p in points.values())
    t = torch.randn(2, 3)
    assert HookPoint("x")(t) is t  # an unhooked point is the identity, not a copy
    with probe.capture(model, "blocks.*.attn.pattern") as seen:
        assert seen == {}
        assert sum(p.active for p in points.values()) == 3
    assert seen == {}  # nothing ran
    assert not any(p.active for p in points.values())
    assert not any(p.fns for p in points.values())


def test_capture_pattern_equals_output_attentions(model):
    inputs = make_inputs(padding="left")
    with torch.no_grad(), probe.capture(model, "blocks.1.attn.pattern") as seen:
        out = model(**inputs, output_attentions=True)
    assert list(seen) == ["blocks.1.attn.pattern"]
    assert torch.equal(seen["blocks.1.attn.pattern"], out.attentions[1])
    # After exiting: hooks are gone, the record stays as it was, and later runs add nothing to it.
    recorded = seen["blocks.1.attn.pattern"]
    assert not any(p.active for p in probe.hook_points(model).values())
    with torch.no_grad():
        model(**make_inputs(padding="none", seed=5))
    assert list(seen) == ["blocks.1.attn.pattern"] and seen["blocks.1.attn.pattern"] is recorded


def test_capture_glob_records_every_layer(pair):
    ref, model = pair
    inputs = make_inputs(padding="right")
    with torch.no_grad(), probe.capture(model, "blocks.*.attn.pattern") as seen:
        out = model(**inputs, output_attentions=True)
        expected = ref(**inputs, output_attentions=True)
    assert sorted(seen) == [f"blocks.{i}.attn.pattern" for i in range(3)]
    for i in range(3):
        assert torch.equal(seen[f"blocks.{i}.attn.pattern"], out.attentions[i])
        assert torch.equal(seen[f"blocks.{i}.attn.pattern"], expected.attentions[i])  # right padding: all rows


def test_glob_matches_self_attention_only_and_cross_attention_separately(saved_gpt2):
    ref, model = load_pair(saved_gpt2(add_cross_attention=True, n_layer=2))
    inputs = make_inputs(padding="none")
    enc = torch.randn(3, 4, model.config.n_embd, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), probe.capture(model, ["blocks.*.attn.pattern", "blocks.*.cross_attn.pattern"]) as seen:
        out = model(**inputs, encoder_hidden_states=enc, output_attentions=True)
    assert sorted(seen) == sorted(
        [f"blocks.{i}.attn.pattern" for i in range(2)] + [f"blocks.{i}.cross_attn.pattern" for i in range(2)]
    )
    for i in range(2):
        assert torch.equal(seen[f"blocks.{i}.attn.pattern"], out.attentions[i])
        assert torch.equal(seen[f"blocks.{i}.cross_attn.pattern"], out.cross_attentions[i])
        assert seen[f"blocks.{i}.cross_attn.pattern"].shape == (3, 2, 7, 4)
    handles = probe.add_hook(model, "blocks.*.attn.pattern", lambda t, n: None)
    assert len(handles) == 2
    for h in handles:
        h.remove()


def test_hook_fn_gets_the_name_and_runs_in_order(model):
    calls = []
    with probe.hooks(model, {"blocks.*.attn.z": lambda t, name: calls.append(name)}):
        with torch.no_grad():
            model(**make_inputs())
    assert calls == [f"blocks.{i}.attn.z" for i in range(3)]


def test_intermediate_hook_points_are_consistent(model):
    """q/k/v → scores → masked_scores → pattern → z → out, recomputed by hand from what was captured."""
    inputs = make_inputs(batch=3, length=6, padding="left")
    block = model.transformer.h[1]
    with torch.no_grad(), probe.capture(model, ["blocks.1.*"]) as seen:
        out = model(**inputs, output_attentions=True)
        pre = seen["blocks.1.resid_pre"]
        q, k, v = seen["blocks.1.attn.q"], seen["blocks.1.attn.k"], seen["blocks.1.attn.v"]
        assert q.shape == k.shape == v.shape == (3, N_HEAD, 6, D_HEAD)
        qkv = block.attn.c_attn(block.ln_1(pre)).split(N_HEAD * D_HEAD, dim=-1)
        for got, want in zip((q, k, v), qkv):
            assert torch.equal(got, want.view(3, 6, N_HEAD, D_HEAD).transpose(1, 2))
        scores = seen["blocks.1.attn.scores"]
        assert torch.equal(scores, (q @ k.transpose(-1, -2)) * D_HEAD**-0.5)
        masked = seen["blocks.1.attn.masked_scores"]
        mask = inputs["attention_mask"].bool()
        allowed = torch.ones(6, 6, dtype=torch.bool).tril() & mask[:, None, None, :]
        assert torch.equal(masked[allowed.expand_as(masked)], scores[allowed.expand_as(scores)])
        assert (masked[~allowed.expand_as(masked)] == float("-inf")).all()
        pattern = seen["blocks.1.attn.pattern"]
        assert torch.equal(pattern, out.attentions[1])
        has_key = allowed.any(-1, keepdim=True).expand_as(pattern)
        assert torch.equal(pattern[has_key], torch.softmax(masked, -1)[has_key])
        assert (pattern[~has_key] == 0).all()
        z = seen["blocks.1.attn.z"]
        assert torch.equal(z, pattern @ v)
        merged = z.transpose(1, 2).reshape(3, 6, N_HEAD * D_HEAD)
        assert torch.equal(seen["blocks.1.attn.out"], block.attn.c_proj(merged))


def test_zeroing_one_head_of_z_equals_removing_its_rows_of_c_proj(pair):
    """Zero head 2 of blocks.1.attn.z ≡ zero the rows of blocks.1's c_proj weight that head 2 feeds."""
    ref, model = pair
    inputs = make_inputs(padding="right")

    def zero_head_2(z, name):
        z = z.clone()
        z[:, 2] = 0
        return z

    with torch.no_grad():
        clean = model(**inputs).logits
        with probe.hooks(model, {"blocks.1.attn.z": zero_head_2}):
            hooked = model(**inputs).logits
        ref.transformer.h[1].attn.c_proj.weight[2 * D_HEAD : 3 * D_HEAD] = 0  # Conv1D weight: (in, out)
        manual = ref(**inputs).logits
    assert not torch.equal(hooked, clean)
    assert_bitwise(manual, hooked, "zeroed head 2 vs zeroed c_proj rows")
    # The hook is gone again.
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, clean)


def test_zeroing_every_z_leaves_only_the_c_proj_bias(model):
    inputs = make_inputs(padding="left")
    with torch.no_grad(), probe.hooks(model, {"blocks.*.attn.z": lambda z, n: torch.zeros_like(z)}):
        with probe.capture(model, "blocks.*.attn.out") as seen:
            model(**inputs)
    assert len(seen) == 3
    for i in range(3):
        bias = model.transformer.h[i].attn.c_proj.bias
        assert torch.equal(seen[f"blocks.{i}.attn.out"], bias.expand(3, 7, -1))


def test_replacing_a_pattern(pair):
    """Attend-to-self pattern in block 0: its z is v, and only block 0 onward changes."""
    ref, model = pair
    inputs = make_inputs(padding="none")
    eye = torch.eye(7).expand(3, N_HEAD, 7, 7)
    with torch.no_grad():
        clean = model(**inputs, output_attentions=True)
        with probe.hooks(model, {"blocks.0.attn.pattern": lambda p, n: eye}):
            with probe.capture(model, ["blocks.0.attn.v", "blocks.0.attn.z", "blocks.0.resid_pre"]) as seen:
                hooked = model(**inputs, output_attentions=True)
    assert torch.equal(seen["blocks.0.attn.z"], seen["blocks.0.attn.v"])
    assert torch.equal(hooked.attentions[0], eye)  # output_attentions reports the pattern that was used
    assert not torch.equal(hooked.logits, clean.logits)
    # Block 0's pattern only moves what comes after it: the embeddings are untouched.
    with torch.no_grad():
        emb = ref(**inputs, output_hidden_states=True).hidden_states[0]
    assert torch.equal(seen["blocks.0.resid_pre"], emb)


def test_hooks_context_manager_removes_hooks_on_exit_and_on_exception(model):
    points = probe.hook_points(model)
    inputs = make_inputs()
    with torch.no_grad():
        clean = model(**inputs).logits
    double = {"blocks.0.attn.out": lambda t, n: 2 * t, "blocks.2.resid_post": lambda t, n: t + 1}
    with probe.hooks(model, double):
        assert points["blocks.0.attn.out"].active and points["blocks.2.resid_post"].active
        with torch.no_grad():
            assert not torch.equal(model(**inputs).logits, clean)
    assert not any(p.active for p in points.values())

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with probe.hooks(model, double):
            assert points["blocks.0.attn.out"].active
            raise Boom
    assert not any(p.active for p in points.values())
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, clean)

    # An unknown name in the middle of the mapping: nothing stays attached.
    with pytest.raises(KeyError):
        with probe.hooks(model, {"blocks.0.attn.out": lambda t, n: 2 * t, "blocks.0.attn.nope": lambda t, n: t}):
            pass
    assert not any(p.active for p in points.values())


def test_add_hook_handles_remove(model):
    handles = probe.add_hook(model, "blocks.*.attn.pattern", lambda t, n: None)
    assert len(handles) == 3
    points = probe.hook_points(model)
    assert all(points[f"blocks.{i}.attn.pattern"].active for i in range(3))
    for h in handles:
        h.remove()
        h.remove()  # removing twice is harmless
    assert not any(p.active for p in points.values())


@pytest.mark.parametrize(
    "name, suggestion",
    [
        ("blocks.0.attn.patern", "blocks.0.attn.pattern"),
        ("blocks.1.attn.score", "blocks.1.attn.scores"),
        ("blocks.2.resid_psot", "blocks.2.resid_post"),
    ],
)
def test_unknown_name_is_a_key_error_suggesting_near_names(model, name, suggestion):
    with pytest.raises(KeyError) as info:
        probe.add_hook(model, name, lambda t, n: None)
    assert suggestion in str(info.value)
    assert not any(p.active for p in probe.hook_points(model).values())


def test_glob_that_matches_nothing_is_a_key_error(model):
    with pytest.raises(KeyError):
        probe.add_hook(model, "blocks.*.ffn.out", lambda t, n: None)
    with pytest.raises(KeyError):
        with probe.capture(model, "blocks.9.attn.pattern"):
            pass


@pytest.mark.parametrize(
    "bad",
    [
        lambda t, n: t[..., :-1],
        lambda t, n: t.unsqueeze(0),
        lambda t, n: t.tolist(),
        lambda t, n: 0.0,
    ],
    ids=["narrower", "extra-dim", "list", "float"],
)
def test_hook_returning_a_wrong_shape_is_a_value_error(model, bad):
    with probe.hooks(model, {"blocks.1.attn.z": bad}):
        with pytest.raises(ValueError, match="blocks.1.attn.z"):
            with torch.no_grad():
                model(**make_inputs())


def test_residual_stream_points_match_hidden_states(pair):
    ref, model = pair
    inputs = make_inputs(padding="left")
    keep = keep_mask(inputs)
    with torch.no_grad(), probe.capture(model, ["blocks.*.resid_pre", "blocks.*.resid_post"]) as seen:
        out = model(**inputs, output_hidden_states=True)
        expected = ref(**inputs, output_hidden_states=True)
    assert len(seen) == 6
    for i in range(3):
        assert torch.equal(seen[f"blocks.{i}.resid_pre"], out.hidden_states[i])
        assert_bitwise(expected.hidden_states[i][keep], seen[f"blocks.{i}.resid_pre"][keep], f"resid_pre {i}")
    for i in range(2):
        assert torch.equal(seen[f"blocks.{i + 1}.resid_pre"], seen[f"blocks.{i}.resid_post"])
        assert torch.equal(seen[f"blocks.{i}.resid_post"], out.hidden_states[i + 1])
    # The last hidden state has the final LayerNorm applied on top of the last resid_post.
    assert torch.equal(model.transformer.ln_f(seen["blocks.2.resid_post"]), out.hidden_states[3])


def test_replacing_resid_post_changes_everything_downstream(model):
    inputs = make_inputs(padding="none")
    delta = torch.randn(model.config.n_embd, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with probe.capture(model, ["blocks.*.resid_pre", "blocks.*.resid_post"]) as clean:
            clean_logits = model(**inputs).logits
        with probe.hooks(model, {"blocks.0.resid_post": lambda t, n: t + delta}):
            with probe.capture(model, ["blocks.*.resid_pre", "blocks.*.resid_post"]) as seen:
                logits = model(**inputs).logits
        # Upstream untouched; block 1 receives the edited stream; the logits move.
        assert torch.equal(seen["blocks.0.resid_pre"], clean["blocks.0.resid_pre"])
        assert torch.equal(seen["blocks.1.resid_pre"], clean["blocks.0.resid_post"] + delta)
        assert not torch.equal(seen["blocks.2.resid_post"], clean["blocks.2.resid_post"])
        assert not torch.equal(logits, clean_logits)
        # Editing the last block's output: logits are exactly lm_head(ln_f(resid_post + delta)).
        with probe.hooks(model, {"blocks.2.resid_post": lambda t, n: t + delta}):
            edited = model(**inputs).logits
        manual = model.lm_head(model.transformer.ln_f(clean["blocks.2.resid_post"] + delta))
    assert_bitwise(manual, edited, "logits after editing the last resid_post")


def test_capture_without_detach_keeps_the_graph(model):
    inputs = make_inputs()
    with probe.capture(model, "blocks.0.attn.pattern", detach=False) as seen:
        loss = model(**inputs).logits.sum()
    pattern = seen["blocks.0.attn.pattern"]
    assert pattern.requires_grad
    (grad,) = torch.autograd.grad(loss, pattern)
    assert grad.shape == pattern.shape and grad.abs().sum() > 0
    with probe.capture(model, "blocks.0.attn.pattern") as seen:
        model(**inputs)
    assert not seen["blocks.0.attn.pattern"].requires_grad


def test_deepcopy_of_a_swapped_model_has_its_own_residual_hook_points(model):
    clone = copy.deepcopy(model)
    inputs = make_inputs()
    calls = []
    probe.add_hook(model, "blocks.0.resid_post", lambda t, n: calls.append(("original", n)))
    with torch.no_grad(), probe.capture(clone, ["blocks.0.resid_post", "blocks.0.attn.pattern"]) as seen:
        clone(**inputs)
    assert calls == [], "a hook on the original model fired while the copy ran"
    assert sorted(seen) == ["blocks.0.attn.pattern", "blocks.0.resid_post"]
