"""Diagnostics: what a run's data and vectors say about how (not) to read its numbers.

Each is a ``Diagnostic`` (probe/pipeline/results.py): in results.json, printed once by ``probe run``, listed
in summary.md and report.html. None stops a run, except a fixed split whose test rows hold a label that no
training row has when the config asks for ``options: {diagnostics: {strict: true}}``.

- ``identical-vectors``: rows of different labels whose vectors agree at a layer past the embeddings (in
  a causal model: the same words up to the target, e.g. a text that starts with it). No probe can tell
  them apart there.
- ``cue-hidden``: a causal model probed at the target, on rows whose cue (the ``cue`` column) is right of
  the word, where the causal mask hides it.
- ``subset-gap``: a causal model whose best target accuracy differs a lot between ``split_by`` subsets:
  the headline ("all") mixes them.
- ``label-not-trained``: a label among a fold's test rows that none of its training rows has.
- ``rows-without-split``: rows a fixed split leaves out because their split column is empty.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from probe.pipeline.config import ConfigError
from probe.pipeline.results import Diagnostic, Results

SHOWN = 5  # rows, groups or labels named in one message; the rest are counted
RELATIVE_TOLERANCE = 1e-5  # vectors closer than this × the layer's RMS norm count as one vector
SUBSET_GAP = 0.3  # best accuracies of two subsets this far apart make the headline a mixture


def listed(items: Sequence, limit: int = SHOWN) -> str:
    """``1, 2, 3, 4, 5 and 7 more``."""
    items = list(items)
    text = ", ".join(str(item) for item in items[:limit])
    return text + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ---------------------------------------------------------------- settings


def strict(config) -> bool:
    """``options: {diagnostics: {strict: true}}``: a fixed split's untrained test label is an error."""
    options = config.options.get("diagnostics")
    if options is None:
        return False
    if not isinstance(options, dict) or set(options) - {"strict"} or not isinstance(options.get("strict", False), bool):
        raise ConfigError(f"{config.source or 'config'}: field 'options.diagnostics' takes "
                          f"{{strict: true}} or {{strict: false}}, got {options!r}")
    return options.get("strict", False)


def is_causal(model_config) -> bool:
    """Whether the model attends only to earlier tokens, from its config alone (no weights): probe's table
    of architectures, else the config's class names (…ForCausalLM, …LMHeadModel) or ``is_decoder``."""
    from probe.core.architectures import ARCHITECTURES

    if getattr(model_config, "is_encoder_decoder", False):
        return False
    known = ARCHITECTURES.get(getattr(model_config, "model_type", None))
    if known is not None:
        return known.causal
    names = getattr(model_config, "architectures", None) or []
    return any("CausalLM" in name or "LMHead" in name for name in names) or bool(getattr(model_config, "is_decoder", False))


def row_numbers(rows) -> list[int]:
    """Each prepared row's number in its source (1-based); its position + 1 when the loader gave none."""
    return list(rows.numbers) if len(rows.numbers) == len(rows) else list(range(1, len(rows) + 1))


# ---------------------------------------------------------------- rows left out


def _empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def rows_without_split(values: Sequence, numbers: Sequence[int], split_field: str, source: str) -> Diagnostic | None:
    """Rows a fixed split leaves out because their ``split_field`` is missing, null or blank."""
    missing = [n for n, value in zip(numbers, values) if _empty(value)]
    if not missing:
        return None
    return Diagnostic(
        code="rows-without-split", rows=missing,
        message=f"{source}: {len(missing)} row(s) have no {split_field!r} value, so the fixed split leaves "
                f"them out: rows {listed(missing)}",
        advice=f"give each row a {split_field!r} value (train, test, …), or remove the rows")


# ---------------------------------------------------------------- labels


def untrained_labels(splits, numbers: Sequence[int], fixed: bool) -> list[Diagnostic]:
    """Per subset and label: the test rows (and folds) whose label none of the fold's training rows has."""
    found: dict[tuple[str, str], tuple[set, set]] = {}
    for split in splits:
        y = np.asarray(split.y)
        for fold, (train, test) in enumerate(split.folds, start=1):
            trained = set(y[train].tolist())
            for i in test:
                if y[i] not in trained:
                    folds, rows = found.setdefault((split.name, str(y[i])), (set(), set()))
                    folds.add(fold)
                    rows.add(numbers[int(split.index[i])])
    return [_untrained(subset, label, sorted(folds), sorted(rows), fixed)
            for (subset, label), (folds, rows) in found.items()]


