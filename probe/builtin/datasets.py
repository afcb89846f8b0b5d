"""Built-in datasets: hand-written sense-labelled sentences, a sentence-level set (tense), and user files or hub datasets."""

from __future__ import annotations

from pathlib import Path

from probe.hookspecs import hookimpl

DATA = Path(__file__).parent / "data"
BUILTIN = {
    "mole": "mole: animal / unit of amount / skin lesion / spy",
    "tower": "tower: building / computer case / control tower / stack",
    "tower-size": "tower: full-size landmark vs miniature (model, souvenir, toy)",
    "tense": "sentences in the present / past: 50 minimal pairs, one group each, no target word",
    "tower-height": "tower: log10 of the height in metres of what the word refers to (numeric labels)",
}


def builtin_loader(name: str):
    def load():
        from probe.pipeline.data import load_rows

        return load_rows(DATA / f"{name}.jsonl")

    load.__doc__ = BUILTIN[name]
    return load


TAGGED = {"pos": "part of speech (UPOS) of every word of 71 sentences, 26 with mole in its four senses"}


def builtin_tagged_loader(name: str):
    def load(column: str = "upos"):
        from probe.pipeline.words import load_tagged

        return load_tagged(str(DATA / f"{name}.conllu"), column=column)

    load.__doc__ = TAGGED[name]
    return load


def load_tagged_file(path: str, column: str = "upos", tokens_field: str = "tokens", tags_field: str = "tags"):
    """A token task: a .conllu file (tags from ``column``: upos, xpos or deprel) or a .jsonl file of
    ``tokens`` and ``tags`` lists (``tokens_field`` / ``tags_field`` rename them); one row per word."""
    from probe.pipeline.words import load_tagged

    return load_tagged(path, column=column, tokens_field=tokens_field, tags_field=tags_field)


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
    for name in TAGGED:
        register(name, builtin_tagged_loader(name))
    register("file", load_file)
    register("tagged", load_tagged_file)
    register("coarsewsd", load_coarsewsd)
    register("coarsewsd-nshot", load_coarsewsd_nshot)
