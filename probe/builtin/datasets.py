"""Built-in datasets: hand-written sense-labelled sentences, and user files or hub datasets."""

from __future__ import annotations

from pathlib import Path

from probe.hookspecs import hookimpl

DATA = Path(__file__).parent / "data"
BUILTIN = {
    "mole": "mole: animal / unit of amount / skin lesion / spy",
    "tower": "tower: building / computer case / control tower / stack",
    "tower-size": "tower: full-size landmark vs miniature (model, souvenir, toy)",
}


def builtin_loader(name: str):
    def load():
        from probe.pipeline.data import load_rows

        return load_rows(DATA / f"{name}.jsonl")

    load.__doc__ = BUILTIN[name]
    return load


def load_file(path: str, **fields):
    """A JSONL / CSV / Parquet file, or hf:owner/name, with optional text_field, label_field, … renames;
    ``split`` and ``revision`` for a hub dataset only."""
    from probe.pipeline.data import load_rows

    return load_rows(path, **fields)


def load_coarsewsd(path: str, words: list[str] | None = None):
    """A folder in CoarseWSD-20's format ({word}/train.data.txt, …); see probe/builtin/coarsewsd.py."""
    from probe.builtin.coarsewsd import load_coarsewsd as load

    return load(path, words)


def load_coarsewsd_nshot(path: str, words: list[str] | None = None, shots: list[int] | None = None,
                         draws: list[str] | None = None):
    """CoarseWSD-20's n-shot folder ({draw}/{word}_{shots}/…); see probe/builtin/coarsewsd_nshot.py."""
    from probe.builtin.coarsewsd_nshot import load_coarsewsd_nshot as load

    return load(path, words, shots, draws)


load_file.forwards_to = "probe.pipeline.data:load_rows"  # the options a config may give (probe.pipeline.checks reads these)
load_file.forwards_skip = ("source",)


@hookimpl
def register_datasets(register):
    for name in BUILTIN:
        register(name, builtin_loader(name))
    register("file", load_file)
    register("coarsewsd", load_coarsewsd)
    register("coarsewsd-nshot", load_coarsewsd_nshot)
