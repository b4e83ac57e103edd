"""Training losses against one-hot targets, one value per replica."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ufm_torch.training.objective import one_hot_targets


def sum_squared_error(logits: Tensor, labels: Tensor) -> Tensor:
    """The paper's risk ``½‖WH + b1ᵀ − Y‖²_F``: half the squared error summed over samples and classes.

    ``logits`` has shape ``(..., B, C)``; the result has shape ``(...)`` (Mixon et al., Section 2).
    """
    targets = one_hot_targets(labels, logits.shape[-1], logits.dtype)
    return 0.5 * (logits - targets).square().sum(dim=(-1, -2))


def mean_squared_error(logits: Tensor, labels: Tensor) -> Tensor:
    """``½ · mean_i ‖W h_i + b − y_i‖²``: the sum above divided by the batch size (backbone training)."""
    return sum_squared_error(logits, labels) / logits.shape[-2]


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean softmax cross-entropy over the batch, per replica."""
    log_probs = torch.log_softmax(logits, dim=-1)
    return -log_probs.gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1).mean(-1)


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sum_squared": sum_squared_error,
    "mean_squared": mean_squared_error,
    "cross_entropy": cross_entropy,
}

