"""Data files checked before ``datasets`` reads them, so that an empty, header-only, non-UTF-8 or malformed
file is an error naming the file and line (``datasets`` would fail deep inside pyarrow), and the hub's
errors say what to do offline."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from probe.errors import first_line

# Which datasets builder reads which file suffix (here, not in probe.pipeline.data: a sweep lists data files without
# importing datasets).
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
TEXT_FORMATS = (".jsonl", ".json", ".csv")


def utf8(data: bytes, path, error_class, advice: str = "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") -> str:
    """``data`` (the bytes of ``path``) as text; a byte that is not UTF-8 is an ``error_class`` naming the
    file and its line."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise error_class(f"{path}, line {line}: byte {data[error.start]:#x} is not UTF-8; {advice}") from None


def check_data_file(path: Path, error_class) -> None:
    """Raise ``error_class`` (DataError) naming ``path`` and the line at fault, if the file can't be rows."""
    data = path.read_bytes()
    if not data.strip():
        raise error_class(f"{path}: the file is empty; it needs a row per example (text, target, label)")
    if path.suffix.lower() not in TEXT_FORMATS:
        return
    text = utf8(data, path, error_class).removeprefix("\ufeff")
    if path.suffix.lower() == ".jsonl" or (path.suffix.lower() == ".json" and not text.lstrip().startswith("[")):
        _check_json_lines(path, text, error_class)
    elif path.suffix.lower() == ".json":
        _check_json_array(path, text, error_class)
    else:
        _check_csv(path, text, error_class)


def _check_json_lines(path: Path, text: str, error_class) -> None:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise error_class(f"{path}, line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                              "each line must be one JSON object") from None
        if not isinstance(value, dict):
            raise error_class(f"{path}, line {number}: a JSON {type(value).__name__}, not an object like "
                              '{"text": ..., "target": ..., "label": ...}')


def _check_json_array(path: Path, text: str, error_class) -> None:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise error_class(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not value:
        raise error_class(f"{path}: the JSON array has no rows")
    bad = next((i for i, row in enumerate(value, start=1) if not isinstance(row, dict)), None)
    if bad is not None:
        raise error_class(f"{path}, row {bad}: not a JSON object like {{\"text\": ..., \"label\": ...}}")


def _check_csv(path: Path, text: str, error_class) -> None:
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
