"""final_norm: the last layer read after the model's final norm is Hugging Face's last hidden_states,
with probe's attention swapped in or not; other layers, and runs without it, are unchanged."""

from __future__ import annotations

import pytest
import torch
from test_evaluation import stored_vectors
from tiny_gpt2 import build_tiny_gpt2
from transformers import AutoTokenizer, GPT2Model

from probe.core.swap import swap_attention
from probe.pipeline.config import validate
from probe.pipeline.extract import run_to_layer
from probe.pipeline.run import run_experiment

pytestmark = pytest.mark.usefixtures("builtins_only")  # see conftest.py


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "model", n_layer=2, n_embd=32, seed=2)


@pytest.mark.parametrize("swapped", [False, True])
def test_the_last_layer_after_the_final_norm_is_hugging_faces_last_hidden_state(tiny_model, swapped):
    model = GPT2Model.from_pretrained(tiny_model, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.eos_token
    encoding = tokenizer(["The garden mole dug.", "A mole is a unit of amount."], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**encoding, output_hidden_states=True).hidden_states
    if swapped:
        swap_attention(model)
    with torch.no_grad():
        normed = run_to_layer(model, encoding, 2, [1, 2], final_norm=True)
        plain = run_to_layer(model, encoding, 2, [1, 2])
    torch.testing.assert_close(normed[2], expected[-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(normed[1], plain[1], rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.ln_f(plain[2]), normed[2], rtol=0, atol=1e-6)
    assert not torch.allclose(plain[2], normed[2])


def test_a_run_with_final_norm_changes_only_the_last_layer(tiny_model, tmp_path):
    def vectors(final_norm: bool):
        config = validate({"model": str(tiny_model), "dataset": "mole", "folds": 3, "controls": [], "layers": [1, 2],
                           "reporters": ["json"], "final_norm": final_norm})
        cache = tmp_path / f"cache-{final_norm}"
        results = run_experiment(config, tmp_path / f"out-{final_norm}", cache_dir=cache, progress=False, n_jobs=1)
        assert results.settings["final_norm"] is final_norm
        return stored_vectors(cache, results.dataset.rows)

    plain, normed = vectors(False), vectors(True)
    assert (plain[1] == normed[1]).all()
    assert not (plain[2] == normed[2]).all()
