"""Positions: which token(s) of a row a probe reads, as token indices of the row's encoding.

A config's ``positions`` lists specs, each a name or a one-key mapping:

- ``target``: the target word's tokens, pooled by ``pooling``;
- ``first`` (also written ``cls``, the same token, always recorded as ``first``): the row's first token —
  BOS where the tokenizer adds one, [CLS] for BERT, else the first word piece;
- ``last``: the last token that is not a special one ([SEP], </s> aside);
- ``mean``: the mean over every token of the row that is not padding, special tokens included (as
  sentence-transformers pools);
- ``{index: N}``: token N of ``tokenizer(text)["input_ids"]`` (special tokens included), negative from the end;
- ``{span: [start_field, end_field]}``: the tokens covering the character span that the row's two columns
  give, pooled by ``pooling``.

Each spec has one name (``target``, ``first``, ``last``, ``mean``, ``index3``, ``index-2``,
``span-verb_start-verb_end``): the name results, tables and cached features use, made of letters, digits,
``_`` and ``-`` only, so it is safe in a file name. A name is also accepted as a spec, so a config written
back from results.json reads the same.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass


NAMED = ("target", "first", "last", "mean")
ALIASES = {"cls": "first"}  # another spelling of the same token: recorded under the one name
SPELLINGS = (*NAMED, *ALIASES, "{index: N}", "{span: [start_field, end_field]}")
_FIELD = re.compile(r"[A-Za-z0-9_]+")
_INDEX_NAME = re.compile(r"index(-?[0-9]+)")
_SPAN_NAME = re.compile(r"span-([A-Za-z0-9_]+)-([A-Za-z0-9_]+)")


@dataclass(frozen=True)
class Position:
    """One parsed position spec: ``kind`` is a named position, ``index`` or ``span``."""

    kind: str
    index: int | None = None
    fields: tuple[str, str] | None = None  # a span's start and end columns

    @property
    def name(self) -> str:
        if self.kind == "index":
            return f"index{self.index}"
        if self.kind == "span":
            return f"span-{self.fields[0]}-{self.fields[1]}"
        return self.kind

    @property
    def within_target(self) -> bool:
        """Whether its tokens never come after the target's last one: then a causal forward may stop there."""
        return self.kind in ("target", "first")

    def pooling(self, pooling: str) -> str:
        """How its tokens are pooled: ``mean`` always averages, the others as the config's ``pooling`` says
        (a single token is itself under every pooling)."""
        return "mean" if self.kind == "mean" else pooling


def parse(spec) -> Position:
    """A position from its config spelling; a ValueError says what to write instead."""
    if isinstance(spec, Position):
        return spec
    if isinstance(spec, str):
        return _from_name(spec)
    if isinstance(spec, dict) and len(spec) == 1 and "index" in spec:
        index = spec["index"]
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"{{index: N}} needs a whole number N (negative counts from the end), got {index!r}")
        return Position("index", index=index)
    if isinstance(spec, dict) and len(spec) == 1 and "span" in spec:
        return Position("span", fields=_span_fields(spec["span"]))
    raise ValueError(f"{spec!r} is not a position; accepted values: {', '.join(SPELLINGS)}")


