"""Directions to steer the residual stream along: a fitted linear probe's direction for one sense, mapped
back into the residual space, and seeded random directions as the control.

A logistic probe scores sense k as z_k = w_k · ((x − μ) / σ) + b_k (σ: its standardisation's scale). The
direction that raises z_k fastest in the residual space is the gradient ∂z_k/∂x = w_k / σ (elementwise).
With more than two senses the softmax is unchanged by adding one vector to every w_k, so the direction
toward sense s is (w_s − mean_k w_k) / σ: it raises z_s against the average of the others. A binary probe
has one weight row, for its second class: +w / σ toward that class, −w / σ toward the first.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from probe.errors import UserError


class SteeringError(UserError, ValueError):
    """The probe or the options can't give a steering direction; the message names which."""


def sense_directions(estimator, probe_name: str = "probe") -> dict[Hashable, np.ndarray]:
    """{sense: unit vector in the residual space} from a fitted linear probe (a ``coef_`` estimator,
    optionally behind scaling steps that have ``scale_``, as StandardScaler does)."""
    *transforms, final = _flat_steps(estimator)
    coef = getattr(final, "coef_", None)
    if coef is None or getattr(final, "classes_", None) is None:
        raise SteeringError(f"steering needs a linear classifier with coef_ (a logistic probe); the "
                            f"probe {probe_name!r} ends in {type(final).__name__}, which has none")
    scale = np.ones(np.shape(coef)[-1])
    for step in transforms:
        if not hasattr(step, "scale_"):
            raise SteeringError(f"steering can map a probe's weights back through scaling steps only; the "
                                f"probe {probe_name!r} has a {type(step).__name__} step")
        if step.scale_ is not None:
            scale = scale * step.scale_
    coef, classes = np.asarray(coef, dtype=np.float64), list(final.classes_)
    if coef.shape[0] == 1:  # binary: one row, toward classes[1]
        rows = {classes[0]: -coef[0], classes[1]: coef[0]}
    else:
        centred = coef - coef.mean(0)
        rows = {sense: centred[k] for k, sense in enumerate(classes)}
    return {sense: _unit(row / scale, f"the probe's direction for {sense!r}") for sense, row in rows.items()}


def _flat_steps(estimator) -> list:
    """A pipeline's steps, nested pipelines opened up; an estimator alone is one step."""
    if not hasattr(estimator, "steps"):
        return [estimator]
    return [inner for _, step in estimator.steps for inner in _flat_steps(step)]


def random_direction(d: int, seed) -> np.ndarray:
    """A unit vector uniform on the sphere in d dimensions, from ``seed`` (an int or a list of ints)."""
    return _unit(np.random.default_rng(seed).standard_normal(d), "a random direction")


def projection_spread(X: np.ndarray, unit: np.ndarray) -> float:
    """The std of the rows' projections onto ``unit``: how far the data itself spreads along it."""
    return float(np.std(np.asarray(X, dtype=np.float64) @ unit))


def bootstrap_interval(values: np.ndarray, seed, n: int = 1000, level: float = 0.95) -> tuple[float, float]:
    """A percentile bootstrap interval of the mean over the first axis of ``values`` (one entry per
    resampled unit, e.g. per row), seeded."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan")
    picks = np.random.default_rng(seed).integers(0, len(values), size=(n, len(values)))
    means = values[picks].mean(1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _unit(vector: np.ndarray, what: str) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        raise SteeringError(f"{what} is zero or not finite: there is nothing to steer along")
    return vector / norm
