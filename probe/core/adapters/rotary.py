"""Rotary position embedding as Hugging Face's apply_rotary_pos_emb computes it, for adapters that rotate
queries and keys themselves (Falcon); mapped families use their own module's function."""

from __future__ import annotations

import torch


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin, with cos/sin (batch, pos, d_head) broadcast over heads.

    The same ops in the same order as Hugging Face's apply_rotary_pos_emb, so the result is bit-identical.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x * cos) + (rotate_half(x) * sin)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) → (−x2, x1) on the two halves of the last dimension."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)
