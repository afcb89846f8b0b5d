"""The fast path: steps 2–5 by scaled_dot_product_attention while nothing needs the pattern."""

from __future__ import annotations

import pytest
import torch
from test_parity_architectures import batch, checkpoints, load  # noqa: F401  (fixture)

import probe
from probe.core.architectures import ARCHITECTURES

NAMES = ["gpt2", "llama", "qwen2", "bert", "gpt_neox", "cohere", "mpt", "gpt_neo", "bloom", "falcon", "gemma2"]


def relative_diff(a, b, keep):
    a, b = a[keep].double(), b[keep].double()
    return ((a - b).abs().max() / max(1.0, a.abs().max().item())).item()


@pytest.mark.parametrize("name", NAMES)
def test_fast_path_matches_eager_up_to_rounding_and_hooks_bring_back_the_exact_path(name, checkpoints, device):
    arch = ARCHITECTURES[name]
    path = checkpoints(name)
    reference, fast = load(arch, path, device), probe.swap_attention(load(arch, path, device), fast=True)
    ids, mask = batch("left", device)
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = fast(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        assert all(not torch.isnan(h).any() for h in got)
        assert max(relative_diff(a, b, mask.bool()) for a, b in zip(expected, got)) <= 1e-5
        with probe.capture(fast, "blocks.*.attn.pattern") as seen:  # a pattern hook: the exact path again
            exact = fast(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        assert seen
        for a, b in zip(expected, exact):
            assert torch.equal(a[mask.bool()], b[mask.bool()])


def test_fast_path_is_off_by_default_and_can_be_switched(checkpoints, device):
    arch = ARCHITECTURES["qwen2"]
    model = probe.swap_attention(load(arch, checkpoints("qwen2"), device))
    assert not any(core.fast for core in model._probe_swap.cores)
    probe.set_fast_attention(model)
    assert all(core.fast for core in model._probe_swap.cores)
    probe.set_fast_attention(model, False)
    assert not any(core.fast for core in model._probe_swap.cores)


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_a_replacement_takes_the_training_mode_of_the_module_it_replaces(name, checkpoints, device):
    arch = ARCHITECTURES[name]
    model = load(arch, checkpoints(name), device)  # from_pretrained: eval mode
    probe.swap_attention(model)
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(core.training for core in model._probe_swap.cores if isinstance(core, torch.nn.Module))
