"""Data files checked before ``datasets`` reads them, so that an empty, header-only, non-UTF-8 or malformed
file is an error naming the file and line (``datasets`` would fail deep inside pyarrow), and the hub's
errors say what to do offline."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from probe.errors import first_line

# Which datasets builder reads which file suffix (here, not in probe.pipeline.data: a sweep lists data files without
# importing datasets).
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_FORMATS = (".jsonl", ".json", ".csv")
# How big one field and one row of a data file may be (UTF-8 bytes; a list or mapping cell as JSON): a
# sentence is a few hundred bytes, and a runaway cell would otherwise be read, hashed and tokenized whole.
# A dataset's max_field_bytes / max_row_bytes options change them.
MAX_FIELD_BYTES = 1 << 20
MAX_ROW_BYTES = 4 << 20


@dataclass(frozen=True)
class SizeLimits:
    field: int = MAX_FIELD_BYTES
    row: int = MAX_ROW_BYTES

    def check(self, source: str, error_class) -> SizeLimits:
        """Itself, when both limits are whole numbers of bytes ≥ 1; else an ``error_class`` naming the option."""
        for name, value in (("max_field_bytes", self.field), ("max_row_bytes", self.row)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise error_class(f"{source}: dataset option {name} must be a number of bytes ≥ 1, got {value!r}")
        return self


def size_of(value) -> int:
    """A cell's size in bytes: UTF-8 for text, JSON for a list or mapping, 0 for numbers and nulls."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, (list, tuple, dict)):
        return len(json.dumps(value, default=str).encode())
    return 0


def check_row_size(row: dict, where: str, limits: SizeLimits, error_class) -> None:
    """Refuse a row (``where``: the file and its line or row) with a field or a total over ``limits``,
    naming the field."""
    total = 0
    for field, value in row.items():
        size = size_of(value)
        if size > limits.field:
            raise error_class(f"{where}, field {field!r}: {size:,} bytes, more than the {limits.field:,} a field "
                              "may hold; shorten it, or raise the dataset's max_field_bytes option")
        total += size
    if total > limits.row:
        raise error_class(f"{where}: the row's fields hold {total:,} bytes, more than the {limits.row:,} a row "
                          "may hold; shorten it, or raise the dataset's max_row_bytes option")


def utf8(data: bytes, path, error_class, advice: str = "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") -> str:
    """``data`` (the bytes of ``path``) as text; a byte that is not UTF-8 is an ``error_class`` naming the
    file and its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise error_class(f"{path}, line {line}: byte {data[error.start]:#x} is not UTF-8; {advice}") from None


def check_data_file(path: Path, error_class, limits: SizeLimits = SizeLimits()) -> None:
    """Raise ``error_class`` (DataError) naming ``path`` and the line at fault, if the file can't be rows
    (or holds a field or row larger than ``limits``). A JSON-lines file is read a line at a time, so that
    checking it needs no more memory than its longest line."""
    suffix = path.suffix.lower()
    if suffix == ".jsonl" or (suffix == ".json" and not _is_json_array(path)):
        _check_json_lines(path, error_class, limits)
        return
    data = path.read_bytes()
    if not data.strip():
        raise error_class(f"{path}: the file is empty; it needs a row per example (text, target, label)")
    if suffix not in TEXT_FORMATS:
        return
    text = utf8(data, path, error_class).removeprefix("\ufeff")
    if suffix == ".json":
        _check_json_array(path, text, error_class, limits)
    else:
        _check_csv(path, text, error_class, limits)


def _is_json_array(path: Path) -> bool:
    """Whether the file's first character (after a byte-order mark and white space) opens a JSON array."""
    with open(path, "rb") as handle:
        while block := handle.read(1 << 16):
            start = block.removeprefix(b"\xef\xbb\xbf").lstrip()
            if start:
                return start.startswith(b"[")
    return False


def json_lines(path: Path, error_class):
    """Each line of ``path`` (line number, text), read one at a time; a line that is not UTF-8 is an
    ``error_class`` naming it."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise error_class(f"{path}, line {number}: byte {raw[error.start]:#x} is not UTF-8; save the file "
                                  "as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
            line = line.rstrip("\r\n")
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def _check_json_lines(path: Path, error_class, limits: SizeLimits) -> None:
    rows = 0
    for number, line in json_lines(path, error_class):
        if not line.strip():
            continue
        rows += 1
        if len(line) > limits.row:  # characters: never more than the bytes; not worth parsing
            raise error_class(f"{path}, line {number}: {len(line):,} characters, more than the {limits.row:,} "
                              "bytes a row may hold; shorten it, or raise the dataset's max_row_bytes option")
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise error_class(f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                              "each line must be one JSON object") from None
        if not isinstance(value, dict):
            raise error_class(f"{path}, line {number}: a JSON {type(value).__name__}, not an object like "
                              '{"text": ..., "target": ..., "label": ...}')
        check_row_size(value, f"{path}, line {number}", limits, error_class)
    if rows == 0:
        raise error_class(f"{path}: the file is empty; it needs a row per example (text, target, label)")


def _check_json_array(path: Path, text: str, error_class, limits: SizeLimits) -> None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise error_class(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not value:
        raise error_class(f"{path}: the JSON array has no rows")
    bad = next((i for i, row in enumerate(value, start=1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise error_class(f"{path}, row {bad}: not a JSON object like {{\"text\": ..., \"label\": ...}}")
    for number, row in enumerate(value, start=1):
        check_row_size(row, f"{path}, row {number}", limits, error_class)


def _check_csv(path: Path, text: str, error_class, limits: SizeLimits) -> None:
    # csv's own cap on a cell (128 KiB by default) is process-wide: raised to ours while this file is read.
    before = csv.field_size_limit(max(limits.field, limits.row) + 1)
    try:
        _check_csv_rows(path, text, error_class, limits)
    except csv.Error as error:
        raise error_class(f"{path}: not valid CSV ({error})") from None
    finally:
        csv.field_size_limit(before)


def _check_csv_rows(path: Path, text: str, error_class, limits: SizeLimits) -> None:
    reader = csv.reader(io.StringIO(text))
    header, n_rows = None, 0
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if header is None:
            header = row
            continue
        n_rows += 1
        if len(row) != len(header):
            raise error_class(f"{path}, line {reader.line_num}: {len(row)} cells, but the header has "
                              f"{len(header)}; quote cells that contain commas")
        check_row_size(dict(zip(header, row)), f"{path}, line {reader.line_num}", limits, error_class)
    if n_rows == 0:
        raise error_class(f"{path}: only a header line ({', '.join(header or [])}) and no data rows")


def hub_error(source: str, error: Exception, error_class):
    """A hub dataset that can't be loaded: why, and how to use it offline."""
    reason = first_line(error)
    return error_class(
        f"{source}: can't load this hub dataset ({type(error).__name__}: {reason}). Without a network, "
        "download it elsewhere (datasets.load_dataset(...).to_json('rows.jsonl')) and give its file as "
        "dataset: {name: file, path: rows.jsonl}"
    )
