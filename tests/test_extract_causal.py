"""Extraction skips the tokens after the target in a causal model (they cannot change its vectors), and
only there: whether a model attends causally is read off its attention modules, for every architecture."""

from __future__ import annotations

import numpy as np
import pytest

from probe.core.architectures import ARCHITECTURES
from probe.core.swap import swapped_attention
from probe.pipeline.extract import attends_causally, extract

TEXTS = ["The mole dug a long tunnel under the garden wall last night .",
         "A mole of gas fills the flask .",
         "She found the mole in the ministry after years of careful work and patience .",
         "mole"]
SPANS = [(text.index("mole"), text.index("mole") + 4) for text in TEXTS]


# Hugging Face's BLOOM and MPT attention modules carry no is_causal flag: unswapped, they are (safely)
# treated as not causal and run uncut; probe's own cores for them say causal.
UNMARKED = {"bloom", "mpt"}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_causality_is_read_off_the_attention_modules(name):
    arch = ARCHITECTURES[name]
    model = arch.random_model(seed=0).eval()
    assert attends_causally(model) == (arch.causal and name not in UNMARKED)
    with swapped_attention(model):
        assert attends_causally(model) == arch.causal


def _loader(model, tokenizer):
    def load():
        return model, tokenizer
    return load


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
def test_target_vectors_match_a_full_forward(name, tmp_path):
    """With only the target asked for, a causal model runs on fewer tokens; the vectors are those of the
    whole sentence (to float rounding: the matrices have other shapes), and a bidirectional one is uncut."""
    arch = ARCHITECTURES[name]
    model = arch.random_model(seed=0).eval()
    tokenizer = _tiny_tokenizer()
    seen = []
    real_forward = model.forward

    def counting_forward(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[1])
        return real_forward(*args, **kwargs)

    model.forward = counting_forward
    common = dict(layers=[0, 1, 2], batch_size=2, progress=False)
    cut = extract(_loader(model, tokenizer), TEXTS, SPANS, folder=tmp_path / "cut", positions=["target"], **common)
    cut_tokens = sum(seen)
    seen.clear()
    whole = extract(_loader(model, tokenizer), TEXTS, SPANS, folder=tmp_path / "whole", **common)
    assert cut.positions == ("target",) and whole.positions == ("target", "last")
    if arch.causal:
        assert cut_tokens < sum(seen)
    else:
        assert cut_tokens == sum(seen)
    for layer in (0, 1, 2):
        np.testing.assert_allclose(cut.layer("target", layer), whole.layer("target", layer), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match=r"position 'last' was not extracted into .*cut \(it holds: target\)"):
        cut.layer("last", 1)


def _tiny_tokenizer():
    """A word-level fast tokenizer over these sentences, with offsets, within the tiny vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for text in TEXTS for w in text.split()})
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
    assert len(vocab) <= 64
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")

