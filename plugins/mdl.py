"""MDL probe: the online code length of the labels given a layer's vectors (Voita & Titov, 2020).

    measures: [mdl]
    options: {mdl: {fractions: [0.1, 0.2, 0.4, 0.8, 1.0]}}   # the default

The rows, in a seeded shuffled order, are cut into blocks ending at the given fractions. The first block is
sent with the uniform code (log2 K bits a row for K labels); each later block costs the −log2 p of its labels
under a probe trained on every row before it. The result is the code length in bits, the uniform code
length of all rows (n·log2 K) and the compression, their ratio: a layer from which the labels are easier to
learn, from less data, compresses more. Accuracy says whether a probe gets there; MDL also says how fast.
The probe is the experiment's own, so it must give probabilities (``predict_proba``).
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

# numpy is imported where it is used: every `probe` command loads the installed plugins.

from probe import hookimpl

if TYPE_CHECKING:  # for annotations only
    import numpy as np

FRACTIONS = (0.1, 0.2, 0.4, 0.8, 1.0)
SMALLEST_PROBABILITY = 1e-12  # a label the probe rules out costs ~40 bits, not infinity


def online_codelength(X, y, probe, seed: int = 0, fractions=FRACTIONS) -> dict[str, float]:
    """Online code length (bits) of ``y`` given ``X``; ``probe`` is an unfitted sklearn classifier."""
    import numpy as np

    from sklearn.base import clone

    X, y = np.asarray(X), np.asarray(y)
    if not hasattr(probe, "predict_proba"):
        raise TypeError(f"the MDL probe needs a probe with predict_proba; {type(probe).__name__} has none")
    labels = np.unique(y)
    order = _order(y, seed)
    ends = _block_ends(len(y), fractions, len(labels))
    bits = ends[0] * np.log2(len(labels))
    for start, end in itertools.pairwise(ends):
        fitted = clone(probe).fit(X[order[:start]], y[order[:start]])
        bits += _bits(fitted, X[order[start:end]], y[order[start:end]])
    uniform = len(y) * np.log2(len(labels))
    return {"codelength": float(bits), "uniform_codelength": float(uniform), "compression": float(uniform / bits)}


def _order(y: np.ndarray, seed: int) -> np.ndarray:
    """A seeded shuffle of the rows, moved so that the first K rows hold every label once: then every
    probe is trained on every label."""
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(y))
    _, first = np.unique(y[order], return_index=True)
    leading = np.sort(first)
    return np.concatenate([order[leading], np.delete(order, leading)])


def _block_ends(n: int, fractions, n_labels: int) -> list[int]:
    fractions = [float(f) for f in fractions]
    if not fractions or fractions != sorted(fractions) or not 0 < fractions[0] or fractions[-1] != 1.0:
        raise ValueError(f"fractions must increase from above 0 to 1.0, got {fractions}")
    ends = [max(round(f * n), n_labels) for f in fractions]
    return sorted(set(ends))  # a block that rounds to nothing is merged into the next


def _bits(fitted, X: np.ndarray, y: np.ndarray) -> float:
    """−log2 p of each true label under the fitted probe, summed."""
    import numpy as np

    probabilities = fitted.predict_proba(X)
    column = {label: i for i, label in enumerate(fitted.classes_.tolist())}
    p = np.array([probabilities[row, column[label]] if label in column else 0.0 for row, label in enumerate(y.tolist())])
    return float(-np.log2(np.maximum(p, SMALLEST_PROBABILITY)).sum())


@hookimpl
def register_measures(register):
    register("mdl", online_codelength)
