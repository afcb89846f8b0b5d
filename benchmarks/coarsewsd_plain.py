"""The plain transformers + scikit-learn script a careful user would write for probe's CoarseWSD-20 study,
to check probe's numbers against and to time it against (benchmarks/coarsewsd.py):

    python benchmarks/coarsewsd_plain.py FOLDER --model minilm-l6 [--out study.csv] [--C 0.1] [--seed 0]

For each word folder: read the benchmark's own train/test split; run the model one sentence at a time with
output_hidden_states; the vector of each layer at the target word (the mean over its subword tokens); then,
as probe's study does, choose the layer on 3 stratified inner folds of the training rows (the highest mean
inner accuracy, the lowest layer on a tie), fit standardised L2 logistic regression (newton-cg, C) on every
training row and score the test rows at that layer; and the sense-centroid 1-NN baseline at the same layer
(cosine to the mean of each sense's raw training vectors). Prints one line per word and the macro average;
``--out`` writes them as CSV (word, layer, accuracy, centroid_accuracy, test_rows, and each layer's test
accuracy).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from transformers import AutoModel, AutoTokenizer

from plain_script import model_folder  # the offline checkpoints' folders, as the other plain script finds them


def read_part(folder: Path, part: str, senses: dict) -> tuple[list[tuple[str, int, int]], list[str]]:
    """(sentence, target start, target end) and the sense of each line of ``part``."""
    instances = []
    for line in (folder / f"{part}.data.txt").read_text().splitlines():
        index, text = line.split("\t")
        words = [(w.start(), w.end()) for w in re.finditer(r"\S+", text)]
        instances.append((text, *words[int(index)]))
    gold = [senses[g.strip()] for g in (folder / f"{part}.gold.txt").read_text().splitlines()]
    return instances, gold


def vectors(model, tokenizer, instances, device: str) -> np.ndarray:
    """(sentences, layers, width): each layer's mean over the target word's tokens, one sentence at a time."""
    out = []
    for text, start, end in instances:
        encoded = tokenizer(text, return_tensors="pt", return_offsets_mapping=True)
        offsets = encoded.pop("offset_mapping")[0].tolist()
        target = [i for i, (s, e) in enumerate(offsets) if text[max(s, start):min(e, end)].strip()]
        with torch.no_grad():
            hidden = model(**encoded.to(device), output_hidden_states=True).hidden_states
        out.append(torch.stack([h[0, target].mean(0) for h in hidden]).float().cpu().numpy())
    return np.stack(out)


def logistic(C: float, seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, solver="newton-cg", max_iter=2000,
                                                              random_state=seed))


def centroid_accuracy(X_train, y_train, X_test, y_test) -> float:
    senses = np.unique(y_train)
    centroids = np.stack([X_train[y_train == s].mean(axis=0) for s in senses]).astype(np.float64)
    X_test = X_test.astype(np.float64)
    lengths = np.linalg.norm(X_test, axis=1, keepdims=True) * np.linalg.norm(centroids, axis=1)
    cosine = (X_test @ centroids.T) / np.where(lengths == 0, 1.0, lengths)
    return float(np.mean(senses[cosine.argmax(axis=1)] == y_test))


def study_word(X_train, y_train, X_test, y_test, C: float, seed: int) -> dict:
    inner = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    layers = range(X_train.shape[1])
    with threadpool_limits(limits=1):
        inner_accuracy = [cross_val_score(logistic(C, seed), X_train[:, layer], y_train, cv=inner).mean()
                          for layer in layers]
        tested = [logistic(C, seed).fit(X_train[:, layer], y_train).score(X_test[:, layer], y_test)
                  for layer in layers]
    best = max(layers, key=lambda layer: (inner_accuracy[layer], -layer))
    return {"layer": best, "accuracy": tested[best], "test_rows": len(y_test),
            "centroid_accuracy": centroid_accuracy(X_train[:, best], y_train, X_test[:, best], y_test),
            **{f"layer{layer}": accuracy for layer, accuracy in zip(layers, tested)}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", default="minilm-l6")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--C", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder, extra = model_folder(args.model)
    tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
    model = AutoModel.from_pretrained(folder, **extra).to(args.device).eval()
    rows = []
    for word in sorted(f.name for f in args.folder.iterdir() if (f / "classes_map.txt").is_file()):
        senses = json.loads((args.folder / word / "classes_map.txt").read_text())
        (train, y_train), (test, y_test) = (read_part(args.folder / word, part, senses) for part in ("train", "test"))
        X_train, X_test = vectors(model, tokenizer, train, args.device), vectors(model, tokenizer, test, args.device)
        row = {"word": word, **study_word(X_train, np.array(y_train), X_test, np.array(y_test), args.C, args.seed)}
        print(f"{word}: layer {row['layer']}, accuracy {row['accuracy']:.3f}, centroid {row['centroid_accuracy']:.3f}")
        rows.append(row)
    print(f"macro average: accuracy {np.mean([r['accuracy'] for r in rows]):.3f}, "
          f"centroid {np.mean([r['centroid_accuracy'] for r in rows]):.3f}")
    if args.out:
        with args.out.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
