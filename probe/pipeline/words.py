"""Token tasks: sentences whose every word carries a tag (a part of speech, a dependency relation), read from
a CoNLL-U file or JSONL rows of ``tokens`` and ``tags``, and turned into one probe row per word.

A word's row is an ordinary row of the schema (probe/pipeline/data.py): ``text`` the sentence, ``target`` the
word with its character span, ``label`` its tag and ``group`` its sentence, so that cross-validation never
puts one sentence on both sides of a split and intervals draw a sentence's words together; the columns
``word_index`` (1-based, in its sentence) and ``line`` (in its file) say where it came from. The words of a
sentence share its text, so extraction runs one forward per sentence (probe/pipeline/extract.py).

The text is the file's own (CoNLL-U ``# text = …``, a JSONL row's ``text``) when every word is found in it,
in order; otherwise the words joined by single spaces.

CoNLL-U is read by the short parser below rather than the ``conllu`` package: the checks probe needs
(a line with other than 10 columns, an empty form, a missing tag, each named with its file and line) would
have to be made on the raw lines anyway, and what is left — blank lines end a sentence, ``#`` lines are
comments, multiword ranges (``1-2``) and empty nodes (``1.1``) are not words — is a few lines.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from probe.pipeline.data import FEATURES, DataError, Problem, span_token_indices
from probe.pipeline.datafiles import check_data_file, utf8

CONLLU_COLUMNS = ("ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC")
TAG_COLUMNS = ("upos", "xpos", "deprel")  # the CoNLL-U columns a tag can be read from
WORD_COLUMN = "word_index"  # present in a token task's rows only
MISSING = "_"  # CoNLL-U's empty value


@dataclass(frozen=True)
class TaggedSentence:
    """One sentence as its file gives it: an id, its words and their tags, its own text (or None), and the
    line each word is on (a JSONL row's words all on the row's line)."""

    sentence_id: str
    words: tuple[str, ...]
    tags: tuple[str, ...]
    text: str | None
    lines: tuple[int, ...]


def load_tagged(path: str, column: str = "upos", tokens_field: str = "tokens", tags_field: str = "tags"):
    """A token task's rows, one per word, from a ``.conllu`` file (tags from ``column``: upos, xpos or
    deprel) or a ``.jsonl`` file (``tokens_field``: the words, ``tags_field``: one tag per word)."""
    source = Path(path)
    if source.suffix.lower() == ".conllu":
        if column not in TAG_COLUMNS:
            raise DataError(f"{path}: option column={column!r} is not a CoNLL-U tag column; use one of "
                            f"{', '.join(TAG_COLUMNS)}")
        return one_row_per_word(read_conllu(source, column))
    if source.suffix.lower() == ".jsonl":
        return one_row_per_word(read_tagged_jsonl(source, tokens_field, tags_field))
    suffix = source.suffix or "a file without suffix"
    raise DataError(f"{path}: a tagged dataset is a .conllu or .jsonl file, not {suffix!r}")


# ---------------------------------------------------------------- CoNLL-U


def read_conllu(path: Path, column: str = "upos") -> list[TaggedSentence]:
    """Every sentence of a CoNLL-U file with the tags of ``column``; every problem found is listed at once."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (looked for {path.absolute()})")
    text = utf8(path.read_bytes(), path, DataError).removeprefix("\ufeff")
    tag_slot = CONLLU_COLUMNS.index(column.upper())
    sentences, problems = [], []
    block: list[tuple[int, str]] = []
    for number, line in enumerate([*text.splitlines(), ""], start=1):  # a final blank line ends the last one
        if line.strip():
            block.append((number, line))
        elif block:
            sentence = _conllu_sentence(block, tag_slot, len(sentences) + 1, f"{path}", problems)
            if sentence is not None:
                sentences.append(sentence)
            block = []
    problems += _repeated_ids(sentences, str(path))
    if problems:
        raise DataError(f"{path}: {len(problems)} problem(s) in the CoNLL-U file:", problems)
    if not sentences:
        raise DataError(f"{path}: no sentences; a CoNLL-U file has a line per word (10 tab-separated columns) "
                        "and a blank line after each sentence")
    return sentences


