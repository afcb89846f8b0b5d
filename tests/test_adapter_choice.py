"""Which adapter swaps a model: the probe_adapter hook asks plugins before probe's built-ins; family specs
say where a family's pieces are; a broken installed plugin is named and skipped, never in the built-ins' way."""

from __future__ import annotations

import warnings
from dataclasses import replace

import pytest
from conftest import assert_bitwise, logits, make_inputs, random_gpt2_lm
from transformers import AutoModelForCausalLM, LlamaConfig

import probe
from probe import hookimpl, plugins
from probe.core.adapters import (
    SPECS,
    FamilySpec,
    ProjectionMap,
    SpecError,
    builtin_adapters,
)
from probe.core.adapters.gpt2 import GPT2Adapter
from probe.core.adapters.interface import InterfaceAdapter
from probe.core.adapters.mapped import MappedAdapter
from probe.core.architectures import save_random

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py



def tiny_llama():
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    return AutoModelForCausalLM.from_config(config)


def test_every_builtin_full_path_adapter_reads_its_blocks_from_the_spec():
    for adapter in builtin_adapters():
        if hasattr(adapter, "attention_class"):
            assert adapter.spec is SPECS[adapter.name]
    model = random_gpt2_lm()
    assert GPT2Adapter().blocks(model) == list(model.transformer.h)


def test_a_projection_map_for_a_family_probe_has_no_spec_for_names_the_missing_fields():
    with pytest.raises(SpecError) as caught:
        MappedAdapter({"newfamily": ProjectionMap("NewAttention")})
    message = str(caught.value)
    assert "'newfamily'" in message and "'blocks'" in message and "'attn'" in message
    with pytest.raises(SpecError, match="'newfamily' has no field 'projections'"):
        MappedAdapter({"newfamily": FamilySpec("layers", "self_attn")})


def test_a_spec_that_does_not_fit_names_its_field(tmp_path):
    save_random("arcee", tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    wrong_blocks = replace(SPECS["llama"], blocks="decoder.layers")
    with pytest.raises(SpecError, match=r"field 'blocks' \('decoder.layers'\)"):
        MappedAdapter({"arcee": wrong_blocks}).matches(model)
    wrong_class = replace(SPECS["llama"], projections=ProjectionMap("LlamaAttention"))
    with pytest.raises(SpecError, match="field 'projections.attention_class' is 'LlamaAttention'.*ArceeAttention"):
        MappedAdapter({"arcee": wrong_class}).matches(model)

    class Wrong:
        @hookimpl
        def register_adapters(self, register):
            register("arcee-wrong", MappedAdapter({"arcee": wrong_blocks}))

    plugins.register_plugin(Wrong(), "wrong-arcee")
    with pytest.raises(plugins.PluginError, match="plugin 'wrong-arcee': adapter 'arcee-wrong': .*field 'blocks'"):
        probe.swap_attention(model)
    assert not probe.is_swapped(model)


def test_a_plugin_brings_a_family_probe_has_no_spec_for(tmp_path):
    """A made-up model type: a plugin's FamilySpec says where its blocks, norms and projections are."""
    save_random("arcee", tmp_path)
    load = lambda: AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()  # noqa: E731
    spec = replace(SPECS["llama"], projections=ProjectionMap("ArceeAttention"))

    class NewFamily:
        @hookimpl
        def probe_adapter(self, model):
            if model.config.model_type == "brand-new":
                return MappedAdapter({"brand-new": spec})
            return None

    plugins.register_plugin(NewFamily(), "brand-new")
    reference, model = load(), load()
    model.config.model_type = "brand-new"  # a type no built-in spec names
    assert "brand-new" not in SPECS
    swapped = probe.swap_attention(model)
    assert swapped._probe_swap.adapter.path == "full"
    assert {"blocks.0.ln1.out", "blocks.1.mlp.out", "ln_final.out"} <= set(probe.hook_points(swapped))
    inputs = make_inputs(vocab=reference.config.vocab_size)
    assert_bitwise(logits(reference, inputs), logits(swapped, inputs), "logits of the plugin's family")


def test_the_universal_adapter_takes_a_plugins_specs():
    model = tiny_llama()
    custom = InterfaceAdapter({"llama": FamilySpec("layers", "self_attn", final_norm="norm")}, guess=False)
    assert custom.spec_for(model).ln1 is None and custom.matches(model)
    with pytest.raises(TypeError):
        SPECS["newfamily"] = FamilySpec("layers", "self_attn")  # probe's table is read-only


# ---------------------------------------------------------------- a broken installed plugin


class BrokenEntryPoint:
    """An installed plugin as importlib.metadata lists it, whose module raises on import."""

    name, value, group = "fakebroken", "fake_probe_broken:plugin", "probe"

    def load(self):
        raise ImportError("needs the xyz package")


def entry_points_with_a_broken_one(group=None):
    return [BrokenEntryPoint()] if group == "probe" else []


def test_a_broken_installed_plugin_is_named_and_skipped(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points_with_a_broken_one)
    monkeypatch.delenv("PROBE_PLUGINS")
    plugins.reset_plugin_manager()
    inputs = make_inputs()
    reference = random_gpt2_lm()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        swapped = probe.swap_attention(random_gpt2_lm())
    messages = [str(w.message) for w in caught if issubclass(w.category, plugins.PluginWarning)]
    assert len(messages) == 1
    assert "installed plugin 'fakebroken' (fake_probe_broken:plugin) failed to import: needs the xyz package" \
        in messages[0]
    assert swapped._probe_swap.adapter.name == "gpt2"
    assert_bitwise(logits(reference, inputs), logits(swapped, inputs), "logits beside a broken plugin")
    assert "fakebroken" not in [name for name, _ in plugins.describe()]


def test_a_broken_plugin_asked_for_by_name_fails_loudly(monkeypatch):
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points_with_a_broken_one)
    monkeypatch.setenv("PROBE_PLUGINS", "fakebroken")
    plugins.reset_plugin_manager()
    with pytest.raises(plugins.PluginError, match="installed plugin 'fakebroken' .* failed to import"):
        probe.swap_attention(random_gpt2_lm())


def test_an_installed_plugin_with_an_unknown_hook_is_skipped_too(monkeypatch):
    import importlib.metadata
    import types

    typo = types.ModuleType("fake_probe_typo")
    typo.probe_adaptor = hookimpl(lambda model: None)  # no such hook: a typo

    class TypoEntryPoint(BrokenEntryPoint):
        name, value = "faketypo", "fake_probe_typo"

        def load(self):
            return typo

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [TypoEntryPoint()] if group == "probe" else [])
    monkeypatch.delenv("PROBE_PLUGINS")
    plugins.reset_plugin_manager()
    with pytest.warns(plugins.PluginWarning, match="plugin 'faketypo' is not valid"):
        assert probe.swap_attention(random_gpt2_lm())._probe_swap.adapter.name == "gpt2"
