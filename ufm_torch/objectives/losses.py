"""The training losses (the data term D of the objective), one class per loss, registered once by its config name.

Row convention: ``logits`` ``(..., n, C)`` are ``Z`` with rows ``W h_i + b`` (leading dimensions are replicas),
``labels`` ``(n,)`` integers in ``[0, C)``, ``targets`` ``(n, C)`` the rows of ``Y`` (or of the smoothed ``Y_s``).
Every loss is ``D = c Σ_i ℓ(z_i, q_i)`` with a per-sample ℓ whose gradient in the logits is ``σ(z_i) − q_i``, σ the
:class:`Link` of the loss (the identity for the squared error, softmax for the cross-entropy), and c = 1 (a sum over
samples) or 1/n (a mean): so ``∂D/∂Z = c(σ(Z) − Y)``, the residual of every closed-form gradient
(:mod:`ufm_torch.objectives.ufm`). :data:`LOSSES` maps ``module.loss`` to its :class:`Loss`; the trainer, the config
checks, the oracle and the figures ask that object, never the name.

Loading this module imports no torch (the functions use tensor methods only), so the config schema takes the loss
names from :data:`LOSSES` before torch is loaded (``tests/test_rejected_config.py``).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import Tensor


def one_hot_targets(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Rows of ``Y``: the one-hot matrix ``I_C ⊗ 1_Nᵀ`` transposed, shape ``(n, C)``, written directly in ``dtype``."""
    targets = labels.new_zeros((*labels.shape, num_classes), dtype=dtype)
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


def cross_entropy(logits: Tensor, labels: Tensor, label_smoothing: float | Tensor = 0.0) -> Tensor:
    """Mean softmax cross-entropy over the batch, per replica: ``(1/B) Σ_i [logsumexp(z_i) − q_{y_i}ᵀz_i]``.

    With label smoothing ``s ∈ [0, 1)`` the target of class k is ``q_k = (1 − s)e_k + (s/C)1``, so a sample's loss
    is ``(1 − s)·(−log p_{y_i}) + s·mean_c(−log p_c)``, exactly ``torch.nn.functional.cross_entropy(...,
    label_smoothing=s)`` (Szegedy et al. 2016, "Rethinking the Inception architecture", Section 7). ``s`` may be a
    tensor of the replica shape ``(...)``: one per replica.
    """
    log_probs = logits.log_softmax(dim=-1)
    nll = -log_probs.gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    if isinstance(label_smoothing, float | int):
        if label_smoothing:
            nll = (1.0 - label_smoothing) * nll - label_smoothing * log_probs.mean(-1)
    else:
        smoothing = label_smoothing.unsqueeze(-1)
        nll = (1.0 - smoothing) * nll - smoothing * log_probs.mean(-1)
    return nll.mean(-1)


class Link(enum.Enum):
    """The map σ of a loss whose gradient in one sample's logits is ``σ(z) − q``: the identity (squared error) or
    softmax (cross-entropy). It decides the closed forms of the oracle and how fused steps compute the residual."""

    IDENTITY = "identity"
    SOFTMAX = "softmax"


