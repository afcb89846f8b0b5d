"""Run a model from block b on: an intervention at block b leaves everything before it unchanged, so the
residual stream entering block b is computed once and only blocks b.. are rerun per intervention.

``capture_block_inputs`` runs each batch up to block b and keeps what the model hands that block (the
hidden states and the keyword arguments: mask, position embeddings, …, which every block receives
alike); ``vectors_at`` reruns blocks b..layer-1 from there — under whatever hooks are attached — and
pools the target vectors at ``layer``. Without an intervention it gives the extracted vectors up to
rounding: it batches rows in dataset order, padded, where extraction batches rows of one length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probe.devices import device_of
from probe.extract import encode_batch, pool_targets


class _Stop(Exception):
    pass


@dataclass
class BlockInputs:
    """One batch as block ``block`` receives it."""

    args: tuple
    kwargs: dict
    targets: list[list[int]]  # each row's target token indices
    last: torch.Tensor  # each row's last word-piece index


@torch.inference_mode()
def capture_block_inputs(model, tokenizer, texts, spans, block: int, batch_size: int = 16) -> list[BlockInputs]:
    from probe.adapters import adapter_for

    blocks = adapter_for(model).blocks(model)
    batches = []
    for start in range(0, len(texts), batch_size):
        encoding, targets, last = encode_batch(tokenizer, texts[start : start + batch_size],
                                            spans[start : start + batch_size])
        seen = {}

        def keep(module, args, kwargs):
            seen["args"], seen["kwargs"] = args, dict(kwargs)
            raise _Stop

        handle = blocks[block].register_forward_pre_hook(keep, with_kwargs=True)
        try:
            # No KV cache: the blocks are rerun many times from these inputs, and a cache would grow.
            model(**encoding.to(device_of(model)), use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        batches.append(BlockInputs(seen["args"], seen["kwargs"], targets, last))
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
    ``block`` (its ``resid_pre`` included) has seen it. ``on_deepest(batch number, hidden)``, if given,
    sees each batch's whole hidden state at the deepest layer (on the model's device)."""
    from probe.adapters import adapter_for

    layers = sorted(set(layers))
    if layers[0] < block:
        raise ValueError(f"layer {layers[0]} comes before block {block}: it is not rerun from there")
    blocks = adapter_for(model).blocks(model)
    out: dict[int, list] = {layer: [] for layer in layers}
    for number, batch in enumerate(batches):
        hidden = batch.args[0] if batch.args else batch.kwargs["hidden_states"]
        for i in range(block, layers[-1] + 1):
            if i in out:
                out[i].append(_pooled(hidden, batch, position, pooling))
            if i == layers[-1]:
                if on_deepest is not None:
                    on_deepest(number, hidden)
                break
            args, kwargs = _with_hidden(batch, hidden)
            output = blocks[i](*args, **kwargs)
            hidden = output[0] if isinstance(output, tuple) else output
    return {layer: np.concatenate(parts) for layer, parts in out.items()}


def _pooled(hidden, batch: BlockInputs, position: str, pooling: str) -> np.ndarray:
    hidden = hidden.float().cpu()  # the vectors are what leaves the device
    if position == "target":
        return pool_targets(hidden, batch.targets, pooling)
    return hidden[torch.arange(len(hidden)), batch.last].numpy()


def _with_hidden(batch: BlockInputs, hidden) -> tuple[tuple, dict]:
    if batch.args:
        return (hidden, *batch.args[1:]), batch.kwargs
    return batch.args, {**batch.kwargs, "hidden_states": hidden}
