"""Write a synthetic folder in CoarseWSD-20's exact on-disk format, at the benchmark's scale, for timing and
for checking probe against a plain script where the real data is absent. The text is made up: every
number measured on it is about speed and agreement, never about what a model knows.

    python benchmarks/coarsewsd_synthetic.py OUT_FOLDER [--fraction 0.1] [--seed 0]

The format (as the authors' release, github.com/danlou/bert-disambiguation, data/CoarseWSD-20): one folder
per word with classes_map.txt (a JSON object, class id → sense name), train.data.txt and test.data.txt
(``<token index><TAB><tokenized sentence>`` a line) and train.gold.txt / test.gold.txt (a class id a line,
the last line without a newline). The scale: CoarseWSD-20's twenty words with 2 to 5 senses each, about
24,000 training and 10,000 test sentences in all (``--fraction`` writes that share of every word's
rows), the most frequent sense dominant, sentences of a Wikipedia-like length (lognormal, median 24 tokens,
6 to 120). The sense shows in a cue word a few tokens from the target, before or after it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# The benchmark's words and their number of senses.
SENSES = {"apple": 2, "arm": 2, "bank": 2, "bass": 5, "bow": 3, "chair": 2, "club": 2, "crane": 2, "deck": 2,
          "digit": 2, "hood": 3, "java": 2, "mole": 5, "pitcher": 2, "pound": 2, "seal": 4, "spring": 3,
          "square": 4, "trunk": 3, "yard": 2}
TRAIN_ROWS, TEST_ROWS = 24_000, 10_000
FILLER = ("the of and in to a was is for on as with by that at from his it an were are which this be "
          "also has had first one their its new after who they two her she been other when there all "
          "during into school time may years more most only over city some world would where later up "
          "such used many can state about national out known university united then made").split()


def write_folder(out: Path, fraction: float = 1.0, seed: int = 0, words: list[str] | None = None,
                 longest: int = 120) -> dict[str, tuple[int, int]]:
    """Write every word's folder (or those of ``words``) under ``out``; (train rows, test rows) per word. A
    word's rows are the same whichever other words are written; sentences have at most ``longest`` tokens."""
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(len(SENSES), 3.0))  # words differ in size, as the real ones do
    sizes = {}
    for number, (word, share) in enumerate(zip(SENSES, shares)):
        if words is not None and word not in words:
            continue
        n_train = max(SENSES[word] * 2, round(TRAIN_ROWS * share * fraction))
        n_test = max(SENSES[word], round(TEST_ROWS * share * fraction))
        write_word(out / word, word, SENSES[word], n_train, n_test, np.random.default_rng([seed, number]), longest)
        sizes[word] = (n_train, n_test)
    return sizes


def write_word(folder: Path, word: str, n_senses: int, n_train: int, n_test: int, rng, longest: int = 120) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    senses = [f"{word}_sense{k}" for k in range(n_senses)]
    (folder / "classes_map.txt").write_text(json.dumps({str(k): sense for k, sense in enumerate(senses)}))
    frequencies = np.sort(rng.dirichlet(np.full(n_senses, 1.0)) + 0.15)[::-1]  # sense 0 the most frequent
    frequencies /= frequencies.sum()
    cues = {k: [f"{word[:3]}cue{k}{variant}" for variant in "abcd"] for k in range(n_senses)}
    for part, n in (("train", n_train), ("test", n_test)):
        classes = rng.choice(n_senses, size=n, p=frequencies)
        classes[:n_senses] = np.arange(n_senses)  # every sense in every part
        lines = [sentence(word, cues[k], rng, longest) for k in classes]
        (folder / f"{part}.data.txt").write_text("\n".join(lines) + "\n")
        (folder / f"{part}.gold.txt").write_text("\n".join(str(k) for k in classes))


def sentence(word: str, cues: list[str], rng, longest: int = 120) -> str:
    """``<index>\\t<tokens>``: filler tokens, the word at a random place, a cue within three tokens of it."""
    length = int(np.clip(rng.lognormal(np.log(24), 0.5), 6, longest))
    tokens = list(rng.choice(FILLER, size=length))
    target = int(rng.integers(0, length))
    tokens[target] = word
    offset = int(rng.choice([-3, -2, -1, 1, 2, 3]))
    cue = min(max(target + offset, 0), length - 1)
    if cue == target:
        cue = target + 1 if target + 1 < length else target - 1
    tokens[cue] = str(rng.choice(cues))
    return f"{target}\t{' '.join(tokens)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the benchmark's rows (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = write_folder(args.out, args.fraction, args.seed)
    train, test = sum(n for n, _ in sizes.values()), sum(n for _, n in sizes.values())
    print(f"wrote {len(sizes)} words, {train} training and {test} test sentences to {args.out}")


if __name__ == "__main__":
    main()
