"""swap_attention / restore_attention / swapped_attention: what gets replaced, what is shared, what fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import torch
from conftest import TINY, assert_bitwise, assert_patterns_bitwise, load, make_inputs
from safetensors.torch import load_file
from torch import nn
from transformers import (
    GPT2Config,
    GPT2DoubleHeadsModel,
    GPT2ForQuestionAnswering,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2LMHeadModel,
    GPT2Model,
    XGLMConfig,
    XGLMModel,
)
from transformers.models.gpt2 import modeling_gpt2 as hf_gpt2

import probe
from probe.core.adapters import builtin_adapters
from probe.core.adapters.base import SUPPORTED_TRANSFORMERS
from probe.core.adapters.gpt2 import GPT2Adapter
from probe.core.attention import MaskedMultiHeadAttention

SIX_CLASSES = [
    GPT2Model,
    GPT2LMHeadModel,
    GPT2DoubleHeadsModel,
    GPT2ForSequenceClassification,
    GPT2ForTokenClassification,
    GPT2ForQuestionAnswering,
]


def attention_modules(model):
    """(name, module) of every attention slot: blocks.{i}.attn and, with cross-attention, crossattention."""
    found = []
    for i, block in enumerate(model.base_model.h):
        found.append((f"h.{i}.attn", block.attn))
        if hasattr(block, "crossattention"):
            found.append((f"h.{i}.crossattention", block.crossattention))
    return found


def inputs_for(model_cls, batch=2, length=5):
    inputs = make_inputs(batch=batch, length=length, padding="right")
    if model_cls is GPT2DoubleHeadsModel:
        # (batch, num_choices, length) and the classification token of each choice.
        n_choices = 2
        inputs = {
            "input_ids": inputs["input_ids"].unsqueeze(1).expand(batch, n_choices, length).contiguous(),
            "mc_token_ids": torch.full((batch, n_choices), length - 1),
        }
    return inputs


def assert_model_outputs_bitwise(a, b):
    """Every tensor in the output (logits of any head, hidden states, attentions) is bit-identical."""
    compared = 0
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            assert_bitwise(value, other, key)
            compared += 1
        elif key in ("hidden_states", "attentions"):
            assert len(value) == len(other) > 0
            for i, (x, y) in enumerate(zip(value, other)):
                assert_bitwise(x, y, f"{key}[{i}]")
            compared += 1
    assert compared >= 3, f"only {compared} outputs compared: {list(a.keys())}"


@pytest.mark.parametrize("model_cls", SIX_CLASSES, ids=lambda c: c.__name__)
def test_every_gpt2_class_swaps_and_matches_eager(saved_gpt2, model_cls):
    path = saved_gpt2(model_cls)
    ref = load(path, model_cls)
    swapped = load(path, model_cls)
    originals = attention_modules(swapped)
    assert probe.swap_attention(swapped) is swapped
    assert probe.is_swapped(swapped)
    for (name, original), (_, new) in zip(originals, attention_modules(swapped)):
        assert isinstance(new, MaskedMultiHeadAttention), name
        assert not isinstance(new, hf_gpt2.GPT2Attention), name
        assert new is not original
    assert not any(isinstance(m, hf_gpt2.GPT2Attention) for m in swapped.modules())
    inputs = inputs_for(model_cls)
    with torch.no_grad():
        a = ref(**inputs, output_attentions=True, output_hidden_states=True)
        b = swapped(**inputs, output_attentions=True, output_hidden_states=True)
    assert_model_outputs_bitwise(a, b)


@pytest.mark.parametrize("overrides", [{}, {"add_cross_attention": True}], ids=["self", "cross"])
def test_parameters_shared_not_copied(saved_gpt2, overrides):
    model = load(saved_gpt2(**overrides))
    before = {
        name: (m.c_attn.weight.data_ptr(), m.c_proj.weight.data_ptr(), m.c_attn.bias.data_ptr())
        for name, m in attention_modules(model)
    }
    submodules = {name: (m.c_attn, m.c_proj, getattr(m, "q_attn", None)) for name, m in attention_modules(model)}
    n_params = sum(p.numel() for p in model.parameters())
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    n_tensors = len(list(model.parameters()))
    buffers = {name: b.data_ptr() for name, b in model.named_buffers()}
    probe.swap_attention(model)
    after = {
        name: (m.c_attn.weight.data_ptr(), m.c_proj.weight.data_ptr(), m.c_attn.bias.data_ptr())
        for name, m in attention_modules(model)
    }
    assert after == before
    for name, m in attention_modules(model):
        c_attn, c_proj, q_attn = submodules[name]
        assert m.c_attn is c_attn and m.c_proj is c_proj
        if q_attn is not None:
            assert m.q_attn is q_attn
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert sum(p.numel() * p.element_size() for p in model.parameters()) == n_bytes
    assert len(list(model.parameters())) == n_tensors
    assert {name: b.data_ptr() for name, b in model.named_buffers()} == buffers


@pytest.mark.parametrize("overrides", [{}, {"add_cross_attention": True}], ids=["self", "cross"])
def test_state_dict_keys_identical_before_and_after_swap(saved_gpt2, overrides):
    model = load(saved_gpt2(**overrides))
    before = model.state_dict()
    probe.swap_attention(model)
    after = model.state_dict()
    assert sorted(before) == sorted(after)
    if not overrides:
        assert list(before) == list(after)  # same order, too
    for key, tensor in before.items():
        assert after[key].data_ptr() == tensor.data_ptr(), key
        assert torch.equal(after[key], tensor), key
    # The state dict loads back into the swapped model, strictly.
    missing, unexpected = model.load_state_dict(before, strict=True)
    assert not missing and not unexpected


@pytest.mark.parametrize("overrides", [{}, {"add_cross_attention": True}], ids=["self", "cross"])
def test_save_pretrained_of_swapped_model_writes_the_same_checkpoint(saved_gpt2, tmp_path, overrides):
    path = saved_gpt2(**overrides)
    plain = load(path)
    swapped = probe.swap_attention(load(path))
    plain.save_pretrained(tmp_path / "plain")
    swapped.save_pretrained(tmp_path / "swapped")
    a = load_file(tmp_path / "plain" / "model.safetensors")
    b = load_file(tmp_path / "swapped" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert probe.is_swapped(swapped)  # saving does not undo the swap
    # It loads back as an ordinary Hugging Face model with identical outputs.
    reloaded = load(tmp_path / "swapped")
    assert not probe.is_swapped(reloaded)
    assert all(isinstance(m, hf_gpt2.GPT2Attention) for _, m in attention_modules(reloaded))
    inputs = make_inputs(padding="right")
    extra = {}
    if overrides:
        extra = {"encoder_hidden_states": torch.randn(3, 4, plain.config.n_embd)}
    with torch.no_grad():
        x = plain(**inputs, **extra, output_attentions=True)
        y = reloaded(**inputs, **extra, output_attentions=True)
        z = swapped(**inputs, **extra, output_attentions=True)
    assert_bitwise(x.logits, y.logits, "reloaded logits")
    assert_bitwise(x.logits, z.logits, "swapped logits")


@pytest.mark.parametrize("overrides", [{}, {"add_cross_attention": True}], ids=["self", "cross"])
def test_restore_attention_puts_back_the_very_same_modules(saved_gpt2, overrides):
    path = saved_gpt2(**overrides)
    ref = load(path)
    model = load(path)
    inputs = make_inputs(padding="left")
    with torch.no_grad():
        expected = model(**inputs, output_attentions=True)  # lets HF install its own recorders first
    originals = attention_modules(model)
    hook_counts = [
        (len(b._forward_pre_hooks), len(b._forward_hooks)) for b in model.base_model.h
    ]
    probe.swap_attention(model)
    assert all(m is not o for (_, m), (_, o) in zip(attention_modules(model), originals))
    assert probe.restore_attention(model) is model
    assert not probe.is_swapped(model)
    assert not hasattr(model, "_probe_swap")
    for (name, restored), (_, original) in zip(attention_modules(model), originals):
        assert restored is original, name
    # probe's residual hooks are gone from every block.
    assert [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in model.base_model.h] == hook_counts
    with pytest.raises(ValueError):
        probe.hook_points(model)
    with torch.no_grad():
        after = model(**inputs, output_attentions=True)
        reference = ref(**inputs, output_attentions=True)
    assert_bitwise(expected.logits, after.logits, "logits after restore")
    assert_bitwise(reference.logits, after.logits, "logits after restore vs reference")
    # HF's output_attentions still works on the restored originals (uniform padding rows and all).
    for x, y in zip(reference.attentions, after.attentions):
        assert_bitwise(x, y, "attentions after restore")
    # And it can be swapped again.
    probe.swap_attention(model)
    assert probe.is_swapped(model)
    with torch.no_grad():
        again = model(**inputs, output_attentions=True)
    keep = inputs["attention_mask"].bool()
    assert_bitwise(reference.logits[keep], again.logits[keep], "logits after re-swap")
    assert_patterns_bitwise(reference.attentions, again.attentions, keep, "attentions after re-swap")


def test_restore_of_an_unswapped_model_is_an_error(saved_gpt2):
    model = load(saved_gpt2())
    with pytest.raises(ValueError, match="not swapped"):
        probe.restore_attention(model)


def test_swapped_attention_context_manager(saved_gpt2):
    path = saved_gpt2()
    ref = load(path)
    model = load(path)
    originals = attention_modules(model)
    inputs = make_inputs()
    with probe.swapped_attention(model) as m:
        assert m is model and probe.is_swapped(model)
        assert all(isinstance(x, MaskedMultiHeadAttention) for _, x in attention_modules(model))
        with torch.no_grad():
            inside = model(**inputs)
    assert not probe.is_swapped(model)
    assert all(x is o for (_, x), (_, o) in zip(attention_modules(model), originals))
    with torch.no_grad():
        assert_bitwise(ref(**inputs).logits, inside.logits, "logits inside the context")


def test_swapped_attention_context_manager_restores_when_the_body_raises(saved_gpt2):
    model = load(saved_gpt2())
    originals = attention_modules(model)

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with probe.swapped_attention(model):
            assert probe.is_swapped(model)
            raise Boom("inside the with block")
    assert not probe.is_swapped(model)
    assert not hasattr(model, "_probe_swap")
    assert all(x is o for (_, x), (_, o) in zip(attention_modules(model), originals))


def test_swapping_twice_is_a_clear_error(saved_gpt2):
    model = probe.swap_attention(load(saved_gpt2()))
    swapped_modules = attention_modules(model)
    points = dict(probe.hook_points(model))
    with pytest.raises(ValueError, match="already swapped"):
        probe.swap_attention(model)
    # The failed second swap changed nothing.
    assert all(x is o for (_, x), (_, o) in zip(attention_modules(model), swapped_modules))
    assert probe.hook_points(model) == points
    with pytest.raises(ValueError, match="already swapped"):
        with probe.swapped_attention(model):
            pass
    assert probe.is_swapped(model)  # the failed context manager did not restore someone else's swap


SUPPORTED_NAMES = [cls.__name__ for cls in SIX_CLASSES] + [
    cls.__name__ for adapter in builtin_adapters() for cls in getattr(adapter, "model_classes", ())
] + ["AttentionInterface", "probe architectures"]


def tiny_xglm():
    return XGLMModel(
        XGLMConfig(vocab_size=32, d_model=16, num_layers=1, attention_heads=2, ffn_dim=32, max_position_embeddings=16)
    )


@pytest.mark.parametrize(
    "make_model",
    [
        tiny_xglm,  # a Hugging Face family probe has no adapter for, not on the attention interface
        lambda: nn.Sequential(GPT2Model(GPT2Config(**TINY))),  # a GPT-2 inside a wrapper is not a GPT-2 class
        lambda: nn.Linear(4, 4),
        lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU()),
    ],
    ids=["XGLMModel", "wrapped-GPT2Model", "Linear", "Sequential"],
)
def test_unsupported_model_is_a_value_error_naming_the_supported_classes(make_model):
    model = make_model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modules = list(model.modules())
    with pytest.raises(ValueError) as info:
        probe.swap_attention(model)
    message = str(info.value)
    assert type(model).__name__ in message
    for name in SUPPORTED_NAMES:
        assert name in message, f"{name} missing from: {message}"
    assert not probe.is_swapped(model)
    assert list(model.modules()) == modules
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("overrides", [dict(n_layer=3), dict(add_cross_attention=True)], ids=["3-layers", "cross"])
def test_a_failing_replacement_leaves_nothing_half_swapped(saved_gpt2, monkeypatch, overrides):
    path = saved_gpt2(**overrides)
    ref = load(path)
    model = load(path)
    originals = attention_modules(model)
    assert len(originals) >= 3
    inputs = make_inputs(padding="left")
    extra = {"encoder_hidden_states": torch.randn(3, 4, model.config.n_embd)} if overrides.get("add_cross_attention") else {}
    with torch.no_grad():
        model(**inputs, **extra, output_attentions=True)  # lets HF install its own output recorders first
    hook_counts = [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in model.base_model.h]
    real_replace = GPT2Adapter.replace
    calls = []

    def replace_failing_on_third(self, original):
        calls.append(original)
        if len(calls) == 3:
            raise RuntimeError("replacement failed on the 3rd slot")
        return real_replace(self, original)

    monkeypatch.setattr(GPT2Adapter, "replace", replace_failing_on_third)
    with pytest.raises(RuntimeError, match="3rd slot"):
        probe.swap_attention(model)
    assert len(calls) == 3
    for (name, module), (_, original) in zip(attention_modules(model), originals):
        assert module is original, f"{name} was left swapped"
    assert not any(isinstance(m, MaskedMultiHeadAttention) for m in model.modules())
    assert getattr(model, "_probe_swap", None) is None and not probe.is_swapped(model)
    assert [(len(b._forward_pre_hooks), len(b._forward_hooks)) for b in model.base_model.h] == hook_counts
    with pytest.raises(ValueError):
        probe.hook_points(model)
    with torch.no_grad():
        assert_bitwise(ref(**inputs, **extra).logits, model(**inputs, **extra).logits, "logits after failed swap")
    # Once the adapter works again, the swap goes through.
    monkeypatch.setattr(GPT2Adapter, "replace", real_replace)
    probe.swap_attention(model)
    assert probe.is_swapped(model)


def test_unsupported_gpt2_attention_forward_signature_is_a_runtime_error(saved_gpt2, monkeypatch):
    model = load(saved_gpt2())
    originals = attention_modules(model)

    def forward(self, x, mask=None, past=None):  # a different, future signature
        raise AssertionError("never called")

    monkeypatch.setattr(hf_gpt2.GPT2Attention, "forward", forward)
    with pytest.raises(RuntimeError) as info:
        probe.swap_attention(model)
    message = str(info.value)
    assert SUPPORTED_TRANSFORMERS in message, message
    declared = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    assert f"transformers{SUPPORTED_TRANSFORMERS}" in declared["project"]["dependencies"]  # the range pyproject.toml pins
    assert "transformers" in message and "GPT2Attention" in message
    assert not probe.is_swapped(model)
    assert all(x is o for (_, x), (_, o) in zip(attention_modules(model), originals))


def test_dtype_mismatch_inside_attention_is_a_type_error_naming_the_dtypes(saved_gpt2):
    model = probe.swap_attention(load(saved_gpt2()))
    attn = model.transformer.h[0].attn
    with pytest.raises(TypeError) as info:
        attn(torch.randn(2, 5, model.config.n_embd, dtype=torch.bfloat16))
    message = str(info.value)
    assert "torch.bfloat16" in message and "torch.float32" in message


def test_dtype_check_is_skipped_under_cpu_autocast(saved_gpt2):
    path = saved_gpt2()
    ref, model = load(path), probe.swap_attention(load(path))
    hidden = torch.randn(2, 5, model.config.n_embd, generator=torch.Generator().manual_seed(0)).bfloat16()
    # The causal mask GPT2Model would build (HF's attention module itself is only causal through it).
    causal = torch.full((5, 5), torch.finfo(torch.float32).min).triu(1)[None, None]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected, expected_pattern = ref.transformer.h[0].attn(hidden, attention_mask=causal)
        got, pattern = model.transformer.h[0].attn(hidden, attention_mask=causal)
    assert_bitwise(expected, got, "attention output under CPU autocast")
    assert_bitwise(expected_pattern, pattern, "pattern under CPU autocast")


def test_bf16_inputs_embeds_on_fp32_model_follows_eager(saved_gpt2):
    """Model level: GPT2Model adds fp32 position embeddings to bf16 inputs_embeds, so attention sees fp32
    (type promotion) — eager runs in fp32, and probe must do exactly the same."""
    path = saved_gpt2()
    ref, model = load(path), probe.swap_attention(load(path))
    embeds = torch.randn(2, 5, model.config.n_embd, generator=torch.Generator().manual_seed(3)).bfloat16()
    with torch.no_grad():
        a, b = ref(inputs_embeds=embeds), model(inputs_embeds=embeds)
    assert b.logits.dtype == torch.float32
    assert_bitwise(a.logits, b.logits, "logits")


def test_swap_works_on_a_model_after_forward_and_in_training_mode(saved_gpt2):
    """Swapping a model that has already run (HF recorders installed) and is in training mode."""
    path = saved_gpt2()
    ref, model = load(path), load(path)
    ref.train(), model.train()
    inputs = make_inputs(padding="right")
    with torch.no_grad():
        model(**inputs, output_attentions=True)
        probe.swap_attention(model)
        assert all(m.training for _, m in attention_modules(model))
        torch.manual_seed(0)
        a = ref(**inputs, output_attentions=True)
        torch.manual_seed(0)
        b = model(**inputs, output_attentions=True)
    assert_bitwise(a.logits, b.logits, "logits")
    assert len(b.attentions) == model.config.n_layer


def test_a_swapped_model_compiles_to_one_graph_with_the_uncompiled_numbers(saved_gpt2):
    """torch.compile traces the swapped attention without a break (fullgraph=True would raise at one): the
    padding mask's value check, which reads the tensor, runs only outside compilation. The "eager" backend
    runs the traced graph op for op, so its numbers must be the uncompiled model's, bit for bit."""
    model = load(saved_gpt2())
    probe.swap_attention(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # a padded row, so the float mask path is traced
    torch.compiler.reset()
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.equal(compiled(input_ids=ids, attention_mask=mask).logits,
                           model(input_ids=ids, attention_mask=mask).logits)
    torch.compiler.reset()


def test_an_uncompiled_swapped_model_still_refuses_an_additive_bias_mask(saved_gpt2):
    """Skipping the mask check under compilation must not skip it in ordinary runs."""
    from probe.core.adapters.base import bool_mask

    mask = torch.zeros(1, 1, 3, 3)
    mask[..., 0, 1] = -5.0  # a bias, neither 0 nor "blocked"
    with pytest.raises(ValueError, match="additive biases"):
        bool_mask(mask)
