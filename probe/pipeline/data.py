"""Sense-labelled rows: load them from a file or the hub, validate them, and find the target's tokens.

A prepared dataset has these columns:

- ``text``: the sentence;
- ``target``: the ambiguous word as it appears in ``text``;
- ``label``: the sense of the target;
- ``cue``: where the disambiguating context sits relative to the target: "left", "right", "both" or None;
- ``group``: a template id (rows sharing one are kept in the same cross-validation fold) or None;
- ``span_start``, ``span_end``: character offsets of the target in ``text`` (end exclusive);

and any other column the source has (a benchmark's ``split``, a ``word``), kept as it is.

Row numbers in messages are 1-based record numbers in the order the rows were loaded. For a JSONL file
without blank lines that is the line number; for a CSV file it excludes the header (line = row + 1).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import datasets
import numpy as np

from probe.errors import UserError, first_line
from probe.pipeline.datafiles import BUILDERS, MAX_FIELD_BYTES, MAX_ROW_BYTES, SizeLimits, check_row_size
from probe.store.tables import spooled_table

CUES = ("left", "right", "both")
COLUMNS = ("text", "target", "label", "cue", "group", "span_start", "span_end")
FEATURES = datasets.Features(
    {
        "text": datasets.Value("string"),
        "target": datasets.Value("string"),
        "label": datasets.Value("string"),
        "cue": datasets.Value("string"),
        "group": datasets.Value("string"),
        "span_start": datasets.Value("int64"),
        "span_end": datasets.Value("int64"),
    }
)
HUB_PREFIX = "hf:"


class DataError(UserError, ValueError):
    """Bad input data; the message lists every problem found, ``problems`` holds them as records."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        self.problems = list(problems)
        if self.problems:
            message += "\n" + "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(message)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the data: a row (1-based; None for whole-label problems), a field and why."""

    row: int | None
    field: str
    message: str
    source: str = ""

    def __str__(self) -> str:
        where = self.source or "<data>"
        if self.row is not None:
            where += f", row {self.row}"
        return f"{where}, field {self.field!r}: {self.message}"


# ---------------------------------------------------------------- loading


def load_rows(
    source: str | os.PathLike,
    *,
    text_field: str = "text",
    label_field: str = "label",
    target_field: str = "target",
    span_field: str | None = None,
    span_start_field: str | None = None,
    span_end_field: str | None = None,
    split: str | None = None,
    revision: str | None = None,
    max_field_bytes: int = MAX_FIELD_BYTES,
    max_row_bytes: int = MAX_ROW_BYTES,
    streaming: bool = False,
) -> datasets.Dataset:
    """Load rows from a .jsonl/.json/.csv/.parquet file or "hf:owner/name" and rename them onto the schema.

    The target's span is one ``span_field`` column ([start, end]) or two, ``span_start_field`` and
    ``span_end_field``; a file with columns ``span_start`` and ``span_end`` uses them unasked. Every other
    column is kept as it is (a benchmark's ``split``, a ``word``…) for ``filter``, ``split_by`` and
    ``evaluation``, except one named like a schema column it does not fill. ``split`` and ``revision``
    apply to a hub dataset only (a file is one table: select its rows with ``filter`` or ``evaluation``).
    A field larger than ``max_field_bytes`` (UTF-8; default 1 MiB) or a row larger than ``max_row_bytes``
    (default 4 MiB) is refused, naming the file, row and field.

    ``streaming``: read the source as a ``datasets`` iterable dataset, a batch of rows at a time, instead of
    preparing the whole raw table first (for sources larger than memory: a hub dataset is then never
    downloaded whole). Either way the rows are checked and kept a batch at a time (``ROWS_PER_BATCH``), as
    Arrow columns, never as one Python object per row of the whole set; the rows are the same.
    """
    source_name = str(source)
    _check_options(source_name, split, revision, span_field, span_start_field, span_end_field)
    limits = SizeLimits(max_field_bytes, max_row_bytes).check(source_name, DataError)
    if not isinstance(streaming, bool):
        raise DataError(f"{source_name}: dataset option streaming must be true or false, got {streaming!r}")
    raw = _load_raw(source_name, split=split or "train", revision=revision, limits=limits, streaming=streaming)
    raw_features = _raw_features(raw, source_name)
    columns = list(raw_features)
    if span_field is None and span_start_field is None and {"span_start", "span_end"} <= set(columns):
        span_start_field, span_end_field = "span_start", "span_end"
    spans = (span_field,) if span_field else tuple(f for f in (span_start_field, span_end_field) if f)
    fields = _field_map(columns, source_name, text_field, label_field, target_field, spans)
    extra = [c for c in columns if c not in COLUMNS and c not in fields.values() and c not in spans]
    features = datasets.Features({**FEATURES, **{column: raw_features[column] for column in extra}})

    def normalised():
        for number, raw_row in enumerate(rows_of(raw), start=1):
            check_row_size(raw_row, f"{source_name}, row {number}", limits, DataError)  # Parquet, hub: after reading
            try:
                row = _normalise_row(raw_row, fields, spans)
            except ValueError as error:
                problems.append(Problem(number, " / ".join(spans), str(error), source_name))
                continue
            yield {**row, **{column: raw_row[column] for column in extra}}

    problems: list[Problem] = []
    table = table_of(normalised(), features)
    if problems:
        raise DataError(f"{source_name}: malformed span(s) in {' / '.join(map(repr, spans))}:", problems)
    return table