def _untrained(subset: str, label: str, folds: list[int], rows: list[int], fixed: bool) -> Diagnostic:
    where = "" if subset == "all" else f" (subset {subset!r})"
    if fixed:
        message = (f"label {label!r} is among the fixed split's test rows{where} but no training row has it: "
                   f"rows {listed(rows)} can't be predicted right and lower the accuracy")
        advice = ("add training rows with this label or remove its test rows; options: {diagnostics: "
                  "{strict: true}} makes this an error")
    else:
        message = (f"label {label!r} is among the test rows of fold(s) {listed(folds)}{where} but none of "
                   f"their training rows: rows {listed(rows)} can't be predicted right there")
        advice = ("give the label rows in more groups (grouped folds keep a group's rows together) or use "
                  "fewer folds")
    return Diagnostic(code="label-not-trained", message=message, advice=advice, rows=rows,
                      details={"label": label, "subset": subset, "folds": folds})


def check_untrained_labels(config, splits, numbers: Sequence[int]) -> None:
    """Under ``strict``, a fixed split whose test rows hold a label never trained on stops the run."""
    from probe.pipeline.evaluation import FixedSplit

    if not strict(config) or not isinstance(config.protocol, FixedSplit):
        return
    found = [d for d in untrained_labels(splits, numbers, fixed=True) if d.details["subset"] == "all"]
    if found:
        raise ConfigError(f"{config.source or 'config'}: options.diagnostics.strict is on and " + found[0].message
                          + "; add training rows with that label, or remove its test rows")


# ---------------------------------------------------------------- identical vectors


def identical_groups(X: np.ndarray, tolerance: float = RELATIVE_TOLERANCE) -> list[list[int]]:
    """Groups (two rows or more) of rows whose vectors lie within ``tolerance`` × the rows' RMS norm of each
    other. Rows are sorted by a seeded random projection: only neighbours there can be that close."""
    if len(X) < 2:
        return []
    directions = np.random.default_rng(0)
    squares, projection = _squares_and_projection(X, _unit(directions, X.shape[1]))
    scale = float(np.sqrt(squares / len(X)))
    if scale == 0.0:
        return [list(range(len(X)))]
    eps = tolerance * scale
    groups = []
    for run in _close_runs(X, np.arange(len(X)), projection, eps, directions):
        groups += _close_components(X, run, eps)
    return sorted(groups)


# A run of rows longer than this, all close in one projection, is split again along another direction, up to
# MAX_DIRECTIONS in all: with many rows, neighbours in one projection are close by chance (100,000 rows of
# MiniLM chained into runs of thousands), and comparing every pair of a run costs its length squared.
SHORT_RUN = 256
MAX_DIRECTIONS = 8


def _close_runs(X: np.ndarray, rows: np.ndarray, projection: np.ndarray, eps: float, directions,
                depth: int = 1):
    """``rows`` (with their ``projection``) in runs whose neighbours lie within ``eps`` there: two vectors within
    ``eps`` of each other are within ``eps`` in every projection, so no cut parts them. A long run is cut again
    along a fresh direction."""
    order = np.argsort(projection, kind="stable")
    cuts = np.flatnonzero(np.diff(projection[order]) > eps) + 1
    for run in np.split(rows[order], cuts):
        if len(run) < 2:
            continue
        run = np.sort(run)
        if len(run) <= SHORT_RUN or depth == MAX_DIRECTIONS:
            yield run
            continue
        _, again = _squares_and_projection(X, _unit(directions, X.shape[1]), rows=run)
        if len(np.flatnonzero(np.diff(np.sort(again)) > eps)) == 0:
            yield run  # one tight cluster (rows that are one vector): no direction will part it
            continue
        yield from _close_runs(X, run, again, eps, directions, depth + 1)


def _unit(directions, width: int) -> np.ndarray:
    direction = directions.standard_normal(width)
    return direction / np.linalg.norm(direction)


