"""Hook points around the KV cache and W_O, on the full path (GPT-2, Llama) and the universal path (Qwen2)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import probe
from probe.core.architectures import save_random

NAMES = ["gpt2", "llama", "qwen2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {name: save_random(name, tmp_path_factory.mktemp(name)) for name in NAMES}


def swapped(folder):
    return probe.swap_attention(AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval())


IDS = torch.randint(3, 100, (1, 6), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", NAMES)
def test_an_edited_key_is_what_the_cache_keeps_and_the_next_step_sees(name, folders):
    model = swapped(folders[name])
    edited = {}

    def double_keys(k, hook_name):
        edited["k"] = k * 2
        return edited["k"]

    with torch.no_grad():
        with probe.hooks(model, {"blocks.0.attn.k": double_keys}):
            prefill = model(input_ids=IDS[:, :5], use_cache=True)
        cached = prefill.past_key_values.layers[0].keys
        assert torch.equal(cached, edited["k"])  # this step's keys, as edited, are what got stored
        with probe.capture(model, ["blocks.0.attn.q", "blocks.0.attn.scores", "blocks.0.attn.k"]) as seen:
            model(input_ids=IDS[:, 5:6], cache=prefill.past_key_values)
    assert seen["blocks.0.attn.k"].shape[-2] == 1  # the next step's k point shows only its own new key
    q = seen["blocks.0.attn.q"]
    heads, kv_heads = q.shape[1], cached.shape[1]
    keys = cached.repeat_interleave(heads // kv_heads, dim=1)
    expected_scores = (q @ keys.transpose(-1, -2))[..., :5] * q.shape[-1] ** -0.5
    torch.testing.assert_close(seen["blocks.0.attn.scores"][..., :5], expected_scores)


@pytest.mark.parametrize("name", NAMES)
def test_head_out_sums_to_out_and_an_edit_there_is_used(name, folders):
    model = swapped(folders[name])
    with torch.no_grad():
        with probe.capture(model, ["blocks.1.attn.head_out", "blocks.1.attn.out"]) as seen:
            clean = model(input_ids=IDS).logits
        per_head, out = seen["blocks.1.attn.head_out"], seen["blocks.1.attn.out"]
        assert per_head.shape[:3] == (1, IDS.shape[1], model.config.num_attention_heads)
        bias = out - per_head.sum(dim=2)
        torch.testing.assert_close(bias, bias[:, :1].expand_as(bias), atol=1e-5, rtol=1e-5)  # same b_O everywhere

        def drop_head_0(t, hook_name):
            t = t.clone()
            t[:, :, 0] = 0
            return t

        with probe.hooks(model, {"blocks.1.attn.head_out": lambda t, n: t.clone()}):
            assert torch.equal(model(input_ids=IDS).logits, clean)  # an identity edit changes nothing
        with probe.hooks(model, {"blocks.1.attn.head_out": drop_head_0}):
            assert not torch.equal(model(input_ids=IDS).logits, clean)


def test_a_model_whose_attention_another_tool_replaced_is_refused(folders):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("other_tool", sdpa_attention_forward)
    AttentionMaskInterface.register("other_tool", sdpa_mask)
    model = AutoModelForCausalLM.from_pretrained(folders["qwen2"], attn_implementation="other_tool")
    with pytest.raises(ValueError, match="other_tool"):
        probe.swap_attention(model)
    assert not probe.is_swapped(model) and model.config._attn_implementation == "other_tool"


def test_family_steps_have_their_own_hook_points(tmp_path):
    """Gemma 2's soft-capping and GPT-OSS's sinks are named steps; editing them changes the output."""
    for name, point, edit in [
        ("gemma2", "capped_scores", lambda t, n: t * 0),
        ("gpt_oss", "sink_logits", lambda t, n: torch.full_like(t, float("-inf"))),
    ]:
        model = swapped(save_random(name, tmp_path / name))
        assert f"blocks.0.attn.{point}" in probe.hook_points(model)
        with torch.no_grad():
            clean = model(input_ids=IDS).logits
            with probe.hooks(model, {f"blocks.*.attn.{point}": edit}):
                edited = model(input_ids=IDS).logits
        assert not torch.equal(clean, edited), name


def test_a_failing_universal_swap_leaves_nothing_behind(folders, monkeypatch):
    from probe.core import interface

    model = AutoModelForCausalLM.from_pretrained(save_random("cohere", folders["qwen2"].parent / "cohere"))
    calls = []

    def numerics_failing_on_second(attention):
        calls.append(attention)
        if len(calls) == 2:
            raise interface.UnsupportedNumerics("no numerics for the second block")
        return real(attention)

    real = interface.numerics_of
    monkeypatch.setattr(interface, "numerics_of", numerics_failing_on_second)
    implementation = model.config._attn_implementation
    with pytest.raises(interface.UnsupportedNumerics):
        probe.swap_attention(model)
    assert not probe.is_swapped(model) and model.config._attn_implementation == implementation
    assert not any("_probe_core" in m.__dict__ for m in model.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