# Rows read, checked and kept per batch: the only rows held as Python objects at once.
ROWS_PER_BATCH = 1024


def rows_of(ds, batch_rows: int | None = None):
    """Each row of ``ds`` (a Dataset or an IterableDataset) as a dict, read a batch of ``batch_rows`` (default
    ``ROWS_PER_BATCH``) at a time."""
    for batch in ds.iter(batch_size=batch_rows or ROWS_PER_BATCH):
        names = list(batch)
        for values in zip(*(batch[name] for name in names)):
            yield dict(zip(names, values))


def table_of(rows, features: datasets.Features, batch_rows: int | None = None) -> datasets.Dataset:
    """The ``rows`` (an iterable of dicts) as one Dataset, typed as ``from_list`` types them, a batch of
    ``batch_rows`` at a time: only that batch is ever held as Python objects, and the table lives in a
    temporary file (store/tables.py), not in memory."""
    import itertools

    rows = iter(rows)
    batches = iter(lambda: list(itertools.islice(rows, batch_rows or ROWS_PER_BATCH)), [])
    return spooled_table((datasets.Dataset.from_list(batch, features=features).data.table for batch in batches),
                         features)


def _raw_features(raw, source: str) -> datasets.Features:
    """The raw columns and their types; an iterable dataset's from its first rows when the builder does not
    say (the JSON builder infers them as it reads)."""
    if raw.features is not None:
        return raw.features
    try:
        first = next(iter(raw.iter(batch_size=ROWS_PER_BATCH)))
    except StopIteration:
        raise DataError(f"{source}: the dataset has no rows") from None
    return datasets.Dataset.from_dict(first).features


def _check_options(source, split, revision, span_field, span_start_field, span_end_field) -> None:
    """Refuse options that would be silently ignored."""
    if not source.startswith(HUB_PREFIX):
        for name, value in (("split", split), ("revision", revision)):
            if value is not None:
                raise DataError(
                    f"{source}: option {name}={value!r} applies to hub datasets ({HUB_PREFIX}owner/name) only; "
                    "a file is read whole — choose its rows with the config's filter or evaluation "
                    "(e.g. evaluation: {split_field: split, train: train, test: test})"
                )
    if span_field is not None and (span_start_field or span_end_field):
        raise DataError(f"{source}: give either span_field ([start, end] in one column) or "
                        "span_start_field and span_end_field, not both")
    if (span_start_field is None) != (span_end_field is None):
        raise DataError(f"{source}: span_start_field and span_end_field go together; got only "
                        f"{'span_start_field' if span_start_field else 'span_end_field'}")


def _load_raw(source: str, *, split: str, revision: str | None, limits: SizeLimits, streaming: bool = False):
    """Read the source with the matching datasets builder, untouched (``streaming``: as an iterable dataset)."""
    from probe.pipeline.datafiles import check_data_file, hub_error

    if source.startswith(HUB_PREFIX):
        try:
            return datasets.load_dataset(source[len(HUB_PREFIX) :], split=split, revision=revision,
                                         streaming=streaming)
        except Exception as error:  # offline, no such dataset, no such split: say which and what to do
            raise hub_error(source, error, DataError) from None
    path = Path(source)
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{source}: unsupported file type {path.suffix!r}; "
            f"use one of {', '.join(BUILDERS)} or '{HUB_PREFIX}owner/name' for a hub dataset"
        )
    if not path.is_file():
        raise DataError(f"{source}: no such file (looked for {path.absolute()})")
    check_data_file(path, DataError, limits)  # empty, not UTF-8, malformed, too big: named with its line
    # A local file is always read as the builder's single "train" split.
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train", streaming=streaming)
    except Exception as error:  # what the checks above don't catch (a bad parquet file, mixed types)
        reason = first_line(error)
        raise DataError(f"{source}: can't be read as {builder} ({type(error).__name__}: {reason})") from None


