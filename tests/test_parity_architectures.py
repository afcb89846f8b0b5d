"""Parity for every architecture in probe.core.architectures, from that one table.

Each architecture: tiny config → random init (norms and biases perturbed, so a wrong gain or bias
shows) → save_pretrained → two from_pretrained loads, one eager (the reference) and one swapped.
Every comparison is bitwise (max abs diff 0.0) at non-padding positions, on the CPU or wherever
``pytest --device`` names (e.g. ``pytest --device cuda tests/test_parity_architectures.py``).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

import probe
from probe.core.architectures import ARCHITECTURES

NAMES = sorted(ARCHITECTURES)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    paths = {}

    def path_of(name):
        if name not in paths:
            model = ARCHITECTURES[name].random_model(seed=0)
            with torch.no_grad():
                for param in model.parameters():
                    if param.dim() == 1:  # biases and norm gains: off their trivial 0 / 1
                        param.add_(torch.randn_like(param) * 0.1)
            paths[name] = tmp_path_factory.mktemp(name.replace("-", "_"))
            model.save_pretrained(paths[name])
        return paths[name]

    return path_of


def load(arch, path, device, dtype=torch.float32, swap=False):
    auto = AutoModelForCausalLM if arch.causal else AutoModel
    model = auto.from_pretrained(path, attn_implementation="eager", dtype=dtype).to(device).eval()
    return probe.swap_attention(model) if swap else model


def pair(name, checkpoints, device, dtype=torch.float32):
    arch = ARCHITECTURES[name]
    path = checkpoints(name)
    return arch, load(arch, path, device, dtype), load(arch, path, device, dtype, swap=True)


def batch(padding: str, device, length: int = 9, n_pad: int = 3):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (2, length), generator=generator)
    mask = torch.ones(2, length, dtype=torch.long)
    if padding == "left":
        mask[0, :n_pad] = 0
    elif padding == "right":
        mask[0, -n_pad:] = 0
    return ids.to(device), mask.to(device)


def assert_same_at(real: torch.Tensor, ref: torch.Tensor, got: torch.Tensor, what: str):
    """Bitwise equality where ``real`` (batch, pos) is 1."""
    keep = real.bool()
    diff = (ref[keep].float() - got[keep].float()).abs().max().item()
    assert diff == 0.0, f"{what}: max abs diff {diff}"


@pytest.mark.parametrize("name", NAMES)
def test_the_table_declares_the_adapter_that_takes_each_architecture(name, checkpoints):
    # `probe architectures` lists the declared adapter without building a model: it must be the real one.
    from importlib.metadata import version

    from probe.core.adapters import adapter_for

    arch = ARCHITECTURES[name]
    adapter = adapter_for(load(arch, checkpoints(name), "cpu"))
    assert adapter.name == arch.adapter_on(version("transformers"))


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("name", NAMES)
def test_hidden_states_logits_and_patterns_are_bitwise_equal(name, padding, checkpoints, device):
    arch, ref, swapped = pair(name, checkpoints, device)
    ids, mask = batch(padding, device)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        got = swapped(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    for i, (a, b) in enumerate(zip(expected.hidden_states, got.hidden_states, strict=True)):
        assert_same_at(mask, a, b, f"hidden state {i}")
    if arch.causal:
        assert_same_at(mask, expected.logits, got.logits, "logits")
    for i, (a, b) in enumerate(zip(expected.attentions, got.attentions, strict=True)):
        rows = mask[:, None, :, None].expand(-1, a.shape[1], -1, a.shape[-1]).bool()
        assert (a[rows] - b[rows]).abs().max().item() == 0.0, f"pattern of block {i}"


@pytest.mark.parametrize("name", [n for n in NAMES if ARCHITECTURES[n].causal])
def test_step_by_step_decoding_with_the_cache_and_greedy_generate(name, checkpoints, device):
    _, ref, swapped = pair(name, checkpoints, device)
    ids, mask = batch("left", device)
    with torch.no_grad():
        expected, got = ref(input_ids=ids[:, :5], attention_mask=mask[:, :5]), swapped(
            input_ids=ids[:, :5], attention_mask=mask[:, :5]
        )
        for step in range(5, ids.shape[1]):
            assert_same_at(mask[:, step - 1 : step], expected.logits[:, -1:], got.logits[:, -1:], f"step {step}")
            kwargs = dict(input_ids=ids[:, step : step + 1], attention_mask=mask[:, : step + 1])
            expected = ref(**kwargs, cache=expected.past_key_values)
            got = swapped(**kwargs, cache=got.past_key_values)
        generate = dict(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(ref.generate(**generate), swapped.generate(**generate))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_is_bitwise_equal(name, dtype, checkpoints, device):
    _, ref, swapped = pair(name, checkpoints, device, dtype=dtype)
    ids, mask = batch("right", device)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = swapped(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for i, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert_same_at(mask, a, b, f"{dtype} hidden state {i}")


@pytest.mark.parametrize("name", NAMES)
def test_an_edit_at_the_pattern_changes_the_output(name, checkpoints, device):
    """Liveness: a swap that silently left Hugging Face's attention in charge would fail here."""
    _, _, swapped = pair(name, checkpoints, device)
    ids, mask = batch("none", device)

    def uniform(pattern, hook_name):
        return torch.full_like(pattern, 1.0 / pattern.shape[-1])

    with torch.no_grad():
        before = swapped(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        with probe.hooks(swapped, {"blocks.*.attn.pattern": uniform}):
            after = swapped(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert (before - after).abs().max().item() > 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_restore_gives_back_the_model_as_it_was(name, checkpoints, device):
    arch, ref, swapped = pair(name, checkpoints, device)
    implementation = ref.config._attn_implementation
    probe.restore_attention(swapped)
    assert swapped.config._attn_implementation == implementation
    ids, mask = batch("left", device)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        got = swapped(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    assert_same_at(mask, expected, got, "after restore")


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "gemma2", "gpt_neox", "roberta"])
def test_training_mode_dropout_and_gradients_are_bitwise_equal(name, checkpoints, device):
    arch, ref, swapped = pair(name, checkpoints, device)
    for model in (ref, swapped):
        model.train()
        for module in model.modules():  # attention dropout on, wherever the family keeps its rate
            for attr in ("attention_dropout", "attn_pdrop"):
                if isinstance(getattr(module, attr, None), float):
                    setattr(module, attr, 0.3)
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.3
    ids, mask = batch("right", device)
    results = []
    for model in (ref, swapped):
        torch.manual_seed(0)
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        out[mask.bool()].square().sum().backward()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (expected, expected_grads), (got, got_grads) = results
    assert_same_at(mask, expected, got, "training-mode output")
    assert expected_grads.keys() == got_grads.keys()
    for param_name, grad in expected_grads.items():
        assert torch.equal(grad, got_grads[param_name]), f"gradient of {param_name}"
