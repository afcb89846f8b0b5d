"""Each head's contribution to the attention output: W_O split by the heads it reads from.

``out = concat(z_0 … z_H)·W_Oᵀ + b = Σ_h z_h·W_O[:, h]ᵀ + b`` — ``per_head_output`` gives the terms
of that sum (the ``attn.head_out`` hook point, TransformerLens's ``result``), ``sum_heads`` adds them
back up with the bias.
"""

from __future__ import annotations

import torch
from torch import nn


def output_weight(o_proj: nn.Module) -> torch.Tensor:
    """W_O as (d_model, heads·d_head), whether it is an nn.Linear or GPT-2's transposed Conv1D."""
    if isinstance(o_proj, nn.Linear):
        return o_proj.weight
    if type(o_proj).__name__ == "Conv1D":
        return o_proj.weight.T
    raise TypeError(f"per-head outputs need W_O as nn.Linear or Conv1D, found {type(o_proj).__name__}")


def per_head_output(z: torch.Tensor, o_proj: nn.Module) -> torch.Tensor:
    """z (batch, head, pos, d_head) → each head's share of the output (batch, pos, head, d_model), no bias."""
    weight = output_weight(o_proj)
    n_heads, d_head = z.shape[1], z.shape[3]
    return torch.einsum("bhpd,mhd->bphm", z, weight.view(weight.shape[0], n_heads, d_head))


def sum_heads(head_out: torch.Tensor, o_proj: nn.Module) -> torch.Tensor:
    out = head_out.sum(dim=2)
    return out if o_proj.bias is None else out + o_proj.bias


def unchanged(edited: torch.Tensor, per_head: torch.Tensor) -> bool:
    """A hook that returned the per-head outputs as they were (or an equal copy) leaves W_O's own output,
    so that an identity hook changes nothing, bit for bit."""
    return edited is per_head or torch.equal(edited, per_head)
