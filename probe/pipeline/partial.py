"""Run a model from block b on: an intervention at block b leaves everything before it unchanged, so the
residual stream entering block b is computed once and only blocks b.. are rerun per intervention.

``capture_block_inputs`` runs each batch up to block b and keeps what the model hands that block (the
hidden states and the keyword arguments: mask, position embeddings, …, which every block receives
alike); ``vectors_at`` reruns blocks b..layer-1 from there — under whatever hooks are attached — and
pools the target vectors at ``layer``. Rows are batched as extraction batches them (sorted by length,
right-padded; in a causal model cut after the target unless ``whole_rows``), so without an intervention
they are the extracted vectors bit for bit, given the same batch size and rows cut alike.

Many interventions in one forward: ``vectors_of_copies`` repeats each batch once per intervention (copy)
and runs the copies together; each copy's hook (``copy_hooks``, shared with activation patching) writes
only its own rows, so a copy sees exactly its own edits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probe.pipeline.extract import (
    attends_causally,
    encode_rows,
    extraction_batches,
    length_sorted,
    pool_targets,
)
from probe.scale.devices import device_of, on_device


class _Stop(Exception):
    pass


@dataclass
class BlockInputs:
    """One batch as block ``block`` receives it."""

    rows: list[int]  # which rows of the dataset, in the batch's order
    encoding: dict  # the batch's tokens (input_ids, attention_mask), on the CPU
    args: tuple
    kwargs: dict
    targets: list[list[int]]  # each row's target token indices
    last: torch.Tensor  # each row's last word-piece index
    cut: bool  # whether the tokens after the target were left out


@torch.inference_mode()
def capture_block_inputs(model, tokenizer, texts, spans, block: int, batch_size: int = 16,
                         whole_rows: bool = False) -> list[BlockInputs]:
    """What block ``block`` receives, per batch. ``whole_rows``: keep every token even in a causal model
    (the "last" position and a next-token loss need them; the target's vectors do not)."""
    from probe.core.adapters import adapter_for

    blocks = adapter_for(model).blocks(model)
    cut = not whole_rows and attends_causally(model)
    order, _ = length_sorted(tokenizer, texts, spans, cut)
    batches = []
    for rows in extraction_batches(order, batch_size):
        encoding, targets, last = encode_rows(tokenizer, [texts[i] for i in rows], [spans[i] for i in rows], cut)
        seen = {}

        def keep(module, args, kwargs):
            seen["args"], seen["kwargs"] = args, dict(kwargs)
            raise _Stop

        handle = blocks[block].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            # No KV cache: the blocks are rerun many times from these inputs, and a cache would grow.
            model(**on_device(encoding, device_of(model)), use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        batches.append(BlockInputs(rows, encoding, seen["args"], seen["kwargs"], targets, last, cut))
    return batches


@torch.inference_mode()
def vectors_at(model, batches: list[BlockInputs], block: int, layer: int, position: str = "target",
               pooling: str = "mean") -> np.ndarray:
    """Vectors at hidden state ``layer`` (> ``block``) and ``position`` (target, pooled, or last), running
    only blocks ``block``..``layer``-1."""
    if layer <= block:
        raise ValueError(f"layer {layer} comes before block {block} runs: nothing to rerun")
    return vectors_from(model, batches, block, [layer], position, pooling)[layer]


@torch.inference_mode()
def vectors_from(model, batches: list[BlockInputs], block: int, layers, position: str = "target",
                 pooling: str = "mean", on_deepest=None) -> dict[int, np.ndarray]:
    """Vectors at every hidden state in ``layers`` (each >= ``block``) in one pass through blocks
    ``block``..max(layers)-1. Layer ``block`` is the captured input itself, before any hook of block
    ``block`` (its ``resid_pre`` included) has seen it. ``on_deepest(batch, hidden)``, if given, sees each
    BlockInputs with its whole hidden state at the deepest layer (on the model's device). Rows come back in
    dataset order."""
    from probe.core.adapters import adapter_for
    from probe.core.adapters.base import one_forward

    layers = sorted(set(layers))
    if layers[0] < block:
        raise ValueError(f"layer {layers[0]} comes before block {block}: it is not rerun from there")
    blocks = adapter_for(model).blocks(model)
    out: dict[int, list] = {layer: [] for layer in layers}
    for batch in batches:
        hidden = batch.args[0] if batch.args else batch.kwargs["hidden_states"]
        with one_forward(model):  # the batch's mask is checked once, not by every block (each check waits for a GPU)
            for i in range(block, layers[-1] + 1):
                if i in out:
                    out[i].append(_pooled(hidden, batch, position, pooling))
                if i == layers[-1]:
                    if on_deepest is not None:
                        on_deepest(batch, hidden)
                    break
                args, kwargs = _with_hidden(batch, hidden)
                output = blocks[i](*args, **kwargs)
                hidden = output[0] if isinstance(output, tuple) else output
    rows = np.concatenate([batch.rows for batch in batches])
    return {layer: _in_dataset_order(parts, rows) for layer, parts in out.items()}


@dataclass(frozen=True)
class Edit:
    """What one copy writes at hook point ``name``: ``values`` (a tensor broadcast to the slot, or a number)
    into head ``head`` of a per-head tensor (None: the tensor has no head axis) at ``positions`` (None: all)."""

    name: str
    head: int | None
    values: object
    positions: list[int] | None = None


def copy_hooks(copies: list, rows_per_copy: int = 1) -> dict:
    """Hooks for a batch of copies laid out copy-major (copy c is rows c·R..(c+1)·R−1): each writes every
    copy's edits (``copies[c]``: a list of Edit, or None for an untouched copy) into that copy's rows only."""
    by_name: dict[str, list] = {}
    for copy, edits in enumerate(copies):
        rows = slice(copy * rows_per_copy, (copy + 1) * rows_per_copy)
        for edit in edits or []:
            by_name.setdefault(edit.name, []).append((rows, edit))
    return {name: _writer(edits) for name, edits in by_name.items()}


def _writer(edits: list):
    def hook(tensor, name):
        tensor = tensor.clone()
        for rows, edit in edits:
            values = edit.values.to(tensor) if isinstance(edit.values, torch.Tensor) else edit.values
            positions = slice(None) if edit.positions is None else edit.positions
            if edit.head is None:
                tensor[rows, positions] = values
            else:
                tensor[rows, edit.head, positions] = values
        return tensor

    return hook


def repeated(batch: BlockInputs, copies: int) -> BlockInputs:
    """``batch`` ``copies`` times over, copy-major, its rows numbered 0.. in that order. What the block
    receives per row (a tensor of two or more axes whose first is the batch's rows: hidden states, masks,
    per-row position embeddings) is repeated; the rest is shared by every row and kept."""
    n = len(batch.rows)

    def grow(value):
        if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == n:
            return value.repeat(copies, *[1] * (value.dim() - 1))
        if isinstance(value, tuple | list):
            return type(value)(grow(v) for v in value)
        if isinstance(value, dict):
            return {key: grow(v) for key, v in value.items()}
        return value

    return BlockInputs(list(range(n * copies)), grow(dict(batch.encoding)), grow(batch.args), grow(batch.kwargs),
                       batch.targets * copies, batch.last.repeat(copies), batch.cut)


@torch.inference_mode()
def vectors_of_copies(model, batches: list[BlockInputs], block: int, layer: int, copies: list,
                      position: str = "target", pooling: str = "mean", per_forward: int = 16) -> list[np.ndarray]:
    """``vectors_at`` once per copy (``copies[c]``: its list of Edit, None for none), ``per_forward`` copies
    of a batch run as one forward; each copy's vectors come back in dataset order. Every edit's hook point
    must lie in blocks ``block``.. (what comes before is the captured input, unchanged)."""
    from probe.core.hooks import hooks

    if per_forward < 1:
        raise ValueError(f"per_forward is {per_forward}; it must be at least 1")
    parts: list[list] = [[] for _ in copies]
    for batch in batches:
        n = len(batch.rows)
        for start in range(0, len(copies), per_forward):
            chunk = copies[start:start + per_forward]
            with hooks(model, copy_hooks(chunk, n)):
                vectors = vectors_at(model, [repeated(batch, len(chunk))], block, layer, position, pooling)
            for copy in range(len(chunk)):
                parts[start + copy].append(vectors[copy * n:(copy + 1) * n])
    rows = np.concatenate([batch.rows for batch in batches])
    return [_in_dataset_order(copy_parts, rows) for copy_parts in parts]


def _in_dataset_order(parts: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    stacked = np.concatenate(parts)
    ordered = np.empty_like(stacked)
    ordered[rows] = stacked
    return ordered


def _pooled(hidden, batch: BlockInputs, position: str, pooling: str) -> np.ndarray:
    hidden = hidden.float().cpu()  # the vectors are what leaves the device
    if position == "target":
        return pool_targets(hidden, batch.targets, pooling)
    if position != "last":
        raise ValueError(f"reruns from a block read the target or last position, not {position!r}: "
                         "choose one of those in the plugin's options (position: target or last)")
    if batch.cut:
        raise ValueError('the rows were cut after the target: capture them with whole_rows=True for "last"')
    return hidden[torch.arange(len(hidden)), batch.last].numpy()


def _with_hidden(batch: BlockInputs, hidden) -> tuple[tuple, dict]:
    if batch.args:
        return (hidden, *batch.args[1:]), batch.kwargs
    return batch.args, {**batch.kwargs, "hidden_states": hidden}