def _field_map(
    columns: list[str],
    source: str,
    text_field: str,
    label_field: str,
    target_field: str,
    spans: tuple[str, ...],
) -> dict[str, str]:
    """Map schema column -> user column, raising DataError for a missing required field."""
    required = {"text": text_field, "label": label_field}
    if not spans and target_field != "target":
        required["target"] = target_field  # a column named for it must exist; with a span the target is read off the text
    missing = [user for user in (*required.values(), *spans) if user not in columns]
    if missing:
        raise DataError(
            f"{source}: missing field(s) {', '.join(map(repr, missing))}; "
            f"the columns found are {', '.join(map(repr, columns))}. "
            "Pass text_field=/label_field=/target_field=/span_field= (or span_start_field= and "
            "span_end_field=) to name yours."
        )
    fields = dict(required)
    optional = {"target": target_field, "cue": "cue", "group": "group"}
    for column, user in optional.items():
        if column not in fields and user in columns:
            fields[column] = user
    return fields


def _normalise_row(row: dict[str, Any], fields: dict[str, str], spans: tuple[str, ...]) -> dict[str, Any]:
    """One raw row in the schema: renamed, labels and groups as strings, spans as start/end."""
    out = {column: row.get(user) for column, user in fields.items()}
    for column in ("text", "target", "label", "cue", "group"):
        out[column] = _as_optional_str(out.get(column))
    if len(spans) == 1:
        out["span_start"], out["span_end"] = _parse_span(row.get(spans[0]))
    elif spans:
        out["span_start"], out["span_end"] = _parse_offset(row.get(spans[0])), _parse_offset(row.get(spans[1]))
        if (out["span_start"] is None) != (out["span_end"] is None):
            raise ValueError(f"span start {row.get(spans[0])!r} and end {row.get(spans[1])!r}: give both or neither")
    return {column: out.get(column) for column in COLUMNS}


def _parse_offset(value: Any) -> int | None:
    """One character offset; empty (None, NaN from a CSV reader) is None, a whole float (CSV) is its int."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    raise ValueError(f"a span offset must be a whole number of characters, got {value!r}")


def _as_optional_str(value: Any) -> str | None:
    """Keep None (and NaN from CSV readers) as None; turn anything else (e.g. integer labels) into str."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return str(value)


def _parse_span(value: Any) -> tuple[int | None, int | None]:
    """A span cell -> (start, end), or (None, None) if empty; CSV stores it as text like "[3, 7]"."""
    if value is None or value == "":
        return None, None
    parsed = value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = None
    is_pair = isinstance(parsed, (list, tuple, np.ndarray)) and len(parsed) == 2
    if not is_pair or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in parsed):
        raise ValueError(f"span must be [start, end] character offsets, got {value!r}")
    return int(parsed[0]), int(parsed[1])


# ---------------------------------------------------------------- validation