class Loss(ABC):
    """A data term ``D = c Σ_i ℓ(z_i, q_i)`` (module docstring): its value, its residual ``∂D/∂Z``, and what the
    step-size check and the global-optimum oracle need to know of it. Subclasses set the class attributes."""

    name: ClassVar[str]
    """The ``module.loss`` value that selects it (a public config value)."""
    link: ClassVar[Link]
    """σ with ``∂ℓ/∂z = σ(z) − q``."""
    mean_reduced: ClassVar[bool]
    """Whether D averages over the samples (c = 1/n) rather than sums them (c = 1)."""
    supports_label_smoothing: ClassVar[bool] = False
    """Whether the targets may be smoothed, ``q_k = (1 − s)e_k + (s/C)1`` with s > 0."""
    logit_curvature: ClassVar[float]
    """κ with ``∇²_z ℓ(z, q) ⪯ κI`` for every z: the oracle's step bound (:mod:`ufm_torch.theory.optimum`)."""

    @abstractmethod
    def value(self, logits: Tensor, labels: Tensor, label_smoothing: float | Tensor = 0.0) -> Tensor:
        """D per replica, shape ``(...)``, from ``logits`` ``(..., n, C)`` and ``labels`` ``(n,)``; ``label_smoothing``
        is s (0 unless :attr:`supports_label_smoothing`), a number or a tensor of the replica shape."""

    @abstractmethod
    def bias_curvature(self, batch_size: int) -> float | None:
        """κ_b with ``∂²D/∂b² = κ_b I`` over a batch of ``batch_size`` samples when D is quadratic in the bias b
        (the step-size stability bound of :mod:`ufm_torch.cli.validation`), else None."""

    @property
    def shift_invariant(self) -> bool:
        """Whether ``ℓ(z + t1, q) = ℓ(z, q)`` for every t: softmax is, and ``1ᵀq = 1``; then an unregularised bias
        has a line of optimal values ``b* + t1``."""
        return self.link is Link.SOFTMAX

    def residual_scale(self, num_samples: int) -> float:
        """c of ``∂D/∂Z = c(σ(Z) − Y)`` for n = ``num_samples``: 1/n for a mean, 1 for a sum."""
        return 1.0 / num_samples if self.mean_reduced else 1.0

    def residual(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``R = ∂D/∂Z = c(σ(Z) − Y)``, shape ``(..., n, C)``, for ``targets`` from :func:`smoothed_targets` (the
        gradient of ``½‖z − y‖²`` is ``z − y``, that of ``logsumexp(z) − qᵀz`` is ``softmax(z) − q``)."""
        predictions = logits.softmax(dim=-1) if self.link is Link.SOFTMAX else logits
        difference = predictions - targets
        return difference / logits.shape[-2] if self.mean_reduced else difference

    def label_residual_(self, logits: Tensor, labels: Tensor, label_smoothing: float | Tensor = 0.0) -> Tensor:
        """``σ(Z) − Q`` written over ``logits`` ``(..., b, C)`` (in place, and returned) from the integer ``labels``
        ``(b,)``, without the factor c and without an ``(n, C)`` target matrix: ``Q = Y``, or ``Y_s = (1 − s)Y +
        (s/C)11ᵀ`` for the cross-entropy with label smoothing s (a number or a tensor of the replica shape ``(...)``).
        The chunked passes of :mod:`ufm_torch.objectives.sample_chunks` take it per chunk of samples."""
        if self.link is Link.SOFTMAX:
            peak = logits.amax(dim=-1, keepdim=True)
            logits.sub_(peak).exp_()
            logits.div_(logits.sum(dim=-1, keepdim=True))
        index = labels.expand(*logits.shape[:-1]).unsqueeze(-1)
        if isinstance(label_smoothing, float | int):
            logits.scatter_(-1, index, logits.gather(-1, index).sub_(1.0 - label_smoothing))
            return logits.sub_(label_smoothing / logits.shape[-1]) if label_smoothing else logits
        smoothing = label_smoothing.reshape(*label_smoothing.shape, 1, 1)
        logits.scatter_(-1, index, logits.gather(-1, index).sub_(1.0 - smoothing))
        return logits.sub_(smoothing / logits.shape[-1])


class SumSquaredError(Loss):
    """``D = ½‖Z − Y‖²_F`` (:func:`sum_squared_error`), the paper's risk (Mixon et al., Section 2)."""

    name = "sum_squared"
    link = Link.IDENTITY
    mean_reduced = False
    logit_curvature = 1.0

    def value(self, logits: Tensor, labels: Tensor, label_smoothing: float | Tensor = 0.0) -> Tensor:
        """``½‖Z − Y‖²_F`` per replica."""
        return sum_squared_error(logits, labels)

    def bias_curvature(self, batch_size: int) -> float | None:
        """B, the batch size: ``∇_b D = A1`` with ``A = Z − Y``, so ``∂²D/∂b² = B·I``."""
        return float(batch_size)


class MeanSquaredError(Loss):
    """``D = (1/n)·½‖Z − Y‖²_F`` (:func:`mean_squared_error`), the backbones' default."""

    name = "mean_squared"
    link = Link.IDENTITY
    mean_reduced = True
    logit_curvature = 1.0

    def value(self, logits: Tensor, labels: Tensor, label_smoothing: float | Tensor = 0.0) -> Tensor:
        """``½ mean_i ‖z_i − y_i‖²`` per replica."""
        return mean_squared_error(logits, labels)

    def bias_curvature(self, batch_size: int) -> float | None:
        """1: ``∇_b D = (1/B)A1``, so ``∂²D/∂b² = I`` whatever the batch size."""
        return 1.0


class CrossEntropy(Loss):
    """``D = (1/n) Σ_i [logsumexp(z_i) − q_iᵀz_i]`` with label smoothing s (:func:`cross_entropy`)."""

    name = "cross_entropy"
    link = Link.SOFTMAX
    mean_reduced = True
    supports_label_smoothing = True
    logit_curvature = 0.5
    """``vᵀ(diag p − ppᵀ)v`` is a variance, at most ``(max v − min v)²/4 ≤ ‖v‖²/2``."""

    def value(self, logits: Tensor, labels: Tensor, label_smoothing: float | Tensor = 0.0) -> Tensor:
        """The mean label-smoothed cross-entropy per replica."""
        return cross_entropy(logits, labels, label_smoothing)

    def bias_curvature(self, batch_size: int) -> float | None:
        """None: not quadratic in b (curvature at most ½, falling as the softmax saturates), so no step size is
        certain to diverge."""
        return None


LOSSES: dict[str, Loss] = {loss.name: loss for loss in (SumSquaredError(), MeanSquaredError(), CrossEntropy())}
"""Every loss by its ``module.loss`` name: the one registry of losses."""

LABEL_SMOOTHING_LOSSES = tuple(name for name, loss in LOSSES.items() if loss.supports_label_smoothing)
"""The names of the losses that take ``module.label_smoothing``."""
