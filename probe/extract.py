"""Target vectors per layer: batched, length-sorted, stopped after the deepest layer asked for, cached on disk.

Layer 0 is the residual stream entering the first block (token + position embeddings); layer L is the
residual stream leaving block L (before any final layer norm). Only the vectors at the target word
(pooled over its subwords) and at the sentence's last token (special tokens such as [SEP] aside) are
kept, never whole sequences.

The cache is a folder of chunk files, each written atomically once its rows are done: a rerun with the
same key does no model work, and an interrupted run picks up at the first missing chunk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from probe.chunks import drop_damaged, mark_complete, write_chunk
from probe.devices import device_of
from tqdm.auto import tqdm

from probe.config import POOLINGS, POSITIONS
from probe.data import span_token_indices



class _StopForward(Exception):
    """Raised by a hook once the deepest requested layer is captured: the rest of the model is not run."""


@dataclass
class FeatureStore:
    """Extracted vectors on disk: ``store.layer("target", 3)`` → (n_rows, d) float32, in dataset order."""

    folder: Path
    layers: list[int]
    n_rows: int

    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.safetensors"))

    def layer(self, position: str, layer: int) -> np.ndarray:
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        slot = self.layers.index(layer)
        out = None
        for path in self.chunks():
            with safe_open(path, framework="pt") as chunk:
                rows = chunk.get_tensor("rows").numpy()
                vectors = chunk.get_slice(position)[slot].float().numpy()
            if out is None:
                out = np.empty((self.n_rows, vectors.shape[-1]), dtype=np.float32)
            out[rows] = vectors
        return out


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def data_fingerprint(texts: Sequence[str], spans: Sequence[tuple[int, int]]) -> str:
    digest = hashlib.sha256()
    for text, (start, end) in zip(texts, spans):
        digest.update(f"{start}:{end}:{text}\n".encode())
    return digest.hexdigest()[:20]


def extract(
    load: Callable[[], tuple[torch.nn.Module, object]],
    texts: Sequence[str],
    spans: Sequence[tuple[int, int]],
    *,
    layers: Sequence[int],
    folder: str | Path,
    pooling: str = "mean",
    batch_size: int = 16,
    chunk_rows: int = 256,
    progress: bool = True,
    description: str = "extracting",
) -> FeatureStore:
    """Vectors at the target and the last token for ``layers``; ``load()`` → (model, tokenizer) runs only if needed."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    layers = sorted(set(layers))
    folder = Path(folder)  # created with its first chunk: a run that fails before leaves no empty folder
    store = FeatureStore(folder, layers, len(texts))
    drop_damaged(folder)  # a chunk that fails its checksum is named and extracted again, never read
    every_chunk = all(_chunk_path(folder, n).exists() for n in range(-(-len(texts) // chunk_rows)))
    if (folder / "complete.json").exists() and every_chunk:  # a chunk deleted by hand is extracted again
        return store

    model, tokenizer = load()
    # Longest first: a batch too big for memory fails at once, and padding per batch stays small.
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: (-lengths[i], i))
    chunks = [order[start : start + chunk_rows] for start in range(0, len(order), chunk_rows)]
    todo = [(n, rows) for n, rows in enumerate(chunks) if not _chunk_path(folder, n).exists()]

    bar = tqdm(total=sum(len(rows) for _, rows in todo), desc=description, unit="row", disable=not progress)
    for n, rows in todo:
        target = np.empty((len(layers), len(rows), _width(model)), dtype=np.float32)
        last = np.empty_like(target)
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            t, l = _extract_batch(model, tokenizer, [texts[i] for i in batch], [spans[i] for i in batch], layers, pooling)
            target[:, start : start + len(batch)], last[:, start : start + len(batch)] = t, l
            bar.update(len(batch))
        _write_atomic(
            _chunk_path(folder, n),
            {"rows": torch.tensor(rows), "target": torch.from_numpy(target), "last": torch.from_numpy(last)},
        )
    bar.close()
    mark_complete(folder, json.dumps({"rows": len(texts), "layers": layers}))
    return store


def _chunk_path(folder: Path, n: int) -> Path:
    return folder / f"chunk-{n:05d}.safetensors"


def _write_atomic(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    write_chunk(path, tensors)  # with the checksum drop_damaged checks


def _width(model) -> int:
    return model.config.hidden_size


@torch.inference_mode()
def _extract_batch(model, tokenizer, texts, spans, layers, pooling):
    """One forward (cut short after the deepest layer) → (target, last) arrays of shape (layers, batch, d)."""
    encoding, targets, last_index = encode_batch(tokenizer, texts, spans)
    captured = run_to_layer(model, encoding.to(device_of(model)), max(layers), layers)
    target_out = np.empty((len(layers), len(texts), captured[layers[0]].shape[-1]), dtype=np.float32)
    last_out = np.empty_like(target_out)
    rows = torch.arange(len(texts))
    for slot, layer in enumerate(layers):
        hidden = captured[layer].float().cpu()  # vectors are stored; nothing else leaves the device
        last_out[slot] = hidden[rows, last_index].numpy()
        target_out[slot] = pool_targets(hidden, targets, pooling)
    return target_out, last_out


def encode_batch(tokenizer, texts, spans):
    """Right-padded encoding, each row's target token indices, and each row's last word-piece index."""
    tokenizer.padding_side = "right"
    encoding = tokenizer(
        list(texts), return_tensors="pt", padding=True, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    offsets = encoding.pop("offset_mapping").tolist()
    special = encoding.pop("special_tokens_mask").bool()
    targets = []
    for i, (text, (start, end)) in enumerate(zip(texts, spans)):
        covered = span_token_indices(text, offsets[i], start, end)
        if not covered:
            raise ValueError(f"no token covers the target {text[start:end]!r} in {text!r}")
        targets.append(covered)
    # The sentence's last word-piece: the last real token that is not a special one ([SEP], </s>).
    words = encoding["attention_mask"].bool() & ~special
    last_index = torch.where(words, torch.arange(words.shape[1]), -1).max(-1).values
    return encoding, targets, last_index


def pool_targets(hidden: torch.Tensor, targets: list[list[int]], pooling: str) -> np.ndarray:
    """(batch, pos, d) → (batch, d): each row's target tokens pooled (first, last or mean)."""
    out = np.empty((len(targets), hidden.shape[-1]), dtype=np.float32)
    for i, covered in enumerate(targets):
        vectors = hidden[i, covered].float()
        pooled = {"first": vectors[0], "last": vectors[-1], "mean": vectors.mean(0)}[pooling]
        out[i] = pooled.numpy()
    return out


def run_to_layer(model, encoding, deepest: int, layers) -> dict[int, torch.Tensor]:
    """Run ``model`` on ``encoding`` until block ``deepest`` is done; the residual stream at ``layers``."""
    from probe.adapters import adapter_for

    blocks = adapter_for(model).blocks(model)
    if deepest > len(blocks):
        raise ValueError(f"layer {deepest} requested, but the model has {len(blocks)} blocks (layers 0..{len(blocks)})")
    captured: dict[int, torch.Tensor] = {}

    def keep_input(module, args, kwargs):
        captured[0] = args[0] if args else kwargs["hidden_states"]
        if deepest == 0:
            raise _StopForward

    def keep_output(layer):
        def hook(module, args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == deepest:
                raise _StopForward

        return hook

    handles = [blocks[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    handles += [blocks[layer - 1].register_forward_hook(keep_output(layer)) for layer in layers if layer > 0]
    try:
        model(**encoding)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {layer: captured[layer] for layer in layers}