def _conllu_sentence(block, tag_slot: int, number: int, path: str, problems: list) -> TaggedSentence | None:
    """One blank-line-separated block as a sentence (None when it has no words), noting its problems."""
    comments = dict(_comment(line) for _, line in block if line.startswith("#"))
    words, tags, lines = [], [], []
    for line_number, line in block:
        if line.startswith("#"):
            continue
        where = f"{path}, line {line_number}"
        cells = line.split("\t")
        if len(cells) != len(CONLLU_COLUMNS):
            problems.append(Problem(None, "columns", f"{len(cells)} tab-separated column(s), a word line has "
                                    f"{len(CONLLU_COLUMNS)}: {' '.join(CONLLU_COLUMNS)}", where))
            continue
        if "-" in cells[0] or "." in cells[0]:  # a multiword token's range, or an empty node: not a word
            continue
        form, tag = cells[1], cells[tag_slot]
        if not form.strip():
            problems.append(Problem(None, "FORM", "the word is empty", where))
        elif tag in ("", MISSING):
            problems.append(Problem(None, CONLLU_COLUMNS[tag_slot], f"word {form!r} has no tag ({tag!r}); "
                                    "choose a column this file fills with the dataset's column option", where))
        words.append(form)
        tags.append(tag)
        lines.append(line_number)
    if not words:
        return None
    sentence_id = comments.get("sent_id") or f"sentence-{number}"
    return TaggedSentence(sentence_id, tuple(words), tuple(tags), comments.get("text"), tuple(lines))


def _comment(line: str) -> tuple[str, str]:
    """A ``# key = value`` comment as (key, value); any other comment as ("", text)."""
    key, equals, value = line.lstrip("#").partition("=")
    return (key.strip(), value.strip()) if equals else ("", line)


def _repeated_ids(sentences: list[TaggedSentence], source: str) -> list[Problem]:
    """A sentence id given twice would make two sentences one group: each repeat is a problem."""
    first: dict[str, int] = {}
    problems = []
    for sentence in sentences:
        seen = first.setdefault(sentence.sentence_id, sentence.lines[0])
        if seen != sentence.lines[0]:
            problems.append(Problem(None, "sent_id", f"sentence id {sentence.sentence_id!r} was already used by "
                                    f"the sentence on line {seen}", f"{source}, line {sentence.lines[0]}"))
    return problems


# ---------------------------------------------------------------- JSONL


