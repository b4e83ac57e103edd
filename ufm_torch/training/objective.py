"""The UFM's empirical risk and its closed-form gradient (Mixon, Parshall and Pi, Section 3).

Row convention: ``features`` has shape ``(..., n, p)`` (the paper's ``H`` transposed),
``weight`` ``(..., C, p)``, ``bias`` ``(..., C)``; leading dimensions are replicas.
"""

from __future__ import annotations

import torch
from torch import Tensor


def one_hot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Rows of ``Y``: the one-hot matrix ``I_C ⊗ 1_Nᵀ`` transposed, shape ``(n, C)``, written directly in ``dtype``."""
    targets = torch.zeros(*labels.shape, num_classes, dtype=dtype, device=labels.device)
    return targets.scatter_(-1, labels.unsqueeze(-1), 1.0)


def residual(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """``Aᵀ`` with ``A = WH + b1ᵀ − Y``, shape ``(..., n, C)``."""
    logits = features @ weight.transpose(-1, -2) + bias.unsqueeze(-2)
    return logits - one_hot_targets(labels, weight.shape[-2], logits.dtype)


def ufm_risk(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """Empirical risk ``R = ½‖WH + b1ᵀ − Y‖²_F`` per replica (Mixon et al., Section 2), shape ``(...)``."""
    return 0.5 * residual(features, weight, bias, labels).square().sum(dim=(-1, -2))


def ufm_gradients(
    features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form gradient of ``R``: ``∇_H = WᵀA``, ``∇_W = AHᵀ``, ``∇_b = A1`` (Mixon et al., Section 3).

    Returned in the row convention: ``(∇_H)ᵀ`` of shape ``(..., n, p)``, ``∇_W`` ``(..., C, p)``,
    ``∇_b`` ``(..., C)``.
    """
    residual_rows = residual(features, weight, bias, labels)
    return (
        residual_rows @ weight,
        residual_rows.transpose(-1, -2) @ features,
        residual_rows.sum(dim=-2),
    )
