"""Shared fixtures: tiny GPT-2 checkpoints built offline, saved once per session, loaded like a user would.

Every model goes through the user's load path: GPT2Config(...) → random init (seeded) → save_pretrained
→ from_pretrained(..., attn_implementation=...). The reference and the model that gets swapped are two
separate loads of the same checkpoint, so nothing is shared between them but the bytes on disk.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from pathlib import Path

# Each test session (each xdist worker) caches in a folder of its own, never in the user's cache: anything
# run without a cache folder, subprocesses included, lands there, and it is removed at exit.
SESSION_CACHE = tempfile.mkdtemp(prefix="probe-test-cache-")
os.environ["PROBE_CACHE"] = SESSION_CACHE
atexit.register(shutil.rmtree, SESSION_CACHE, ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers
from filelock import FileLock
from transformers import GPT2Config, GPT2LMHeadModel

import probe

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
# Under xdist (`pytest -n 2` on a 2-core machine) one intra-op thread per worker keeps them from fighting.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

# A tiny GPT-2: d_head = 24 / 2 = 12, whose 1/sqrt(12) is not a power of two (the scale is inexact).
TINY = dict(
    vocab_size=64,
    n_positions=32,
    n_embd=24,
    n_layer=2,
    n_head=2,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
PAD_ID = 0


def tiny_config(**overrides) -> GPT2Config:
    return GPT2Config(**{**TINY, **overrides})


class CheckpointFactory:
    """Builds, saves and caches checkpoints keyed by (model class, config overrides, seed)."""

    def __init__(self, root):
        self.root = root
        self.paths = {}
        self.lock = threading.Lock()

    def __call__(self, model_cls=GPT2LMHeadModel, *, seed: int = 0, config: GPT2Config | None = None, **overrides):
        if config is not None:
            key = (model_cls.__name__, "explicit", repr(sorted(config.to_dict().items())), seed)
        else:
            key = (model_cls.__name__, repr(sorted(overrides.items())), seed)
        with self.lock:
            if key not in self.paths:
                cfg = config if config is not None else tiny_config(**overrides)
                torch.manual_seed(seed)
                model = model_cls(cfg)
                # Random biases and LayerNorm parameters too, so that no parameter is trivially 0 or 1
                # (a zero bias hides a wrong bias; a unit LayerNorm gain hides a wrong gain).
                if config is None:
                    with torch.no_grad():
                        for name, p in model.named_parameters():
                            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_"):
                                p.normal_(0.0, 0.1).add_(1.0 if name.endswith("weight") else 0.0)
                path = self.root / f"ckpt{len(self.paths)}"
                model.save_pretrained(path)
                self.paths[key] = path
            return self.paths[key]


def random_gpt2_lm(seed: int = 0) -> GPT2LMHeadModel:
    """A tiny GPT-2 language model with seeded random weights, eager attention."""
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(**TINY, attn_implementation="eager")).eval()


def logits(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def pytest_unconfigure(config):
    """The session's cache goes with it (atexit alone misses a pytest-xdist worker, which ends without it)."""
    shutil.rmtree(SESSION_CACHE, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu",
                     help="where tests that take the `device` fixture run: cpu (default), cuda, cuda:N or mps")


@pytest.fixture(scope="session")
def device(request):
    """The torch.device of ``pytest --device``: the parity suite runs there as well as on the CPU."""
    from probe.scale.devices import resolve_device

    try:
        return resolve_device(request.config.getoption("--device"), option="pytest --device")
    except ValueError as error:
        pytest.exit(str(error), returncode=4)


@pytest.fixture(scope="session")
def saved_gpt2(tmp_path_factory):
    """``saved_gpt2(model_cls=GPT2LMHeadModel, seed=0, **config_overrides) -> checkpoint path`` (cached)."""
    return CheckpointFactory(tmp_path_factory.mktemp("gpt2"))


def load(path, model_cls=GPT2LMHeadModel, attn_implementation="eager", **kwargs):
    model = model_cls.from_pretrained(path, attn_implementation=attn_implementation, **kwargs)
    return model.eval()


def load_pair(path, model_cls=GPT2LMHeadModel, reference="eager", **kwargs):
    """(reference, swapped): two separate loads of one checkpoint; the second gets probe's attention."""
    ref = load(path, model_cls, attn_implementation=reference, **kwargs)
    swapped = load(path, model_cls, attn_implementation="eager", **kwargs)
    probe.swap_attention(swapped)
    assert probe.is_swapped(swapped) and not probe.is_swapped(ref)
    return ref, swapped


@pytest.fixture(scope="session")
def gpt2_pair(saved_gpt2):
    """``gpt2_pair(model_cls=..., reference="eager", dtype=None, **config_overrides) -> (ref, swapped)``."""

    def make(model_cls=GPT2LMHeadModel, *, reference="eager", seed=0, load_kwargs=None, **overrides):
        path = saved_gpt2(model_cls, seed=seed, **overrides)
        return load_pair(path, model_cls, reference=reference, **(load_kwargs or {}))

    return make