def read_tagged_jsonl(path: Path, tokens_field: str = "tokens", tags_field: str = "tags") -> list[TaggedSentence]:
    """Every row of a JSONL file of ``{tokens: [...], tags: [...]}`` (and optionally ``id``, ``text``)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file (looked for {path.absolute()})")
    check_data_file(path, DataError)  # not UTF-8, not JSON, not an object, too big: named with its line
    sentences, problems = [], []
    lines = path.read_text(encoding="utf-8").removeprefix("\ufeff").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        where = f"{path}, line {number}"
        found = _row_problems(row, tokens_field, tags_field, where)
        if found:
            problems += found
            continue
        named = row.get("id", row.get("sent_id"))
        sentence_id = f"line-{number}" if named is None or str(named).strip() == "" else str(named)
        text = row.get("text") if isinstance(row.get("text"), str) else None
        words = tuple(row[tokens_field])
        sentences.append(TaggedSentence(sentence_id, words, tuple(map(str, row[tags_field])), text,
                                        (number,) * len(words)))
    problems += _repeated_ids(sentences, str(path))
    if problems:
        raise DataError(f"{path}: {len(problems)} problem(s) in the tagged rows:", problems)
    return sentences


def _row_problems(row: dict, tokens_field: str, tags_field: str, where: str) -> list[Problem]:
    """What is wrong with one JSONL row of words and tags (an empty list when nothing is)."""
    words, tags = row.get(tokens_field), row.get(tags_field)
    problems = []
    for field, value in ((tokens_field, words), (tags_field, tags)):
        if not isinstance(value, list) or not value:
            problems.append(Problem(None, field, f"must be a non-empty list, got {value!r}; name yours with the "
                                    "dataset's tokens_field / tags_field options", where))
    if problems:
        return problems
    for number, word in enumerate(words, start=1):
        if not isinstance(word, str) or not word.strip():
            problems.append(Problem(None, tokens_field, f"word {number} is empty or not text ({word!r})", where))
    for number, tag in enumerate(tags, start=1):
        if not isinstance(tag, (str, int)) or isinstance(tag, bool) or str(tag).strip() == "":
            problems.append(Problem(None, tags_field, f"tag {number} is empty or not text ({tag!r})", where))
    if len(words) != len(tags):
        problems.append(Problem(None, tags_field, f"{len(tags)} tag(s) for {len(words)} word(s); give one tag "
                                "per word", where))
    return problems


# ---------------------------------------------------------------- rows


def one_row_per_word(sentences: list[TaggedSentence]):
    """One row per word of ``sentences``, in order (see the module's docstring for the columns)."""
    import datasets

    rows = []
    for sentence in sentences:
        text, spans = sentence_text(sentence.words, sentence.text)
        for index, (word, tag, (start, end), line) in enumerate(
                zip(sentence.words, sentence.tags, spans, sentence.lines), start=1):
            rows.append({"text": text, "target": word, "label": tag, "cue": None, "group": sentence.sentence_id,
                         "span_start": start, "span_end": end, WORD_COLUMN: index, "line": line})
    features = datasets.Features({**FEATURES, WORD_COLUMN: datasets.Value("int64"), "line": datasets.Value("int64")})
    return datasets.Dataset.from_list(rows, features=features)


def sentence_text(words, text: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The sentence's text and each word's character span: ``text`` when the words are found in it in order,
    else the words joined by spaces."""
    if text is not None:
        spans, position = [], 0
        for word in words:
            start = text.find(word, position)
            if start < 0:
                break
            spans.append((start, start + len(word)))
            position = start + len(word)
        else:
            return text, spans
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), spans


def is_token_task(table) -> bool:
    """Whether the rows are a token task's, one per word (made by ``one_row_per_word``)."""
    return WORD_COLUMN in table.column_names


def words_without_tokens(tokenizer, table) -> list[int]:
    """The rows whose word the tokenizer gives no token of its own (a character it drops, say); each
    distinct text is tokenized once."""
    texts = list(dict.fromkeys(table["text"]))
    offsets = dict(zip(texts, tokenizer(texts, return_offsets_mapping=True)["offset_mapping"]))
    columns = table.select_columns(["text", "span_start", "span_end"])
    return [i for i, row in enumerate(columns)
            if not span_token_indices(row["text"], offsets[row["text"]], row["span_start"], row["span_end"])]


def drop_words_without_tokens(table, numbers: list[int], tokenizer, on_bad_rows: str, source: str):
    """(rows, their numbers, problems) without the words ``words_without_tokens`` finds: an error naming each
    with its file and line, or under ``on_bad_rows: skip`` their rows left out."""
    bad = words_without_tokens(tokenizer, table)
    if not bad:
        return table, numbers, []
    problems = [Problem(None, "tokens", f"word {row[WORD_COLUMN]} ({row['target']!r}) of sentence {row['group']!r} "
                        "maps to no token of the model's tokenizer", f"{source}, line {row['line']}")
                for row in table.select(bad)]
    if on_bad_rows == "raise":
        raise DataError(f"{source}: {len(problems)} word(s) the tokenizer can't place (on_bad_rows: skip "
                        "leaves them out):", problems)
    keep = sorted(set(range(len(table))) - set(bad))
    return table.select(keep), [numbers[i] for i in keep], problems