def prepare(
    ds: datasets.Dataset,
    *,
    source: str,
    n_folds: int,
    on_error: Literal["raise", "skip"] = "raise",
    keep: Callable[[dict[str, Any]], bool] | None = None,
    needs_target: bool = True,
    numeric: bool = False,
) -> tuple[datasets.Dataset, list[Problem]]:
    """Compute target spans and validate every row (only rows ``keep`` accepts, numbered as loaded); returns the good rows and the problems skipped.
    ``needs_target=False`` (no position reads the target): a row may give neither target nor span.
    ``numeric``: the labels are numbers to regress on (a label that is not one is a bad row)."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    problems, labels = [], []
    if needs_target:
        _check_some_target(ds, source)
    # probe's columns with their types (a plugin's rows may lack some), then the source's own columns.
    extra = {name: feature for name, feature in ds.features.items() if name not in FEATURES}
    features = datasets.Features({**FEATURES, **extra})

    def good_rows():
        for number, row in enumerate(rows_of(ds), start=1):
            if keep is not None and not keep(row):
                continue
            row_problems = _row_problems(row, number, source, needs_target)
            if numeric and not row_problems:
                row_problems = _number_problems(row, number, source)
            if row_problems:
                problems.extend(row_problems)
                continue
            row = _with_span(row)
            labels.append(row["label"])
            yield {column: row.get(column) for column in features}

    table = table_of(good_rows(), features)
    label_problems = _value_problems(labels, n_folds, source) if numeric else _label_problems(labels, n_folds, source)
    if on_error == "raise" and (problems or label_problems):
        everything = problems + label_problems
        raise DataError(f"{source}: {len(everything)} problem(s) in the data:", everything)
    if label_problems:
        skipped = f"after skipping {len(problems)} bad row(s), " if problems else ""
        raise DataError(f"{source}: {skipped}the labels can't be cross-validated:", label_problems)
    return table, problems


def _check_some_target(ds: datasets.Dataset, source: str) -> None:
    """One message, not one per row, for rows that give no target at all (a sentence-level dataset)."""
    if not isinstance(ds, datasets.Dataset):  # a streamed dataset is read once, row by row: each row says it
        return
    given = [column for column in ("target", "span_start") if column in ds.column_names]
    if len(ds) and not any(value is not None for column in given for value in ds[column]):
        raise DataError(f"{source}: no row gives a target (a 'target' column or a span), and the position "
                        "'target' reads one; add them, or probe only sentence positions (first, last, mean, "
                        "{index: N})")


def _row_problems(row: dict[str, Any], number: int, source: str, needs_target: bool = True) -> list[Problem]:
    """Everything wrong with one row (an empty list if it is fine)."""
    problems = []

    def problem(field: str, message: str) -> None:
        problems.append(Problem(number, field, message, source))

    text = row.get("text")
    if not text or not text.strip():
        problem("text", f"text is empty ({text!r})")
    if not row.get("label"):
        problem("label", f"label is missing ({row.get('label')!r})")
    cue = row.get("cue")
    if cue is not None and cue not in CUES:
        problem("cue", f"cue {cue!r} is not one of {', '.join(CUES)} or null")
    untargeted = not row.get("target") and row.get("span_start") is None and row.get("span_end") is None
    if text and text.strip() and not (untargeted and not needs_target):
        span_message = _span_problem(text, row.get("target"), row.get("span_start"), row.get("span_end"))
        if span_message:
            problem("target", span_message)
    return problems


def _span_problem(text: str, target: str | None, start: int | None, end: int | None) -> str | None:
    """Why the target can't be located in the text, or None if it can."""
    if start is not None and end is not None:
        if not 0 <= start < end <= len(text):
            return f"span [{start}, {end}) is outside the text (length {len(text)}): {text!r}"
        if target is not None and text[start:end] != target:
            return f"span [{start}, {end}) covers {text[start:end]!r}, not the target {target!r}"
        return None
    if not target:
        return (f"target is empty ({target!r}) and no span was given; the position 'target' reads it (probe "
                "only sentence positions such as first, last or mean to accept rows without a target)")
    matches = whole_word_matches(text, target)
    if not matches:
        hint = " (it occurs with different case)" if whole_word_matches(text.lower(), target.lower()) else ""
        return f"target {target!r} is not a whole word in {text!r}{hint}"
    if len(matches) > 1:
        return (
            f"target {target!r} occurs {len(matches)} times in {text!r}; "
            "give a character span (span_field) to say which one"
        )
    return None


def whole_word_matches(text: str, target: str) -> list[tuple[int, int]]:
    """(start, end) of every occurrence of target in text that is not part of a longer word."""
    pattern = rf"(?<!\w){re.escape(target)}(?!\w)"
    return [match.span() for match in re.finditer(pattern, text)]


def _with_span(row: dict[str, Any]) -> dict[str, Any]:
    """The row with span_start/span_end and target filled in (the row is known to be valid); other
    columns as they were."""
    row = dict(row)
    if not row.get("target") and (row.get("span_start") is None or row.get("span_end") is None):
        return row  # a sentence-level row: no position reads a target
    if row.get("span_start") is None or row.get("span_end") is None:
        only_match = whole_word_matches(row["text"], row["target"])[0]
        row["span_start"], row["span_end"] = only_match
    row["target"] = row["text"][row["span_start"] : row["span_end"]]
    return row