# --- inputs -----------------------------------------------------------------------------------------


def make_mask(batch: int, length: int, pads, side: str) -> torch.Tensor:
    """Attention mask (1 = token, 0 = padding) with ``pads[b]`` padding tokens on ``side`` of row b."""
    mask = torch.ones(batch, length, dtype=torch.long)
    for b, n in enumerate(pads):
        if n:
            if side == "left":
                mask[b, :n] = 0
            else:
                mask[b, length - n :] = 0
    return mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """position_ids the way generate() computes them: count real tokens, padding parked at 1."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def make_inputs(batch=3, length=7, padding="none", vocab=TINY["vocab_size"], seed=0):
    """input_ids (+ attention_mask, + position_ids for left padding), with some rows padded."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (batch, length), generator=g)
    if padding == "none":
        return {"input_ids": ids}
    pads = [min(length - 1, (b * 2 + 1) % length) if b != 1 else 0 for b in range(batch)]
    mask = make_mask(batch, length, pads, padding)
    ids = ids.masked_fill(mask == 0, PAD_ID)
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if padding == "left":
        kwargs["position_ids"] = positions_from_mask(mask)
    return kwargs


def keep_mask(inputs) -> torch.Tensor:
    """(batch, pos) bool: True at the positions whose outputs must be bit-identical.

    That is every query that may attend to at least one key: under the causal mask, query i of row b has
    a key iff some token 0..i of row b is not padding. Left-padding queries have none (Hugging Face
    spreads them uniformly over masked keys, probe gives zeros); right-padding queries do, and must match.
    """
    ids = inputs["input_ids"]
    mask = inputs.get("attention_mask")
    if mask is None:
        return torch.ones(ids.shape, dtype=torch.bool)
    return mask.long().cumsum(-1) > 0


# --- comparisons ------------------------------------------------------------------------------------


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item() if a.numel() else 0.0


def assert_bitwise(a: torch.Tensor, b: torch.Tensor, what: str = "") -> None:
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
    assert a.dtype == b.dtype, f"{what}: dtypes {a.dtype} vs {b.dtype}"
    assert not torch.isnan(b).any(), f"{what}: NaN in probe's output"
    assert torch.equal(a, b), f"{what}: max abs diff {max_diff(a, b)} (must be exactly 0.0)"


def assert_patterns_bitwise(
    ref_attn, probe_attn, query_keep: torch.Tensor | None, what: str, rest_zero: bool = True
) -> None:
    """Attention patterns (batch, head, q, k): equal at the kept query rows; with ``rest_zero`` the other
    rows (queries with no key to attend to) must be exactly 0 in probe's pattern."""
    assert len(ref_attn) == len(probe_attn) > 0, f"{what}: {len(ref_attn)} vs {len(probe_attn)} layers"
    for i, (a, b) in enumerate(zip(ref_attn, probe_attn)):
        assert a.shape == b.shape, f"{what}[{i}]: shapes {tuple(a.shape)} vs {tuple(b.shape)}"
        assert not torch.isnan(b).any(), f"{what}[{i}]: NaN in probe's pattern"
        if query_keep is None:
            assert_bitwise(a, b, f"{what}[{i}]")
            continue
        rows = query_keep[:, None, :].expand(a.shape[:3])  # (batch, head, q)
        assert_bitwise(a[rows], b[rows], f"{what}[{i}] non-padding rows")
        if rest_zero:
            assert torch.equal(b[~rows], torch.zeros_like(b[~rows])), f"{what}[{i}]: padding rows must be all 0"

def fake_gguf_conversion(monkeypatch, save_weights) -> None:
    """probe.pipeline.models.gguf_folder without transformers: no model is read, the tokenizer writes an empty
    tokenizer.json, and ``save_weights(model, folder)`` stands in for writing the dequantized weights."""
    from probe.pipeline import models

    class Tokenizer:
        def save_pretrained(self, folder):
            (Path(folder) / "tokenizer.json").write_text("{}")

    class Model:
        class config:  # noqa: N801 - stands in for a transformers config
            model_type = "llama"

    monkeypatch.setattr(models, "dequantized_model", lambda *args, **kwargs: Model())
    monkeypatch.setattr(models, "gguf_tokenizer", lambda *args, **kwargs: Tokenizer())
    monkeypatch.setattr(models, "_save_dequantized", save_weights)


def shared_folder(tmp_path_factory, name: str, produce) -> Path:
    """``produce(folder)`` once per session, even with several xdist workers (they share the parent folder)."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder = base / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".done").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            produce(folder)
            (folder / ".done").touch()
    return folder


@pytest.fixture
def builtins_only(monkeypatch):
    """Only probe's built-in plugins, a fresh plugin manager per test: installed entry-point plugins must
    not change what a test sees, and nothing a test registers leaks into the next."""
    from probe import plugins

    monkeypatch.setenv("PROBE_PLUGINS", "")
    plugins.reset_plugin_manager()
    yield
    plugins.reset_plugin_manager()
