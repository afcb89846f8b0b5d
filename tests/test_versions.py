"""Living with several transformers releases: numerics learned by running a family's eager function, a
family a release breaks listed by name in the architectures table, Falcon on either side of 5.25.

The parity suite itself (tests/test_parity_architectures.py) runs on the oldest supported release here and
on the newer ones through `make parity-matrix`.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from transformers import FalconConfig, FalconForCausalLM
from transformers.models.falcon import modeling_falcon
from transformers.models.llama import modeling_llama
from transformers.models.roberta import modeling_roberta

import probe
from probe.cli import cli
from probe.core import interface
from probe.core.adapters import builtin_adapters
from probe.core.adapters.falcon import FalconAdapter
from probe.core.architectures import ARCHITECTURES, refused, support_table

pytestmark = pytest.mark.filterwarnings("ignore")


class TinyAttention(nn.Module):
    """What an eager attention function reads off its module: heads, groups, scaling, training."""

    def __init__(self, n_heads=4, n_kv_heads=2, head_dim=8):
        super().__init__()
        self.num_heads, self.head_dim = n_heads, head_dim
        self.num_key_value_groups = n_heads // n_kv_heads
        self.scaling = head_dim**-0.5


def test_the_softmax_precision_is_learned_from_what_the_eager_function_does():
    # Llama's eager upcasts the softmax to float32; RoBERTa's (no grouped keys) keeps the input's dtype.
    llama = interface.learn_numerics(TinyAttention(), modeling_llama.eager_attention_forward)
    roberta = interface.learn_numerics(TinyAttention(n_kv_heads=4), modeling_roberta.eager_attention_forward)
    assert llama["softmax_in_float32"] and not roberta["softmax_in_float32"]


def test_arithmetic_the_core_does_not_reproduce_is_refused_with_the_family_named():
    def divides_after_the_softmax(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
        key = modeling_llama.repeat_kv(key, module.num_key_value_groups)
        value = modeling_llama.repeat_kv(value, module.num_key_value_groups)
        weights = torch.softmax(query @ key.transpose(2, 3) + attention_mask, dim=-1)  # scaling forgotten
        return (weights @ value).transpose(1, 2).contiguous(), weights

    with pytest.raises(interface.UnsupportedNumerics, match="TinyAttention"):
        interface.learn_numerics(TinyAttention(), divides_after_the_softmax)


def test_an_eager_function_that_raises_is_refused_not_propagated():
    def broken(module, *args, **kwargs):
        raise KeyError("a kwarg this release added")

    with pytest.raises(interface.UnsupportedNumerics, match="could not run on a tiny input"):
        interface.learn_numerics(TinyAttention(), broken)


def test_learning_leaves_the_global_random_state_and_the_module_as_they_were():
    attention = TinyAttention().train()
    torch.manual_seed(3)
    before = torch.get_rng_state()
    interface.learn_numerics(attention, modeling_llama.eager_attention_forward)
    assert torch.equal(torch.get_rng_state(), before) and attention.training


class RefusingAdapter:
    """A stand-in for a release that broke one family: claims gpt2, then raises while swapping it."""

    name, path = "refusing", "full"

    def matches(self, model):
        return model.config.model_type == "gpt2"

    def install(self, model, state):
        raise RuntimeError("GPT2Attention.forward changed its parameters")


def test_an_architecture_a_release_breaks_is_a_refused_row_and_the_others_still_listed():
    rows = support_table(adapters=[RefusingAdapter(), *builtin_adapters()], names=["gpt2", "llama", "bloom"])
    by_name = {row["architecture"]: row for row in rows}
    assert list(by_name) == ["bloom", "gpt2", "llama"]
    assert by_name["gpt2"]["adapter"] == "refusing"
    assert by_name["gpt2"]["status"] == "refused: RuntimeError: GPT2Attention.forward changed its parameters"
    assert by_name["llama"]["status"] == by_name["bloom"]["status"] == "ok"
    assert [row["architecture"] for row in refused(rows)] == ["gpt2"]


def test_the_command_lists_a_broken_family_and_check_fails_on_it(monkeypatch):
    def changed_forward(self):
        raise RuntimeError("FalconAttention.forward in transformers 9.9 has parameters ['x']")

    # Whichever adapter takes Falcon on this release, make its swap fail as a changed release would.
    monkeypatch.setattr(FalconAdapter, "check", changed_forward)
    monkeypatch.setattr(interface, "numerics_of", lambda attention: changed_forward(None))
    runner = CliRunner()
    checked = runner.invoke(cli, ["architectures", "--check", "--json", "falcon", "gpt2"])
    assert checked.exit_code == 1 and "1 of 2 not bit-identical or refused: falcon" in checked.stderr
    rows = {row["architecture"]: row for row in json.loads(checked.stdout)}
    assert rows["falcon"]["status"].startswith("refused: RuntimeError: FalconAttention.forward in transformers 9.9")
    assert rows["gpt2"]["status"] == "ok"
    listed = runner.invoke(cli, ["architectures", "falcon", "gpt2"])  # the declared table: nothing is swapped
    assert listed.exit_code == 0 and "refused" not in listed.output and "declared" in listed.output


def test_the_falcon_adapter_takes_falcon_only_where_its_attention_does_its_own_arithmetic():
    model = ARCHITECTURES["falcon"].random_model()
    dispatches = interface.calls_the_interface(modeling_falcon.FalconAttention)
    assert FalconAdapter().matches(model) is not dispatches
    assert probe.swap_attention(model)._probe_swap.adapter.name == ("universal" if dispatches else "falcon")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_alibi_falcon_is_bitwise_equal_to_eager(dtype, tmp_path):
    """ALiBi reaches attention as an argument (5.24, the hand-written adapter) or folded into the mask
    (5.25 on, the universal path, which adds the biased mask whole)."""
    config = FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          alibi=True, multi_query=True)
    torch.manual_seed(0)
    FalconForCausalLM(config).save_pretrained(tmp_path)
    ref, swapped = (FalconForCausalLM.from_pretrained(tmp_path, attn_implementation="eager", dtype=dtype).eval()
                    for _ in range(2))
    probe.swap_attention(swapped)
    ids = torch.randint(3, 100, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        got = swapped(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    keep = mask.bool()
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a[keep], b[keep])
