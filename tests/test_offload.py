"""Swapped attention under accelerate's dispatch: a model offloaded to disk block by block gives the
same hidden states, patterns and hook points as one in memory."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import probe
from probe.core.architectures import save_random


@pytest.mark.parametrize("name", ["gpt2", "llama", "cohere"])  # hand-written, mapped and universal paths
def test_disk_offloaded_model_matches_the_in_memory_one(name, tmp_path):
    save_random(name, tmp_path / "model")
    in_memory = AutoModelForCausalLM.from_pretrained(tmp_path / "model", attn_implementation="eager")
    offloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "model", attn_implementation="eager", device_map="auto",
        max_memory={"cpu": "120KB"}, offload_folder=tmp_path / "offload",
    )
    assert "disk" in set(map(str, offloaded.hf_device_map.values()))
    probe.swap_attention(in_memory)
    probe.swap_attention(offloaded)
    ids = torch.randint(3, 100, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        with probe.capture(in_memory, "blocks.*.attn.pattern") as expected_patterns:
            expected = in_memory(input_ids=ids, output_hidden_states=True).hidden_states
        with probe.capture(offloaded, "blocks.*.attn.pattern") as patterns:
            got = offloaded(input_ids=ids, output_hidden_states=True).hidden_states
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    assert patterns.keys() == expected_patterns.keys() and len(patterns) == 2
    assert all(torch.equal(expected_patterns[k], patterns[k]) for k in patterns)