def _from_name(name: str) -> Position:
    name = ALIASES.get(name, name)
    if name == "every":  # every word of a sentence: tagged data is one row per word, read at `target`
        raise ValueError("'every' is not a position: tagged data (dataset: {name: tagged, path: …}, CoNLL-U or "
                         "tokens + tags) already gives one row per word, grouped by sentence; probe it at "
                         "`target` (see docs: Token tasks)")
    if name in NAMED:
        return Position(name)
    if match := _INDEX_NAME.fullmatch(name):
        return Position("index", index=int(match[1]))
    if match := _SPAN_NAME.fullmatch(name):
        return Position("span", fields=(match[1], match[2]))
    near = difflib.get_close_matches(name, [*NAMED, *ALIASES, "index", "span"], n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    if near and near[0] in ("index", "span"):
        hint = f" (did you mean {{{near[0]}: …}}?)"
    raise ValueError(f"{name!r} is not a position{hint}; accepted values: {', '.join(SPELLINGS)}")


def _span_fields(fields) -> tuple[str, str]:
    if not (isinstance(fields, (list, tuple)) and len(fields) == 2 and all(isinstance(f, str) for f in fields)):
        raise ValueError(f"{{span: [start_field, end_field]}} needs the names of two columns, got {fields!r}")
    bad = [f for f in fields if not _FIELD.fullmatch(f)]
    if bad:
        raise ValueError(f"span column {bad[0]!r} must be letters, digits and _ only (it becomes part of the "
                         "position's name in results and file names)")
    return fields[0], fields[1]


def names(specs: Sequence) -> list[str]:
    """Each spec's name, in order, each once (``cls`` and ``first`` are one position)."""
    return list(dict.fromkeys(parse(spec).name for spec in specs))


def needs_target(specs: Sequence) -> bool:
    return any(parse(spec).kind == "target" for spec in specs)


def within_target(specs: Sequence) -> bool:
    """Whether no position reads a token after the target: a causal model's forward may stop after it."""
    return needs_target(specs) and all(parse(spec).within_target for spec in specs)


def row_spans(specs: Sequence, table, target_spans: Sequence) -> dict[str, Sequence]:
    """Per position that reads a character span, each row's (start, end): the target's, or the columns a
    ``span`` position names (``table``: the rows, with those columns)."""
    spans = {}
    for position in map(parse, specs):
        if position.kind == "target":
            spans[position.name] = target_spans
        elif position.kind == "span":
            start, end = position.fields
            spans[position.name] = list(zip(table[start], table[end]))
    return spans


class RowTokens(ValueError):
    """A row lacks the token(s) a position reads; ``field`` names the row's field at fault."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def token_indices(position: Position, text: str, offsets, n_tokens: int, special, span=None) -> list[int]:
    """The token indices ``position`` reads in one row: ``offsets`` and ``special`` (special-token flags) as
    the tokenizer gives them for the row, ``n_tokens`` its tokens without padding (right-padded: they come
    first), ``span`` the row's (start, end) for a position that reads one. ``RowTokens`` when it has none."""
    kind = position.kind
    if kind == "first":
        return [0]
    if kind == "mean":
        return list(range(n_tokens))
    if kind == "last":
        words = [i for i in range(n_tokens) if not special[i]]
        if not words:
            raise RowTokens("text", f"{text!r} has no token that is not a special one")
        return [words[-1]]
    if kind == "index":
        index = position.index if position.index >= 0 else n_tokens + position.index
        if not 0 <= index < n_tokens:
            raise RowTokens("text", f"position {{index: {position.index}}} needs at least "
                            f"{position.index + 1 if position.index >= 0 else -position.index} tokens; "
                            f"{text!r} has {n_tokens}")
        return [index]
    field = "target" if kind == "target" else position.fields[0]
    start, end = (_offset(value) for value in span) if span is not None else (None, None)
    if start is None or end is None:
        raise RowTokens(field, f"position {position.name!r} needs a span, and the row gives none")
    if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= len(text)):
        raise RowTokens(field, f"span [{start}, {end}) is not inside the text (length {len(text)}): {text!r}")
    from probe.pipeline.data import span_token_indices  # here: a cached rerun parses positions, not data

    covered = span_token_indices(text, offsets, start, end)
    if not covered:
        raise RowTokens(field, f"no token covers {text[start:end]!r} in {text!r}")
    return covered


def _offset(value):
    """A character offset as a whole number (a CSV reader gives 3.0 for 3), None when missing."""
    if not isinstance(value, float):
        return value
    if value != value:  # NaN: an empty CSV cell
        return None
    return int(value) if value.is_integer() else value


def batch_indices(specs: Sequence, texts, offsets, n_tokens, special, spans: dict) -> dict[str, list[list[int]]]:
    """Per position name, each row's token indices (see ``token_indices``); ``spans``: ``row_spans``'s."""
    found = {}
    for position in map(parse, specs):
        rows = spans.get(position.name, [None] * len(texts))
        found[position.name] = [token_indices(position, text, offsets[i], n_tokens[i], special[i], rows[i])
                                for i, text in enumerate(texts)]
    return found


def fit_rows(specs: Sequence, get_tokenizer, rows, numbers: Sequence[int], *, on_bad_rows: str, source: str):
    """(rows every position can read, problems for the rows left out), checked before any model work: a row
    too short for ``{index: N}``, or whose ``{span: …}`` is missing or covers no token. Under
    ``on_bad_rows: raise`` any such row is a DataError naming the file, row and field. Only an index or a
    span can miss in a row that passed ``prepare`` (its text is not empty, its target was found), so
    without them no tokenizer is loaded: a rerun on a full cache loads none."""
    from probe.pipeline.data import DataError, Problem

    if not any(parse(spec).kind in ("index", "span") for spec in specs) or len(rows) == 0:
        return rows, []
    texts = list(rows["text"])
    spans = row_spans(specs, rows, list(zip(rows["span_start"], rows["span_end"])))
    encoding = get_tokenizer()(texts, return_offsets_mapping=True, return_special_tokens_mask=True)
    problems, bad = [], set()
    for i, text in enumerate(texts):
        for position in map(parse, specs):
            try:
                token_indices(position, text, encoding["offset_mapping"][i], len(encoding["input_ids"][i]),
                              encoding["special_tokens_mask"][i], spans.get(position.name, [None] * len(texts))[i])
            except RowTokens as error:
                problems.append(Problem(numbers[i], error.field, str(error), source))
                bad.add(i)
    if problems and on_bad_rows == "raise":
        raise DataError(f"{source}: {len(problems)} problem(s) with the positions asked for:", problems)
    kept = [i for i in range(len(rows)) if i not in bad]
    return (rows.select(kept) if bad else rows), problems
