"""Target vectors per layer: batched, length-sorted, stopped after the deepest layer asked for, cached on disk.

Layer 0 is the residual stream entering the first block (token + position embeddings); layer L is the
residual stream leaving block L (before any final layer norm, unless ``final_norm`` asks for the last
layer after it, as Hugging Face's last ``hidden_states``). Only the vectors at the positions asked
for (probe/pipeline/positions.py: the target word pooled over its subwords, the first or last token, the
mean over the row, a token index, a span) are kept, never whole sequences; every position comes from the
same forwards. In a causal model the tokens after the target cannot change its vectors, so when no
position reads a token after it they are not computed (about half of the tokens of the mole set). Rows that share a text (the words of a
tagged sentence, one row each) are computed from one forward of that text: they are batched together
and the text is encoded once.

The cache is a folder of chunk files, each written atomically once its rows are done: a rerun with the
same key does no model work, and an interrupted run picks up at the first missing chunk.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from probe.pipeline import positions as position_specs
from probe.pipeline.config import POOLINGS
from probe.pipeline.data import span_token_indices
from probe.pipeline.lengths import TOKEN_BLOCK_ROWS, token_lengths
from probe.pipeline.progress import progress_bar
from probe.scale.devices import device_of, on_device
from probe.scale.ranks import Ranks
from probe.store.chunks import PROOF, drop_damaged, mark_complete, write_chunk
from probe.store.matrices import open_matrix, write_matrix

CHUNK_ROWS = 256  # rows per cache file: a killed run loses at most this many rows' work


class _StopForward(Exception):
    """Raised by a hook once the deepest requested layer is captured: the rest of the model is not run."""


@dataclass
class FeatureStore:
    """Extracted vectors on disk: ``store.layer("target", 3)`` → (n_rows, d) float32, in dataset order."""

    folder: Path
    layers: list[int]
    n_rows: int
    positions: tuple[str, ...] = position_specs.NAMED  # the names of the positions extracted
    _mapped: dict = field(default_factory=dict, repr=False, compare=False)  # (position, layer) → checked matrix

    def chunks(self) -> list[Path]:
        return sorted(self.folder.glob("chunk-*.safetensors"))

    def layer(self, position: str, layer: int) -> np.ndarray:
        """The vectors at ``position`` in ``layer``, memory-mapped read-only from one file in dataset order
        (built from the chunks on first use; see probe.store.matrices)."""
        if position not in self.positions:
            raise ValueError(f"position {position!r} was not extracted into {self.folder} "
                             f"(it holds: {', '.join(self.positions)})")
        if (position, layer) in self._mapped:  # checked once per run: its digest reads the whole file
            return self._mapped[position, layer]
        slot = self.layers.index(layer)
        path = self.folder / f"matrix-{position}-{layer:03d}.npy"
        sources = self._sources()
        matrix = open_matrix(path, sources)
        if matrix is None:
            matrix = write_matrix(path, (self.n_rows, self._width(position)), self._blocks(position, slot), sources)
        self._mapped[position, layer] = matrix
        return matrix

    def rows(self, position: str, layer: int, index: np.ndarray) -> np.ndarray:
        """``layer(position, layer)[index]``; the mapped matrix itself, not a copy, when ``index`` is every row
        in order (a run's "all" subset), so that no layer's vectors are held in memory before a fit reads them."""
        matrix = self.layer(position, layer)
        whole = len(index) == self.n_rows and np.array_equal(index, np.arange(self.n_rows))
        return matrix if whole else matrix[index]

    def _blocks(self, position: str, slot: int):
        """(row numbers, vectors) of each chunk at ``position`` and the layer in ``slot``, one chunk at a time."""
        for path in self.chunks():
            with safe_open(path, framework="pt") as chunk:
                yield chunk.get_tensor("rows").numpy(), chunk.get_slice(position)[slot].float().numpy()

    def _width(self, position: str) -> int:
        with safe_open(self.chunks()[0], framework="pt") as chunk:
            return chunk.get_slice(position).get_shape()[-1]

    def _sources(self) -> str:
        """A digest of the chunks' own checksums (their metadata; no tensor is read): a matrix built from
        other chunks is not used."""
        digest = hashlib.sha256()
        for path in self.chunks():
            with safe_open(path, framework="pt") as chunk:
                digest.update(f"{path.name}:{(chunk.metadata() or {}).get(PROOF)}\n".encode())
        return digest.hexdigest()


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
    positions: Sequence = ("target", "last"),
    position_spans: dict[str, Sequence] | None = None,
    batch_size: int = 16,
    chunk_rows: int = CHUNK_ROWS,
    progress: bool | str = True,
    description: str = "extracting",
    final_norm: bool = False,
    ranks: Ranks | None = None,
) -> FeatureStore:
    """Vectors at ``positions`` (specs or names, see positions.py) for ``layers``; ``load()`` → (model, tokenizer)
    runs only if needed. ``spans``: each row's target span ((None, None) in a row without one);
    ``position_spans``: each ``{span: …}`` position's per-row spans, by name (see positions.row_spans).
    ``final_norm``: the last layer after the model's final norm (see ``run_to_layer``).
    ``ranks``: under torchrun, this process extracts only the chunks it owns, then waits for the others."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    layers = sorted(set(layers))
    names = tuple(position_specs.names(positions))
    spans_by_name = {"target": spans, **(position_spans or {})}
    ranks = ranks or Ranks()
    folder = Path(folder)  # created with its first chunk: a run that fails before leaves no empty folder
    store = FeatureStore(folder, layers, len(texts), names)
    drop_damaged(folder)  # a chunk that fails its checksum is named and extracted again, never read
    if is_complete(folder, len(texts), chunk_rows):
        return store

    model, tokenizer = load()
    cut = position_specs.within_target(names) and attends_causally(model)
    keys = text_keys(texts)
    order, _ = length_sorted(tokenizer, texts, spans, cut, keys)
    chunks = chunked(order, chunk_rows, keys)
    todo = [(n, rows) for n, rows in enumerate(chunks) if ranks.owns(n) and not _chunk_path(folder, n).exists()]

    bar = progress_bar(progress, total=sum(len(rows) for _, rows in todo), desc=description, unit="row")
    for n, rows in todo:
        vectors = {p: np.empty((len(layers), len(rows), _width(model)), dtype=np.float32) for p in names}
        chunk_texts = rows_of_texts(texts, rows)
        for start, batch in sorted_batches(rows, batch_size, keys):
            batch_spans = {name: [row_spans[i] for i in batch] for name, row_spans in spans_by_name.items()}
            found = _extract_batch(model, tokenizer, chunk_texts[start : start + len(batch)], batch_spans, layers,
                                   pooling, cut, final_norm, names)
            for position in names:
                vectors[position][:, start : start + len(batch)] = found[position]
            bar.update(len(batch))
        write_chunk(  # atomically, with the checksum drop_damaged checks
            _chunk_path(folder, n),
            {"rows": torch.tensor(rows), **{p: torch.from_numpy(v) for p, v in vectors.items()}},
        )
    bar.close()
    ranks.wait()  # every rank's chunks are on disk before the store is called complete and read
    if ranks.is_main:
        mark_complete(folder, json.dumps({"rows": len(texts), "layers": layers, "chunks": len(chunks)}))
    return store


def rows_of_texts(texts, rows: list[int]) -> list[str]:
    """``[texts[i] for i in rows]``; from a datasets column in one read (row by row, each read costs about
    as much as the whole chunk's)."""
    if isinstance(texts, (list, tuple)):
        return [texts[i] for i in rows]
    return list(texts[list(rows)])


def length_sorted(tokenizer, texts, spans, cut: bool, keys: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """The rows longest first (a batch too big for memory fails at once; rows of like length share a batch),
    and each row's token count (with ``cut``, up to its target's last token): the order extraction and reruns
    from a block batch rows in. Rows of one text stay together (ranked by the text's longest row, then its
    first row), so that one forward serves them all; with distinct texts this is plain length order. ``keys``:
    ``text_keys(texts)``, when the caller has them already."""
    lengths = token_counts(tokenizer, texts, spans, cut)
    keys = np.asarray(text_keys(texts) if keys is None else keys, dtype=np.int64)
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64), lengths
    _, first_row, text = np.unique(keys, return_index=True, return_inverse=True)
    longest = np.zeros(len(first_row), dtype=np.int64)
    np.maximum.at(longest, text, lengths)  # numbers per row, not a dict and a tuple per row: 100,000 rows are common
    return np.lexsort((np.arange(len(keys)), first_row[text], -longest[text])), lengths


def text_keys(texts, block_rows: int = 4096) -> np.ndarray:
    """A number per row, equal for rows of equal text: what batching and chunking compare, read a block at a
    time (a datasets column costs a read per access) and holding numbers, not every text."""
    ids: dict[int, int] = {}
    blocks = [np.zeros(0, dtype=np.int64)]
    for start in range(0, len(texts), block_rows):
        block = texts[start : start + block_rows]
        blocks.append(np.fromiter((ids.setdefault(hash(text), len(ids)) for text in block), np.int64, len(block)))
    return np.concatenate(blocks)


def sorted_batches(rows: list[int], batch_size: int,
                   texts: Sequence[str] | None = None) -> list[tuple[int, list[int]]]:
    """``rows`` (sorted by length, longest first) in batches of at most ``batch_size``, each with its offset
    in ``rows``: neighbours in length share a batch, so right padding adds few tokens. Given the rows'
    ``texts``, a batch holds at most ``batch_size`` distinct texts and every row of each (``length_sorted``
    keeps them together), so rows sharing a text share its forward; distinct texts batch as without them
    (``texts`` may be ``text_keys``: only equality is read). A row's vectors depend in the last bits on its batch, on its size and padded length (the matrix-multiply
    library picks its kernel and thread split by the number of rows: SmolLM2's mole vectors differ by up to
    1e-4, about 1e-6 of their size, between batch sizes), so the batch size is part of the cache key; the same
    dataset and batch size give the same batches, hence the same bits, every time."""
    if texts is None:
        return [(start, rows[start : start + batch_size]) for start in range(0, len(rows), batch_size)]
    batches, start, seen = [], 0, set()
    for offset, row in enumerate(rows):
        if texts[row] not in seen and len(seen) == batch_size:
            batches.append((start, rows[start:offset]))
            start, seen = offset, set()
        seen.add(texts[row])
    return batches + ([(start, rows[start:])] if start < len(rows) else [])


def extraction_batches(order: Sequence[int], batch_size: int, chunk_rows: int = CHUNK_ROWS,
                       texts: Sequence[str] | None = None) -> list[list[int]]:
    """The batches ``extract`` runs, in its order: ``order`` cut into cache chunks of ``chunk_rows`` rows, each
    chunk in ``sorted_batches`` (given the rows' ``texts``, as extract does). A rerun batched alike computes
    each row as extraction did, bit for bit, when the texts are distinct; reruns from a block
    (probe/pipeline/partial.py) run one sequence per row, so rows sharing a text agree to float rounding."""
    return [[int(row) for row in batch] for chunk in chunked(order, chunk_rows, texts)
            for _, batch in sorted_batches(chunk, batch_size, texts)]


def chunked(order: list[int], chunk_rows: int, texts: Sequence[str] | None = None) -> list[list[int]]:
    """``order`` cut into the cache's chunks: chunk n is written to its own file (see ``_chunk_path``). Given
    the rows' ``texts``, a chunk that reaches ``chunk_rows`` rows in the middle of a text's rows takes the rest
    of them too, so that a text is run in one chunk (``length_sorted`` keeps its rows together)."""
    if texts is None:
        return [order[start : start + chunk_rows] for start in range(0, len(order), chunk_rows)]
    chunks, start = [], 0
    for offset in range(1, len(order) + 1):
        at_boundary = offset == len(order) or texts[order[offset]] != texts[order[offset - 1]]
        if at_boundary and offset - start >= chunk_rows or offset == len(order):
            chunks.append(order[start:offset])
            start = offset
    return chunks


def is_complete(folder: Path, n_rows: int, chunk_rows: int = CHUNK_ROWS) -> bool:
    """Whether ``folder`` holds a finished extraction: marked complete, and no chunk deleted by hand since
    (as many chunks as complete.json records; one every ``chunk_rows`` rows in a cache from before it did)."""
    marker = Path(folder) / "complete.json"
    if not marker.exists():
        return False
    try:
        n_chunks = json.loads(marker.read_text()).get("chunks", -(-n_rows // chunk_rows))
    except (ValueError, AttributeError):  # not the JSON extract writes: extracted again
        return False
    return isinstance(n_chunks, int) and all(_chunk_path(folder, n).exists() for n in range(n_chunks))


def _chunk_path(folder: Path, n: int) -> Path:
    return folder / f"chunk-{n:05d}.safetensors"


def _width(model) -> int:
    return model.config.hidden_size


def attends_causally(model) -> bool:
    """Whether every attention layer lets a position see only itself and earlier ones (probe's cores say
    so by ``causal``, Hugging Face's modules by ``is_causal``): then nothing after the target changes it."""
    from probe.core.attention import MaskedMultiHeadAttention

    flags = [module.causal if isinstance(module, MaskedMultiHeadAttention) else module.is_causal
             for module in model.modules()
             if isinstance(module, MaskedMultiHeadAttention) or isinstance(getattr(module, "is_causal", None), bool)]
    return bool(flags) and all(flags) and not getattr(model.config, "is_encoder_decoder", False)


def token_counts(tokenizer, texts, spans, cut: bool, block_rows: int = TOKEN_BLOCK_ROWS) -> list[int]:
    """Tokens each row needs: all of them, or with ``cut`` those up to the target's last one. Tokenized a
    block of ``block_rows`` at a time: only the counts are kept, never every row's token ids at once."""
    if not cut:
        return token_lengths(tokenizer, texts, block_rows)
    counts = []
    for start in range(0, len(texts), block_rows):
        block = list(texts[start : start + block_rows])  # a slice: one read of a datasets column, not a read a row
        offsets = tokenizer(block, return_offsets_mapping=True)["offset_mapping"]
        counts += [max(span_token_indices(text, row, begin, end), default=len(row)) + 1
                   for text, row, (begin, end) in zip(block, offsets, spans[start : start + len(block)])]
    return counts


@torch.inference_mode()
def _extract_batch(model, tokenizer, texts, spans, layers, pooling, cut=False, final_norm=False,
                   positions=("target", "last")):
    """One forward of the batch's distinct texts (cut short after the deepest layer, and with ``cut`` after the
    batch's last target token) → {position name: array of shape (layers, rows, d)}; ``spans``:
    positions.row_spans' for the batch."""
    distinct, sequence = distinct_texts(texts)
    encoding, indices = encode_positions(tokenizer, distinct, spans, positions, cut, sequence)
    captured = run_to_layer(model, on_device(encoding, device_of(model)), max(layers), layers, final_norm)
    out = {name: np.empty((len(layers), len(texts), captured[layers[0]].shape[-1]), dtype=np.float32)
           for name in indices}
    for slot, layer in enumerate(layers):
        hidden = captured[layer].float().cpu()  # vectors are stored; nothing else leaves the device
        for name, rows in indices.items():
            out[name][slot] = pool_targets(hidden, rows, position_specs.parse(name).pooling(pooling), sequence)
    return out


def encode_positions(tokenizer, texts, spans: dict, positions, cut: bool, sequence: Sequence[int] | None = None):
    """A right-padded encoding of ``texts`` and, per position name, each row's token indices; with ``cut``
    (every position within the target), without the columns after every row's target. ``sequence``: the text
    row i reads (None: row i reads text i)."""
    sequence = range(len(texts)) if sequence is None else sequence
    encoding, offsets, special = _tokenized(tokenizer, texts)
    special = special.tolist()
    n_tokens = encoding["attention_mask"].sum(-1).tolist()

    def per_row(values):
        return [values[i] for i in sequence]

    try:
        indices = position_specs.batch_indices(positions, per_row(list(texts)), per_row(offsets), per_row(n_tokens),
                                               per_row(special), spans)
    except position_specs.RowTokens as error:
        raise ValueError(str(error)) from None
    if cut:
        keep = max(max(covered) for covered in indices["target"]) + 1
        encoding = {name: values[:, :keep] for name, values in encoding.items()}
    return dict(encoding), indices


def distinct_texts(texts: Sequence[str]) -> tuple[list[str], list[int]]:
    """The distinct texts in order of first appearance, and for each row the index of its text among them."""
    index: dict[str, int] = {}
    sequence = [index.setdefault(text, len(index)) for text in texts]
    return list(index), sequence


def encode_rows(tokenizer, texts, spans, cut: bool, sequence: Sequence[int] | None = None):
    """``encode_batch``'s (encoding, target indices, last index); with ``cut``, without the columns after every
    row's target (right-padded, so no token a target sees is dropped; ``last`` then points past the end)."""
    encoding, targets, last_index = encode_batch(tokenizer, texts, spans, sequence)
    if cut:
        keep = max(max(covered) for covered in targets) + 1
        encoding = {name: values[:, :keep] for name, values in encoding.items()}
    return dict(encoding), targets, last_index


def encode_batch(tokenizer, texts, spans, sequence: Sequence[int] | None = None):
    """Right-padded encoding of ``texts``, each row's target token indices, and each text's last word-piece
    index. ``sequence``: row i's span lies in ``texts[sequence[i]]`` (None: one row per text, in order)."""
    sequence = range(len(texts)) if sequence is None else sequence
    encoding, offsets, special = _tokenized(tokenizer, texts)
    special = special.bool()
    targets = []
    for i, (start, end) in zip(sequence, spans):
        covered = span_token_indices(texts[i], offsets[i], start, end)
        if not covered:
            raise ValueError(f"no token covers the target {texts[i][start:end]!r} in {texts[i]!r}")
        targets.append(covered)
    # The sentence's last word-piece: the last real token that is not a special one ([SEP], </s>).
    words = encoding["attention_mask"].bool() & ~special
    last_index = torch.where(words, torch.arange(words.shape[1]), -1).max(-1).values
    return encoding, targets, last_index


def _tokenized(tokenizer, texts):
    """The right-padded encoding of ``texts`` (tensors), each text's character offsets per token, and the mask
    of its special tokens ([CLS], [SEP], BOS)."""
    tokenizer.padding_side = "right"
    encoding = tokenizer(
        list(texts), return_tensors="pt", padding=True, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    return encoding, encoding.pop("offset_mapping").tolist(), encoding.pop("special_tokens_mask")


def pool_targets(hidden: torch.Tensor, targets: list[list[int]], pooling: str,
                 sequence: Sequence[int] | None = None) -> np.ndarray:
    """(texts, pos, d) → (rows, d): each row's target tokens pooled (first, last or mean). ``sequence``: the
    text each row's tokens are in (None: row i in text i)."""
    sequence = range(len(targets)) if sequence is None else sequence
    out = np.empty((len(targets), hidden.shape[-1]), dtype=np.float32)
    for i, (source, covered) in enumerate(zip(sequence, targets)):
        vectors = hidden[source, covered].float()
        pooled = {"first": vectors[0], "last": vectors[-1], "mean": vectors.mean(0)}[pooling]
        out[i] = pooled.numpy()
    return out


def run_to_layer(model, encoding, deepest: int, layers, final_norm: bool = False) -> dict[int, torch.Tensor]:
    """Run ``model`` on ``encoding`` until block ``deepest`` is done; the residual stream at ``layers``.

    ``final_norm``: the last layer (the number of blocks) is read after the model's final norm instead —
    Hugging Face's last ``hidden_states`` — so the whole model runs; other layers are unchanged."""
    from probe.core.adapters import adapter_for

    blocks = adapter_for(model).blocks(model)
    if deepest > len(blocks):
        raise ValueError(f"layer {deepest} requested, but the model has {len(blocks)} blocks (layers 0..{len(blocks)})")
    normed = final_norm and deepest == len(blocks)
    stop_at = None if normed else deepest
    captured: dict[int, torch.Tensor] = {}

    def keep_input(module, args, kwargs):
        captured[0] = args[0] if args else kwargs["hidden_states"]
        if stop_at == 0:
            raise _StopForward

    def keep_output(layer):
        def hook(module, args, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == stop_at:
                raise _StopForward

        return hook

    handles = [blocks[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    handles += [blocks[layer - 1].register_forward_hook(keep_output(layer)) for layer in layers if layer > 0]
    try:
        # No KV cache: nothing is generated, and reruns from a block (probe.pipeline.partial) run without one too; the
        # cache's copy of the keys rounds GPT-2's attention differently in the last bits.
        outputs = model(**encoding, use_cache=False, **({"output_hidden_states": True} if normed else {}))
        if normed:
            captured[deepest] = outputs.hidden_states[-1]
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return {layer: captured[layer] for layer in layers}
