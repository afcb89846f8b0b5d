"""Concept erasers for the residual stream: LEACE fitted on one layer's vectors, and its random control.

LEACE (Belrose et al. 2023, package ``concept-erasure``) is the affine map r(x) = x - W⁺ P W (x - μ) with
W = Σ_xx^{-1/2} (the whitening) and P the orthogonal projection onto the column space of W Σ_xz, z the
one-hot label: after it, no linear classifier beats the constant one on the fitted rows. Its rank is at
most (number of labels - 1).

The control erases a random subspace of the same rank the same way: the whitened cross-covariance's
column space is replaced by a random subspace (uniform in whitened coordinates), and the package builds
the eraser from it exactly as it builds LEACE's (covariance shrinkage and trace constraint included). So
both move a vector by the same amount of the data's own spread; only the directions differ.

``erase_hook`` applies an eraser at a hook point, on whatever device and in whatever dtype the tensor
has (the arithmetic in at least float32).
"""

from __future__ import annotations

import numpy as np
import torch

MISSING = ("concept erasure needs the concept-erasure package: "
           "pip install 'concept-erasure>=0.2.4,<0.3' (or probe's extra: pip install -e '.[erasure]')")


def _fitter_class():
    try:
        from concept_erasure import LeaceFitter
    except ImportError:
        raise ImportError(MISSING) from None
    return LeaceFitter


def fit_leace(X: np.ndarray, y):
    """The LEACE statistics of ``X`` (rows, d) against the one-hot labels ``y``, in float64 on the CPU."""
    labels = np.unique(np.asarray(y))
    if len(labels) < 2:
        raise ValueError(f"erasure needs at least two labels among the rows it is fitted on, got {labels.tolist()}")
    z = (np.asarray(y)[:, None] == labels[None, :]).astype(np.float64)
    return _fitter_class().fit(torch.from_numpy(np.asarray(X, dtype=np.float64)), torch.from_numpy(z))


def whitening(fitter):
    """W = Σ^{-1/2}, W⁺ = Σ^{1/2} and the basis of Σ's range for ``fitter``'s Σ_xx, thresholded as
    concept-erasure does. One d×d eigendecomposition: compute it once per fitter and pass it on."""
    sigma = fitter.sigma_xx
    values, vectors = torch.linalg.eigh(sigma)
    keep = values > values[-1] * sigma.shape[-1] * torch.finfo(values.dtype).eps
    values = values.clamp_min(0.0)
    W = vectors * torch.where(keep, values.rsqrt(), 0.0) @ vectors.mH
    W_inv = vectors * torch.where(keep, values.sqrt(), 0.0) @ vectors.mH
    return W, W_inv, vectors[:, keep]


def concept_rank(fitter, whitened=None) -> int:
    """How many whitened directions LEACE erases: the singular values of W Σ_xz above the package's tolerance.
    ``whitened``: ``whitening(fitter)``, when already computed."""
    W, _, _ = whitened or whitening(fitter)
    return int((torch.linalg.svdvals(W @ fitter.sigma_xz) > fitter.svd_tol).sum())


def random_fitter(fitter, rank: int, seed, whitened=None):
    """``fitter``'s statistics with the whitened cross-covariance replaced by a random rank-``rank`` one.
    ``whitened``: ``whitening(fitter)``, when already computed."""
    _, W_inv, basis = whitened or whitening(fitter)
    rng = np.random.default_rng(seed)
    gaussian = torch.from_numpy(rng.standard_normal((basis.shape[1], rank)))
    directions, _ = torch.linalg.qr(basis @ gaussian.to(basis.dtype))  # orthonormal, inside Σ's range
    random = _fitter_class()(fitter.x_dim, rank, dtype=fitter.mean_x.dtype, shrinkage=fitter.shrinkage,
                             svd_tol=fitter.svd_tol, constrain_cov_trace=fitter.constrain_cov_trace)
    random.n = fitter.n.clone()
    random.mean_x = fitter.mean_x.clone()
    random.sigma_xx_ = fitter.sigma_xx_.clone()
    random.sigma_xz_ = (fitter.n - 1) * (W_inv @ directions)  # so that W Σ_xz = directions
    return random


def erase_numpy(eraser, X: np.ndarray) -> np.ndarray:
    """``eraser`` applied to stored vectors (rows, d)."""
    return eraser(torch.from_numpy(np.asarray(X, dtype=np.float64)).to(eraser.proj_left.dtype)).numpy()


def erase_hook(eraser):
    """A hook function ``fn(hidden, name)`` that erases at every position of (..., d) ``hidden``."""
    moved = {}

    def hook(hidden: torch.Tensor, name: str) -> torch.Tensor:
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        key = (hidden.device, dtype)
        if key not in moved:
            moved[key] = tuple(t.to(hidden.device, dtype) for t in (eraser.proj_left, eraser.proj_right, eraser.bias))
        left, right, bias = moved[key]
        x = hidden.to(dtype)
        return (x - ((x - bias) @ right.mT) @ left.mT).to(hidden.dtype)

    return hook


def erasure_point(layer: int, n_blocks: int) -> str:
    """The hook point where hidden state ``layer`` enters the next block: erasing there changes every later layer."""
    if not 0 <= layer < n_blocks:
        raise ValueError(f"options.erasure.layer is {layer}; it must be a layer with a block after it: 0..{n_blocks - 1}")
    return f"blocks.{layer}.resid_pre"
