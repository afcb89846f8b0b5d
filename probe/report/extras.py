"""What report.html shows beyond results.json, computed once while a run still has its vectors and model.

Written to ``report_data.json`` beside results.json, so that ``probe report`` can redraw any run later
without a model: the rows (text, sense, subset), a 2-D PCA of the vectors per position and layer, and a
few sentences' attention at every block and head.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from probe.pipeline.results import Results
from probe.report.html import DATA_FILE
from probe.store.caches import load_json_entry, save_json_entry
from probe.store.files import write_text_atomic

FILE = DATA_FILE
MAX_SENTENCES = 8


def build_report_data(
    results: Results,
    rows,
    vectors: Callable[[str, int], np.ndarray],
    positions: Sequence[str],
    load_model: Callable[[], tuple],
    *,
    split_by: str | None = None,
    example: int = 0,
    attention_cache: Path | None = None,
) -> dict:
    """``results``: the run's Results (the layers it probed); ``rows``: the run's prepared rows (text, label, target, span_start, span_end, …);
    ``vectors(position, layer)`` → (n_rows, d); ``load_model()`` → (model, tokenizer).
    ``attention_cache``: a JSON file keyed by what the patterns depend on; when it exists no model is loaded."""
    layers = sorted({row.layer for row in results.rows})
    subsets = [str(v) for v in rows[split_by]] if split_by else None
    indices = example_rows(rows, split_by, example)
    attention = load_json_entry(attention_cache)  # checked against its key and digest (probe.store.caches)
    if attention is None:
        attention = attention_sentences(rows, load_model, indices, subsets)
        if attention_cache is not None:
            save_json_entry(attention_cache, attention)
    return {
        "rows": {"text": list(rows["text"]), "label": list(rows["label"]), "subset": subsets},
        "split_by": split_by,
        "pca": {position: pca_per_layer(vectors, position, layers) for position in positions},
        "attention": attention,
    }


def write_report_data(data: dict, output_dir: Path) -> Path:
    return write_text_atomic(Path(output_dir) / FILE, json.dumps(data, separators=(",", ":")) + "\n")


def pca_per_layer(vectors: Callable[[str, int], np.ndarray], position: str, layers: Sequence[int]) -> dict:
    """{layer: {"x", "y", "explained", "left_out"}}: each layer's own 2-D PCA, signs aligned with the layer
    before so that the picture does not flip as a slider moves. Massive-activation outliers (``outliers``)
    are left out of the fit and the picture: their x and y are null, their row indices in ``left_out``."""
    out, previous = {}, None
    for layer in layers:
        points, explained, left_out = pca2_without_outliers(vectors(position, layer))
        if previous is not None:
            for j in range(2):
                if np.nansum(points[:, j] * previous[:, j]) < 0:
                    points[:, j] *= -1
        previous = points
        out[str(layer)] = {"x": _short(points[:, 0]), "y": _short(points[:, 1]), "explained": _short(explained),
                           "left_out": [int(i) for i in left_out]}
    return out


OUTLIER_Z = 10.0  # a row this many robust standard deviations further from the median than the typical row…
OUTLIER_RATIO = 3.0  # …and this many times the typical row's distance is an outlier
MAX_OUTLIER_SHARE = 0.05  # more rows than this far out are a cluster, not outliers: none are left out


def outliers(X: np.ndarray) -> np.ndarray:
    """Rows whose distance from the median vector is far beyond the rest (massive activations: in many
    decoders the first token's vector is hundreds of times longer, and one point then carries most of the
    variance): robust z-score of the distance (median and MAD) above OUTLIER_Z, and OUTLIER_RATIO times the
    median distance. Row indices, ascending; none when the distances have no spread (MAD 0)."""
    X = np.asarray(X, dtype=np.float64)
    distance = np.linalg.norm(X - np.median(X, axis=0), axis=1)
    typical = float(np.median(distance))
    spread = 1.4826 * float(np.median(np.abs(distance - typical)))
    if spread <= 0.0:
        return np.array([], dtype=int)
    far = np.flatnonzero(((distance - typical) / spread > OUTLIER_Z) & (distance > OUTLIER_RATIO * typical))
    return far if len(far) <= MAX_OUTLIER_SHARE * len(X) else np.array([], dtype=int)


def pca2_without_outliers(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pca2`` of the rows that are not ``outliers``: (points, NaN on the outliers' rows; explained share of
    the other rows' variance; the outliers' indices)."""
    X = np.asarray(X)
    left_out = outliers(X)
    kept = np.setdiff1d(np.arange(len(X)), left_out)
    points = np.full((len(X), 2), np.nan)
    points[kept], explained = pca2(X[kept])
    return points, explained, left_out


