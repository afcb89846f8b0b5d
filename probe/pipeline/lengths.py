"""Texts longer than the model's positions: refused (naming file and row), skipped under
``on_bad_rows: skip``, or, with ``long_texts: window``, cut to a window of the model's length around the
target (the target's own tokens always kept)."""

from __future__ import annotations

from probe.pipeline.data import DataError, Problem, span_token_indices

# Rows tokenized at once when only their counts are wanted. The tokenizer's ids come back as Python lists,
# freed after each block; 4,096 rows a block left 20–25 MiB of the allocator's free memory behind for the
# rest of a run (at 10,000 rows and at 100,000), 512 about 5, at the same speed.
TOKEN_BLOCK_ROWS = 512


def max_positions(model_config) -> int | None:
    """How many tokens the model takes at once, when its config says (learned positions: GPT-2, BERT).
    ``model_config``: a transformers config, or the dict of a config.json."""
    for name in ("max_position_embeddings", "n_positions"):
        value = model_config.get(name) if isinstance(model_config, dict) else getattr(model_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def surely_fit(texts, limit: int) -> bool:
    """True when no text can be longer than ``limit`` tokens: a tokenizer gives at most one token per byte
    (byte-level BPE; WordPiece and SentencePiece give fewer), plus a word-boundary marker or two and its
    special tokens — twice the bytes and 16 more is far above that. Then no tokenizer need be loaded."""
    return all(2 * len(text.encode("utf-8")) + 16 <= limit for text in texts)


def fit_rows(rows, numbers: list[int], get_tokenizer, limit: int | None, *, policy: str, on_bad_rows: str,
             source: str):
    """(rows that fit, problems for the rows left out). ``numbers``: each row's 1-based number in its file.
    ``get_tokenizer()`` gives the tokenizer; it is called only when some text may be too long."""
    if limit is None or len(rows) == 0 or surely_fit(rows["text"], limit):
        return rows, []
    tokenizer = get_tokenizer()
    lengths = token_lengths(tokenizer, rows["text"])
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return rows, []
    if policy == "window":
        return _windowed(rows, too_long, tokenizer, limit), []
    problems = [
        Problem(numbers[i], "text", f"the text is {lengths[i]} tokens long, more than the model's {limit} "
                "positions (shorten it, or set long_texts: window to keep a window around the target)", source)
        for i in too_long
    ]
    if on_bad_rows == "raise":
        raise DataError(f"{source}: {len(problems)} text(s) longer than the model accepts:", problems)
    dropped = set(too_long)
    return rows.select([i for i in range(len(rows)) if i not in dropped]), problems


def token_lengths(tokenizer, texts, block_rows: int = TOKEN_BLOCK_ROWS) -> list[int]:
    """Each text's number of tokens (special ones included), tokenized a block of ``block_rows`` at a time:
    only the counts are kept, never every row's token ids at once."""
    lengths = []
    for start in range(0, len(texts), block_rows):
        block = list(texts[start : start + block_rows])  # a slice: one read of a datasets column, not a read a row
        lengths += [len(ids) for ids in tokenizer(block, add_special_tokens=True)["input_ids"]]
    return lengths


def _windowed(rows, indices: list[int], tokenizer, limit: int):
    """``rows`` with the text of each row in ``indices`` cut to a window around its target, rewritten a
    batch at a time (data.table_of): the table is never held as one Python object per row."""
    from probe.pipeline.data import rows_of, table_of

    cut = set(indices)

    def rewritten():
        for i, record in enumerate(rows_of(rows)):
            if i in cut:
                text, start, end = window(tokenizer, record["text"], record["span_start"], record["span_end"], limit)
                record = {**record, "text": text, "span_start": start, "span_end": end, "target": text[start:end]}
            yield record

    return table_of(rewritten(), rows.features)


def window(tokenizer, text: str, start: int, end: int, limit: int) -> tuple[str, int, int]:
    """The longest piece of ``text`` around [start, end) that encodes to at most ``limit`` tokens, centred
    on the target; returns (piece, start, end) with the span moved into the piece."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    covered = span_token_indices(text, offsets, start, end)
    first, last = covered[0], covered[-1]
    room = limit - len(tokenizer("", add_special_tokens=True)["input_ids"])
    while room > last - first:
        extra = room - (last - first + 1)
        low = max(0, first - extra // 2)
        high = min(len(offsets), low + room)
        low = max(0, high - room)
        begin, stop = min(offsets[low][0], start), max(offsets[high - 1][1], end)
        piece = text[begin:stop]
        if len(tokenizer(piece, add_special_tokens=True)["input_ids"]) <= limit:
            return piece, start - begin, end - begin
        room -= 1  # a cut can tokenise differently at its edges: one token less, and again
    raise DataError(f"the target {text[start:end]!r} alone is longer than the model's {limit} positions")
