"""Training losses (the data term D of the objective) against one-hot or smoothed targets, one value per replica.

Row convention: ``logits`` ``(..., n, C)`` are ``W h_i + b`` (leading dimensions are replicas), ``labels`` ``(n,)``
integers in ``[0, C)``. :mod:`ufm_torch.training.objective` adds the weight decays and holds the gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def one_hot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Rows of ``Y``: the one-hot matrix ``I_C ⊗ 1_Nᵀ`` transposed, shape ``(n, C)``, written directly in ``dtype``."""
    targets = torch.zeros(*labels.shape, num_classes, dtype=dtype, device=labels.device)
    return targets.scatter_(-1, labels.unsqueeze(-1), 1.0)


def smoothed_targets(labels: Tensor, num_classes: int, dtype: torch.dtype, label_smoothing: float = 0.0) -> Tensor:
    """Rows of ``Y_s = (1 − s)Y + (s/C)11ᵀ``: the target distribution ``q_k = (1 − s)e_k + (s/C)1`` of each sample
    (``torch.nn.functional.cross_entropy``'s ``label_smoothing=s``), shape ``(n, C)``; ``Y`` itself when s = 0."""
    targets = one_hot_targets(labels, num_classes, dtype)
    if label_smoothing == 0.0:
        return targets
    return targets.mul_(1.0 - label_smoothing).add_(label_smoothing / num_classes)


def sum_squared_error(logits: Tensor, labels: Tensor) -> Tensor:
    """The paper's risk ``½‖WH + b1ᵀ − Y‖²_F``: half the squared error summed over samples and classes.

    ``logits`` has shape ``(..., B, C)``; the result has shape ``(...)`` (Mixon et al., Section 2).
    """
    targets = one_hot_targets(labels, logits.shape[-1], logits.dtype)
    return 0.5 * (logits - targets).square().sum(dim=(-1, -2))


def mean_squared_error(logits: Tensor, labels: Tensor) -> Tensor:
    """``½ · mean_i ‖W h_i + b − y_i‖²``: the sum above divided by the batch size (backbone training)."""
    return sum_squared_error(logits, labels) / logits.shape[-2]


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean softmax cross-entropy over the batch, per replica: ``(1/B) Σ_i [logsumexp(z_i) − q_{y_i}ᵀz_i]``.

    With label smoothing ``s ∈ [0, 1)`` the target of class k is ``q_k = (1 − s)e_k + (s/C)1``, so a sample's loss
    is ``(1 − s)·(−log p_{y_i}) + s·mean_c(−log p_c)``, exactly ``torch.nn.functional.cross_entropy(...,
    label_smoothing=s)`` (Szegedy et al. 2016, "Rethinking the Inception architecture", Section 7).
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
    return nll.mean(-1)


LOSSES: dict[str, Callable[..., Tensor]] = {
    "sum_squared": sum_squared_error,
    "mean_squared": mean_squared_error,
    "cross_entropy": cross_entropy,
}
"""The data terms ``D(logits, labels)`` by ``module.loss`` name; ``cross_entropy`` also takes ``label_smoothing``."""

MEAN_REDUCED = frozenset({"mean_squared", "cross_entropy"})
"""The losses that average over the batch (their gradient carries a factor 1/n); ``sum_squared`` sums."""


def logit_residual(loss: str, logits: Tensor, targets: Tensor) -> Tensor:
    """``R = ∂D/∂logits``, shape ``(..., n, C)``, for ``targets`` from :func:`smoothed_targets`.

    ``sum_squared``: ``R = Z − Y``; ``mean_squared``: ``R = (Z − Y)/n``; ``cross_entropy``:
    ``R = (softmax(Z) − Y_s)/n`` (the gradient of ``logsumexp(z) − qᵀz`` is ``softmax(z) − q``).
    """
    difference = (torch.softmax(logits, dim=-1) if loss == "cross_entropy" else logits) - targets
    return difference / logits.shape[-2] if loss in MEAN_REDUCED else difference