def pca2(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components' scores and their share of the variance. Identical rows (the
    embedding of one word in a model without position embeddings) have no variance to explain: zeros.

    From the eigenvectors of the smaller of the rows' Gram matrix and the features' scatter matrix, not a
    full SVD: only two components are needed (192 rows × 576 features: 11 ms → 3 ms a layer)."""
    from probe.scale import workers

    centred = np.asarray(X, dtype=np.float64) - X.mean(0)
    total = float((centred**2).sum())
    if total <= 1e-12 * max(1.0, float(np.abs(X).max()) ** 2):
        return np.zeros((len(X), 2)), np.zeros(2)
    # One BLAS thread: a few hundred rows need no more, and on a busy machine threaded BLAS spins
    # (measured under load: 1.2 s per call with 2 threads, 47 ms with one).
    with workers.one_thread():
        by_rows = centred.shape[0] <= centred.shape[1]
        values, vectors = np.linalg.eigh(centred @ centred.T if by_rows else centred.T @ centred)
    top = np.argsort(values)[::-1][:2]
    values = np.clip(values[top], 0.0, None)
    points = vectors[:, top] * np.sqrt(values) if by_rows else centred @ vectors[:, top]
    pad = 2 - points.shape[1]
    return np.pad(points, ((0, 0), (0, pad))), np.pad(values / total, (0, pad))


def _short(values) -> list[float | None]:
    """Four significant digits; NaN (a point left out) as None, so the JSON stays valid."""
    return [None if np.isnan(v) else float(f"{v:.4g}") for v in np.asarray(values, dtype=np.float64)]


def example_rows(rows, split_by: str | None, example: int, limit: int = MAX_SENTENCES) -> list[int]:
    """The config's example row, then one row per sense (within each subset when split): the first whose
    cue a causal model can see (left of the word, or both sides), else the first."""
    labels = list(rows["label"])
    subsets = list(rows[split_by]) if split_by else [None] * len(labels)
    cues = list(rows["cue"]) if "cue" in _columns(rows) else [None] * len(labels)
    chosen = [min(example, len(labels) - 1)]
    seen = {(subsets[chosen[0]], labels[chosen[0]])}
    visible_first = sorted(range(len(labels)), key=lambda i: cues[i] not in ("left", "both"))
    for i in visible_first:
        key = (subsets[i], labels[i])
        if key not in seen:
            seen.add(key)
            chosen.append(i)
    return chosen[:limit]


def _columns(rows) -> list[str]:
    return list(getattr(rows, "column_names", None) or rows.keys())


def _span_or_none(row) -> tuple[int, int] | None:
    """The row's target span; None (the viewer then starts from the last token) in a row without a target."""
    return None if row["span_start"] is None else (row["span_start"], row["span_end"])


def attention_sentences(rows, load_model: Callable[[], tuple], indices: Sequence[int],
                        subsets: Sequence[str] | None = None) -> list[dict]:
    """Every block's attention for the chosen rows, from the target word, with probe's attention swapped in."""
    from probe import plugins
    from probe.core.swap import is_swapped, swap_attention
    from probe.report.attention_view import capture_attentions

    model, tokenizer = load_model()
    if not is_swapped(model):
        swap_attention(model, adapters=plugins.adapters_for(model))
    chosen = [rows[int(i)] for i in indices]
    sentences = capture_attentions(model, tokenizer, [row["text"] for row in chosen],
                                   [_span_or_none(row) for row in chosen],
                                   [row["label"] for row in chosen])
    for i, sentence in zip(indices, sentences):
        sentence["row"] = int(i)
        sentence["subset"] = subsets[int(i)] if subsets else None
    return sentences
