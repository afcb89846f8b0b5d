"""Sense-labelled rows at any scale, in probe's ordinary JSONL format, for the memory and scale benchmarks.

    python benchmarks/synthetic.py --rows 100000 --out /tmp/synthetic-100k.jsonl [--seed 0]

Each row is one sentence of 20 to 40 words holding one of a few ambiguous words once, with its sense as
the label ("bank/river"), a cue ("left" or "right": the side of the sense's context words) and the word.
No group: every sentence is drawn afresh. The sentences are made from a
fixed vocabulary by a seeded generator: the same seed and row count give the same file, byte for byte.
Rows are written as they are made, so memory stays flat however many are asked for.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from pathlib import Path

# word → sense → context words that point to that sense.
SENSES = {
    "bank": {
        "river": ["river", "water", "fishing", "muddy", "reeds", "stream", "boat", "shore", "flood", "willow"],
        "money": ["loan", "account", "teller", "deposit", "interest", "cash", "mortgage", "branch", "savings", "vault"],
    },
    "crane": {
        "bird": ["feathers", "wings", "marsh", "nest", "flock", "migrating", "beak", "wetland", "chick", "egret"],
        "machine": ["construction", "lifted", "steel", "operator", "site", "beams", "tower", "cargo", "hook", "load"],
    },
}
FILLER = ("the a one old new small large quiet busy near far early late morning evening we they she he "
          "saw found watched noticed remembered described that this there then again today yesterday "
          "across along beside behind under over with without while before after people visitors "
          "children workers someone everyone always never often slowly quickly finally really").split()


def sentence(rng: random.Random, word: str, sense: str) -> tuple[str, str]:
    """One sentence of 20–40 words with ``word`` once and its sense's context on one side; and that side."""
    length = rng.randint(20, 40)
    cue = rng.choice(("left", "right"))
    at = rng.randint(3, length - 4) if cue == "right" else rng.randint(length // 2, length - 2)
    words = [rng.choice(FILLER) for _ in range(length)]
    context = SENSES[word][sense]
    side = range(0, at) if cue == "left" else range(at + 1, length)
    for slot in rng.sample(list(side), k=min(3, len(side))):
        words[slot] = rng.choice(context)
    words[at] = word
    return " ".join(words).capitalize() + ".", cue


def rows(n_rows: int, seed: int) -> Iterator[dict]:
    """``n_rows`` rows, the labels in turn (balanced), made by a generator seeded with ``seed``."""
    rng = random.Random(seed)
    labels = [(word, sense) for word, senses in SENSES.items() for sense in senses]
    for number in range(n_rows):
        word, sense = labels[number % len(labels)]
        text, cue = sentence(rng, word, sense)
        yield {"text": text, "target": word, "label": f"{word}/{sense}", "cue": cue, "word": word}


def write(path: Path, n_rows: int, seed: int = 0) -> Path:
    """Write ``n_rows`` rows to ``path`` (JSONL), one at a time."""
    with Path(path).open("w", encoding="utf-8") as out:
        for row in rows(n_rows, seed):
            out.write(json.dumps(row) + "\n")
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write(args.out, args.rows, args.seed))


if __name__ == "__main__":
    main()
