"""An offline GPT-2 stand-in for tests: random weights + a byte-level BPE tokenizer trained here."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

DATA = Path(__file__).resolve().parent.parent / "probe" / "builtin" / "data"


# The sets the tiny tokenizer is trained on, named: a new built-in set must not change its merges (tests
# rely on words such as "land" being one token).
CORPUS_FILES = ("mole.jsonl", "tower-size.jsonl", "tower.jsonl")


def corpus() -> list[str]:
    texts = []
    for path in [DATA / name for name in CORPUS_FILES]:
        texts += [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]
    return texts


def build_tokenizer(texts: list[str], vocab_size: int = 600) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )


def build_tiny_gpt2(folder: str | Path, *, n_layer: int = 2, n_embd: int = 32, n_head: int = 4, seed: int = 0) -> Path:
    """Save a random-init GPT-2 and its tokenizer to ``folder``, loadable with from_pretrained."""
    folder = Path(folder)
    tokenizer = build_tokenizer(corpus())
    config = GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=128, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_mamba(folder: str | Path, tokenizer_from: str | Path) -> Path:
    """A tiny Mamba (no attention for probe to swap) with the tokenizer of the model in ``tokenizer_from``;
    built once per folder."""
    import shutil

    from transformers import MambaConfig, MambaModel

    folder, source = Path(folder), Path(tokenizer_from)
    if not folder.exists():
        MambaModel(MambaConfig(vocab_size=600, hidden_size=16, num_hidden_layers=2, state_size=4)).save_pretrained(folder)
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(source / name, folder / name)
    return folder
