"""probe.run_with_cache and probe.attention on a tiny offline GPT-2 (docs/api.md runs them on MiniLM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from report_runs import report_run
from transformers import AutoModel

import probe


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    return str(report_run(tmp_path_factory).parent / "model")


def test_probe_attention_and_probe_hooks_are_functions_only():
    import probe.core.attention  # importing the core's modules never replaces the public functions
    import probe.core.hooks

    assert callable(probe.attention) and probe.attention.__module__ == "probe.notebook"
    assert callable(probe.hooks) and probe.hooks.__module__ == "probe.core.hooks"
    assert probe.MaskedMultiHeadAttention.__module__ == "probe.core.attention"


def test_run_with_cache_by_name_gives_every_hook_point_without_gradients(model_path):
    outputs, cache = probe.run_with_cache(model_path, "The mole dug a tunnel.")
    assert set(cache) == set(probe.hook_points(_swapped(model_path)))  # every one of them
    kinds = {name.split(".", 2)[2] for name in cache if name.startswith("blocks.")}
    assert kinds >= {"resid_pre", "resid_post", "attn.q", "attn.k", "attn.v", "attn.scores",
                     "attn.masked_scores", "attn.pattern", "attn.z", "attn.out"}
    assert {int(name.split(".")[1]) for name in cache if name.startswith("blocks.")} == {0, 1}
    n = len(cache.tokens[0])
    assert cache["blocks.1.attn.z"].shape == (1, 4, n, 8)  # (batch, head, pos, d_head)
    assert cache["blocks.1.attn.pattern"].shape == (1, 4, n, n)
    assert not any(t.requires_grad for t in cache.values()) and not outputs.logits.requires_grad
    assert "".join(cache.tokens[0]) == "The mole dug a tunnel."


def _swapped(model_path: str):
    return probe.swap_attention(AutoModel.from_pretrained(model_path, attn_implementation="eager"))


def test_run_with_cache_matches_the_models_own_outputs(model_path):
    """A loaded model without probe's attention gets it for the call only; what it captures is what the
    model computes: the last block's output is the final hidden state before the last LayerNorm."""
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager").eval()
    texts = ["a mole", "the mole dug deep"]
    outputs, cache = probe.run_with_cache(model, texts, names="blocks.*.resid_post")
    assert sorted(cache) == ["blocks.0.resid_post", "blocks.1.resid_post"]
    assert not probe.is_swapped(model)
    with torch.no_grad():
        reference = model(**cache.inputs, output_hidden_states=True)
    assert torch.equal(cache["blocks.0.resid_post"], reference.hidden_states[1])
    assert torch.equal(outputs.last_hidden_state, reference.last_hidden_state)
    assert cache.inputs["attention_mask"].sum(1).tolist() == [len(t) for t in cache.tokens]


def test_attention_view_patterns_and_target(model_path):
    view = probe.attention(model_path, "The mole dug a tunnel.", target="mole")
    _, cache = probe.run_with_cache(model_path, "The mole dug a tunnel.", names="blocks.*.attn.pattern")
    expected = torch.stack([cache[f"blocks.{i}.attn.pattern"][0] for i in range(2)])
    assert torch.allclose(view.patterns, expected, atol=5e-4)  # stored to 3 decimals
    assert view.tokens[view.sentences[0]["target"]] == " mole"
    html = view._repr_html_()
    assert "probeAttentionViewer(" in html and "<script src" not in html


def test_attention_of_several_texts_in_one_batch_matches_one_at_a_time(model_path):
    from transformers import AutoTokenizer

    from probe.report.attention_view import capture_attention, capture_attentions

    model = probe.swap_attention(AutoModel.from_pretrained(model_path, attn_implementation="eager").eval())
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.eos_token
    texts = ["The mole dug a tunnel under the old garden wall.", "A mole.", "The spy was a mole"]
    batched = capture_attentions(model, tokenizer, texts, ["mole"] * 3, ["a", "b", "c"])
    for text, label, together in zip(texts, "abc", batched):
        alone = capture_attention(model, tokenizer, text, "mole", label)
        assert {k: v for k, v in together.items() if k != "patterns"} == {k: v for k, v in alone.items() if k != "patterns"}
        difference = np.abs(np.array(together["patterns"]) - np.array(alone["patterns"]))
        assert difference.max() <= 1  # per mille: padding changes only float rounding
    tokenizer.pad_token = None  # a tokenizer that cannot pad: one text at a time, the same answers
    assert capture_attentions(model, tokenizer, texts[:2])[1]["tokens"] == capture_attention(model, tokenizer, texts[1])["tokens"]


def test_attention_errors_say_what_is_wrong(model_path):
    with pytest.raises(ValueError, match="target 'vole' is not a word of"):
        probe.attention(model_path, "The mole dug a tunnel.", target="vole")
    bare = AutoModel.from_pretrained(model_path)
    bare.name_or_path = ""
    with pytest.raises(ValueError, match="pass tokenizer="):
        probe.run_with_cache(bare, "The mole.")


def test_the_cache_orders_blocks_by_number_stacks_a_point_and_finds_the_target(model_path):
    from probe.notebook import ActivationCache

    made = ActivationCache({f"blocks.{b}.resid_post": torch.full((1, 2, 3), float(b)) for b in (10, 2, 0)}
                           | {"embed": torch.zeros(1)}, [["a", "b"]], {})
    assert list(made) == ["embed", "blocks.0.resid_post", "blocks.2.resid_post", "blocks.10.resid_post"]
    assert made.blocks() == [0, 2, 10]
    assert made.stack("resid_post")[:, 0, 0, 0].tolist() == [0.0, 2.0, 10.0]
    with pytest.raises(KeyError, match="no 'attn.z' in every block"):
        made.stack("attn.z")

    texts = ["The mole dug a tunnel.", "A spy, the mole, fled."]
    outputs, cache = probe.run_with_cache(model_path, texts, target="mole", names="blocks.*.resid_post")
    stacked = cache.stack("resid_post")
    assert stacked.shape[:2] == (2, 2) and torch.equal(stacked[1], cache["blocks.1.resid_post"])
    for tokens, covered in zip(cache.tokens, cache.targets):
        assert "".join(tokens[i] for i in covered).strip() == "mole"
    with pytest.raises(ValueError, match="target 'bank' is not a word"):
        probe.run_with_cache(model_path, texts, target="bank")