def _squares_and_projection(X: np.ndarray, unit: np.ndarray, block_rows: int = 4096,
                            rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """The sum of the squared norms of ``rows`` (default: every row), and each one's projection on ``unit``, in
    float64, a block of rows at a time: a memory-mapped matrix is never copied whole."""
    from probe.store.matrices import read_rows

    rows = np.arange(len(X)) if rows is None else rows
    squares, projection = 0.0, np.empty(len(rows))
    for start in range(0, len(rows), block_rows):
        vectors = np.asarray(read_rows(X, rows[start : start + block_rows]), dtype=np.float64)
        squares += float(np.sum(vectors**2))
        projection[start : start + len(vectors)] = vectors @ unit
    return squares, projection


DISTANCE_CELLS = 2**21  # differences held at once while comparing two blocks of vectors (16 MiB of float64)


def _close_components(X: np.ndarray, rows: np.ndarray, eps: float, block: int | None = None) -> list[list[int]]:
    """Connected components (≥ 2 rows) of 'within eps' among ``rows``: rows that are one vector, bit for bit,
    joined first; the distances between the distinct vectors left computed a block × block at a time
    (``block``: rows a side; default as many as DISTANCE_CELLS allows at this width)."""
    from probe.store.matrices import read_rows

    block = block or max(1, math.isqrt(DISTANCE_CELLS // X.shape[1]))
    vectors = np.asarray(read_rows(X, rows))
    distinct, which = np.unique(vectors, axis=0, return_inverse=True)
    parent = list(range(len(distinct)))

    def root(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    distinct = distinct.astype(np.float64)
    for start in range(0, len(distinct), block):
        near = distinct[start : start + block]
        for among_start in range(start, len(distinct), block):  # each pair once: blocks at or after this one
            among = distinct[among_start : among_start + block]
            distances = np.linalg.norm(near[:, None, :] - among[None, :, :], axis=2)
            for a, b in zip(*np.nonzero(distances <= eps)):
                ra, rb = root(start + int(a)), root(among_start + int(b))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    components: dict[int, list[int]] = {}
    for row, vector in zip(rows.tolist(), np.asarray(which).ravel().tolist()):
        components.setdefault(root(vector), []).append(row)
    return [sorted(c) for c in components.values() if len(c) > 1]


def identical_vectors(vectors: Callable[[str, int], np.ndarray], positions: Sequence[str], layers: Sequence[int],
                      table, numbers: Sequence[int], causal: bool) -> list[Diagnostic]:
    """Per position: rows of different labels with one vector at some layer past the embeddings (at layer 0
    one word's vector is its token's embedding in every row, by design)."""
    labels = [str(label) for label in table["label"]]
    found = []
    for position in positions:
        at: dict[tuple[int, ...], list[int]] = {}
        for layer in layers:
            if layer == 0:
                continue
            for group in identical_groups(vectors(position, layer)):
                if len({labels[i] for i in group}) > 1:
                    at.setdefault(tuple(group), []).append(layer)
        if at:
            found.append(_identical(position, at, table, labels, numbers, causal, [x for x in layers if x]))
    return found


def _identical(position: str, at: dict, table, labels: list[str], numbers, causal: bool, probed: list[int]) -> Diagnostic:
    texts, starts = list(table["text"]), list(table["span_start"])
    rows = sorted({i for group in at for i in group})
    layers = sorted({layer for group_layers in at.values() for layer in group_layers})
    where = "every layer past the embeddings" if layers == probed else f"layer(s) {listed(layers, 8)}"
    shown = [", ".join(f"row {numbers[i]} ({labels[i]}: {_clip(texts[i])!r})" for i in group[:3])
             for group in list(at)[:2]]
    message = (f"{len(rows)} rows of different labels share a {position}-token vector ({len(at)} group(s)) at "
               f"{where}, so no probe can tell them apart there: " + "; ".join(shown))
    if causal and position == "target":
        first = [numbers[i] for i in rows if starts[i] == 0]
        why = ("the word starts the text, and a causal model sees nothing before it" if len(first) == len(rows) else
               "the text up to the word is the same, and a causal model's vector at the word sees nothing after it"
               + (f" (rows {listed(first)} start with the word: nothing comes before it)" if first else ""))
        advice = (f"{why}: probe positions: [target, last] (the last token sees the whole text), or put a cue "
                  "before the word (a BOS token alone would not help: the rows would still share every token "
                  "up to the word)")
    elif causal and position == "first":
        advice = ("a causal model's first token sees nothing after itself, so rows that start alike share it: read "
                  "it as a control that must stay at chance, and probe last or mean for the whole sentence")
    else:
        advice = "check these rows: the same text with different labels, or vectors that ignore what differs"
    return Diagnostic(code="identical-vectors", message=message, advice=advice,
                      rows=[numbers[i] for i in rows], layers=layers,
                      details={"position": position, "groups": [[numbers[i] for i in g] for g in at]})


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ---------------------------------------------------------------- cues a causal model can't see


def best_target_accuracy(results: Results) -> dict[str, float]:
    """Each subset's best accuracy at the target (over layers)."""
    return {subset: max(row.accuracy for row in rows)
            for (position, subset), rows in results.series().items() if position == "target"}


def hidden_cues(table, numbers: Sequence[int], positions: Sequence[str], causal: bool, results: Results,
                split_by: str | None) -> Diagnostic | None:
    """A causal model probed at the target, with rows whose ``cue`` column says the cue is right of the word."""
    columns = list(getattr(table, "column_names", None) or [])
    if not causal or "target" not in positions or "cue" not in columns:
        return None
    cues = [str(c) for c in table["cue"]]
    right = [numbers[i] for i, cue in enumerate(cues) if cue == "right"]
    if not right:
        return None
    details: dict = {"rows_by_cue": dict(Counter(cues))}
    message = (f"{len(right)} of {len(cues)} rows have their cue right of the word (cue: right), which a causal "
               "model's vector at the word can't see")
    if split_by == "cue":
        best = best_target_accuracy(results)
        details["best_target_accuracy"] = best
        by_cue = ", ".join(f"{cue} {best[cue]:.2f}" for cue in sorted(best) if cue != "all")
        message += f": best accuracy at the target by cue: {by_cue}; 'all' ({best['all']:.2f}) mixes them"
    advice = ("read the accuracy by cue (split_by: cue), and at the sentence's last token (positions: "
              "[target, last]), which sees the whole text" if split_by != "cue" or "last" not in positions else
              "read the target's accuracy per cue, and the last token's, which sees the whole text")
    return Diagnostic(code="cue-hidden", message=message, advice=advice, rows=right, details=details)


def subset_gap(results: Results, positions: Sequence[str], causal: bool, split_by: str | None) -> Diagnostic | None:
    """A causal model whose subsets' best target accuracies lie far apart: the headline mixes them."""
    if not causal or "target" not in positions or split_by in (None, "cue"):
        return None
    best = {k: v for k, v in best_target_accuracy(results).items() if k != "all"}
    if len(best) < 2 or max(best.values()) - min(best.values()) < SUBSET_GAP:
        return None
    by_subset = ", ".join(f"{name} {value:.2f}" for name, value in sorted(best.items(), key=lambda kv: -kv[1]))
    return Diagnostic(
        code="subset-gap", details={"best_target_accuracy": best},
        message=f"best accuracy at the target differs by {split_by}: {by_subset}; the headline ('all') mixes them",
        advice="in a causal model the word's vector sees only what comes before it: check whether the low "
               "subsets' cues come after the word, and read the last token's accuracy (positions: [target, last])")


# ---------------------------------------------------------------- all of them


def collect(run, results: Results) -> list[Diagnostic]:
    """Every diagnostic of a finished run (``run``: its RunData), loading's first."""
    from probe.pipeline.evaluation import FixedSplit

    config, table = run.config, run.rows.table
    numbers = row_numbers(run.rows)
    causal = is_causal(run.services.model_config)
    found = list(run.rows.diagnostics)
    found += identical_vectors(run.features.main.layer, config.positions, run.layers, table, numbers, causal)
    if results.task == "regression":  # the rest are about classes and accuracy
        return found
    found += untrained_labels(run.splits, numbers, fixed=isinstance(config.protocol, FixedSplit))
    found += [d for d in (hidden_cues(table, numbers, config.positions, causal, results, config.split_by),
                          subset_gap(results, config.positions, causal, config.split_by)) if d is not None]
    return found
