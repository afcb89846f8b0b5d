"""Dataset source: a folder of JSONL files, one file per ambiguous word (``mole.jsonl``, ``bank.jsonl``, …).

    dataset: {name: jsonl-folder, path: data/words, words: [mole, bank]}

Rows follow probe's schema (text, label, and target or a span); a file's rows take the file's stem as
their word, and labels are prefixed with it (``mole:animal``) so that senses of different words never
merge. ``words`` picks files by stem; without it every ``*.jsonl`` in the folder is read.
"""

from pathlib import Path

from probe import hookimpl


def load_jsonl_folder(path: str, words: list[str] | None = None, prefix_labels: bool = True, **fields):
    import datasets  # imported when used: `probe --help` loads every plugin

    from probe.pipeline.data import DataError, load_rows

    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"jsonl-folder: {folder} is not a folder")
    files = sorted(folder.glob("*.jsonl"))
    if words is not None:
        missing = sorted(set(words) - {f.stem for f in files})
        if missing:
            raise DataError(f"jsonl-folder: no file for word(s) {', '.join(missing)} in {folder}")
        files = [f for f in files if f.stem in words]
    if not files:
        raise DataError(f"jsonl-folder: {folder} holds no .jsonl files")
    parts = []
    for file in files:
        rows = load_rows(file, **fields)
        if prefix_labels:
            rows = rows.map(lambda row, word=file.stem: {"label": f"{word}:{row['label']}"})
        parts.append(rows)
    return datasets.concatenate_datasets(parts)


@hookimpl
def register_datasets(register):
    register("jsonl-folder", load_jsonl_folder)