def as_number(label) -> float | None:
    """A label as a finite float (labels are kept as text, which for a float is its exact shortest form);
    None when it is not one."""
    if label is None or isinstance(label, bool):
        return None
    try:
        number = float(label)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _number_problems(row: dict[str, Any], number: int, source: str) -> list[Problem]:
    """A regression row's label must be a finite number (kept as its text, which round-trips exactly)."""
    if as_number(row["label"]) is None:
        return [Problem(number, "label", f"label {row['label']!r} is not a number (a regression probe needs "
                                         "a number in every row)", source)]
    return []


def _value_problems(labels: list[str], n_folds: int, source: str) -> list[Problem]:
    """Numeric labels that can't be cross-validated: fewer rows than folds, or one value only."""
    problems = []
    if len(labels) < n_folds:
        problems.append(Problem(None, "label", f"{len(labels)} row(s), fewer than n_folds={n_folds}", source))
    if len({float(label) for label in labels}) < 2:
        found = repr(labels[0]) if labels else "none"
        problems.append(Problem(None, "label", f"need at least 2 different numbers to regress on, found {found}",
                                source))
    return problems


def _label_problems(labels: list[str], n_folds: int, source: str) -> list[Problem]:
    """Labels that can't be cross-validated: fewer than 2 classes, or a class with fewer rows than folds."""
    counts = Counter(labels)
    problems = []
    if len(counts) < 2:
        found = ", ".join(map(repr, counts)) or "none"
        problems.append(Problem(None, "label", f"need at least 2 labels to probe, found {found}", source))
    for label, count in sorted(counts.items()):
        if count < n_folds:
            problems.append(
                Problem(None, "label", f"label {label!r} has {count} row(s), fewer than n_folds={n_folds}", source)
            )
    return problems


# ---------------------------------------------------------------- token alignment


def target_token_indices(
    tokenizer, texts: Sequence[str], spans: Sequence[tuple[int, int]], *, add_special_tokens: bool = True
) -> list[list[int]]:
    """Token indices covering each character span, as positions in ``tokenizer(text)`` without padding.

    Right padding keeps these positions; with left padding add each row's pad count.
    """
    if len(texts) != len(spans):
        raise ValueError(f"got {len(texts)} texts but {len(spans)} spans")
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer; aligning words to tokens needs character "
            "offsets, which only fast tokenizers give. Load it with AutoTokenizer.from_pretrained(..., use_fast=True)."
        )
    encoding = tokenizer(list(texts), return_offsets_mapping=True, add_special_tokens=add_special_tokens)
    indices = []
    for number, (text, offsets, (start, end)) in enumerate(zip(texts, encoding["offset_mapping"], spans)):
        covered = span_token_indices(text, offsets, start, end)
        if not covered:
            raise ValueError(f"text {number}: no token covers characters [{start}, {end}) of {text!r}")
        indices.append(covered)
    return indices


def span_token_indices(text: str, offsets: Sequence[tuple[int, int]], start: int, end: int) -> list[int]:
    """Indices of the tokens whose offsets overlap [start, end) on a non-space character."""
    covered = []
    for index, (token_start, token_end) in enumerate(offsets):
        # Byte-level BPE offsets may include the leading space (" mole"); only a shared
        # non-space character counts. Special and padding tokens are (0, 0) and overlap nothing.
        overlap = text[max(start, token_start) : min(end, token_end)]
        if overlap.strip():
            covered.append(index)
    return covered


# ---------------------------------------------------------------- pooling


def pool(vectors, how: Literal["first", "last", "mean"]):
    """Pool over the subword axis (second to last): (..., n_subwords, d) -> (..., d); numpy or torch in, same out."""
    if vectors.shape[-2] == 0:
        raise ValueError("cannot pool zero subword vectors")
    if how == "first":
        return vectors[..., 0, :]
    if how == "last":
        return vectors[..., -1, :]
    if how == "mean":
        return vectors.mean(-2)
    raise ValueError(f"pool: how must be 'first', 'last' or 'mean', got {how!r}")


def last_token_index(attention_mask_row) -> int:
    """Position of the last real (non-padding) token in one attention-mask row; works for left or right padding."""
    positions = np.flatnonzero(np.asarray(attention_mask_row))
    if positions.size == 0:
        raise ValueError("attention mask row has no real tokens")
    return int(positions[-1])
