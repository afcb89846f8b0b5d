"""Hook points beyond attention: embed, ln1/ln2/mlp outputs, resid_mid, ln_final — same names in every family."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import probe
from probe.core.architectures import save_random

IDS = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
SEQUENTIAL = ["gpt2", "llama", "qwen2", "gpt_bigcode"]  # full path and universal path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {name: save_random(name, tmp_path_factory.mktemp(name)) for name in SEQUENTIAL + ["gptj"]}


def swapped(folder):
    return probe.swap_attention(AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval())


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_resid_mid_is_resid_pre_plus_attn_out_and_resid_post_adds_the_mlp(name, folders):
    model = swapped(folders[name])
    with torch.no_grad(), probe.capture(model, ["blocks.*", "embed", "ln_final.out"]) as seen:
        out = model(input_ids=IDS, output_hidden_states=True)
    for i in range(model.config.num_hidden_layers):
        mid = seen[f"blocks.{i}.resid_mid"]
        assert torch.equal(mid, seen[f"blocks.{i}.resid_pre"] + seen[f"blocks.{i}.attn.out"])
        assert torch.equal(seen[f"blocks.{i}.resid_post"], mid + seen[f"blocks.{i}.mlp.out"])
        assert seen[f"blocks.{i}.ln1.out"].shape == seen[f"blocks.{i}.ln2.out"].shape == mid.shape
    assert torch.equal(seen["ln_final.out"], out.hidden_states[-1])  # HF's last hidden state is after the final norm
    assert torch.equal(seen["embed"], model.get_input_embeddings()(IDS))


@pytest.mark.parametrize("name", SEQUENTIAL)
def test_replacing_resid_mid_and_mlp_out(name, folders):
    model = swapped(folders[name])
    with torch.no_grad():
        clean = model(input_ids=IDS).logits
        with probe.hooks(model, {"blocks.0.resid_mid": lambda t, n: t.clone()}):
            assert torch.equal(model(input_ids=IDS).logits, clean)
        zero = lambda t, n: torch.zeros_like(t)  # noqa: E731
        with probe.hooks(model, {"blocks.0.mlp.out": zero}), probe.capture(model, "blocks.0.resid_*") as seen:
            model(input_ids=IDS)
        assert torch.equal(seen["blocks.0.resid_post"], seen["blocks.0.resid_mid"])
        with probe.hooks(model, {"blocks.0.resid_mid": zero}), probe.capture(model, "blocks.0.*") as seen:
            model(input_ids=IDS)
        # ln2 saw the replacement, and the residual stream carries it: resid_post is the MLP of LN(0) alone.
        torch.testing.assert_close(seen["blocks.0.resid_post"], seen["blocks.0.mlp.out"], atol=1e-6, rtol=0)


def test_a_parallel_block_has_no_resid_mid(folders):
    points = probe.hook_points(swapped(folders["gptj"]))
    assert "blocks.0.ln1.out" in points and "blocks.0.mlp.out" in points
    assert "blocks.0.resid_mid" not in points and "blocks.0.ln2.out" not in points
