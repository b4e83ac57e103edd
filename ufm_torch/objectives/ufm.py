"""The UFM's empirical risk, the regularised objective of every training run, and their closed-form gradients.

Row convention: ``features`` has shape ``(..., n, p)`` (the paper's ``H`` transposed),
``weight`` ``(..., C, p)``, ``bias`` ``(..., C)``; leading dimensions are replicas.

The paper's risk (Mixon, Parshall and Pi, Sections 2–3) is ``R = ½‖WH + b1ᵀ − Y‖²_F`` (:func:`ufm_risk`,
:func:`ufm_gradients`). Every run trains the regularised objective of :class:`Objective`, per replica::

    f(W, H, b) = D(W, H, b) + λ_W/2 ‖W‖²_F + λ_H/2 ‖H‖²_F + λ_b/2 ‖b‖²

with the data term ``D`` of ``module.loss`` (:data:`ufm_torch.objectives.losses.LOSSES`): ``sum_squared`` (R itself,
the UFM's default), ``mean_squared`` (R/n) or ``cross_entropy`` (the mean over samples, with label smoothing s).
The mean-reduced objective with weight decay on W and b and *feature decay* λ_H on H is the regularised UFM of Zhu
et al. 2021 ("A geometric analysis of neural collapse with unconstrained features"); with ``sum_squared``
and no decay it is the paper's R. ``n = Σ_k n_k`` counts all samples; classes may be imbalanced.

Closed-form gradient, with the residual ``R = ∂D/∂logits`` of shape ``(n, C)`` (rows are samples; the loss's
:meth:`~ufm_torch.objectives.losses.Loss.residual`)::

    ∇_features = R·W + λ_H F,    ∇_W = Rᵀ F + λ_W W,    ∇_b = Rᵀ1 + λ_b b

``R = Z − Y`` (sum_squared), ``(Z − Y)/n`` (mean_squared), ``(softmax(Z) − Y_s)/n`` (cross_entropy, ``Y_s`` the
smoothed targets), ``Z = FWᵀ + 1bᵀ`` the logits. A model without bias has ``b ≡ 0``: no λ_b term and no ∇_b.

Per replica: s, λ_H, λ_W, λ_b and the temperature τ are each a number (every replica's) or a tuple of R numbers, one
per replica in replica order (:data:`PerReplica`; :mod:`ufm_torch.hyperparameters`). A tuple acts as a tensor of
shape ``(R, 1, …)`` broadcast over each replica's rows (:func:`replica_tensor`), so one batched product serves every
replica; the smoothed targets are then ``(R, n, C)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ufm_torch.objectives.losses import (
    LABEL_SMOOTHING_LOSSES,
    LOSSES,
    Link,
    Loss,
    one_hot_targets,
    smoothed_targets,
)

PerReplica = float | tuple[float, ...]
"""A value of every replica (a number) or of each replica (a tuple of R numbers, in replica order)."""


def replica_tensor(value: PerReplica, like: Tensor, trailing: int = 0) -> float | Tensor:
    """``value`` as a number, or per replica as a tensor of ``like``'s dtype and device of shape ``(R, 1, …, 1)``
    (``trailing`` ones), which broadcasts against a replica-major tensor ``(R, …)``."""
    if isinstance(value, float | int):
        return float(value)
    return torch.tensor(value, dtype=like.dtype, device=like.device).view(-1, *([1] * trailing))


def replica_values(value: PerReplica) -> tuple[float, ...]:
    """The values of ``value`` as a tuple: the shared number once, or one per replica."""
    return (float(value),) if isinstance(value, float | int) else tuple(value)


def residual(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """``Aᵀ`` with ``A = WH + b1ᵀ − Y``, shape ``(..., n, C)``."""
    logits = features @ weight.transpose(-1, -2) + bias.unsqueeze(-2)
    return logits - one_hot_targets(labels, weight.shape[-2], logits.dtype)


def ufm_risk(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """Empirical risk ``R = ½‖WH + b1ᵀ − Y‖²_F`` per replica (Mixon et al., Section 2), shape ``(...)``."""
    return 0.5 * residual(features, weight, bias, labels).square().sum(dim=(-1, -2))


def ufm_gradients(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
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


@dataclass(frozen=True)
class Objective:
    """``f = D + λ_W/2‖W‖²_F + λ_H/2‖H‖²_F + λ_b/2‖b‖²`` per replica (module docstring): what a run minimises.

    ``loss`` names the data term D (``module.loss``), ``label_smoothing`` is s (``cross_entropy`` only),
    ``feature_decay`` λ_H, ``classifier_decay`` λ_W, ``bias_decay`` λ_b (each ≥ 0; the defaults give the paper's
    risk); each of the four is a number or a tuple of one value per replica (:data:`PerReplica`). ``bias``
    arguments are None for a bias-free model (b ≡ 0). ``temperature`` τ > 0 (None: 1) divides the logits before
    the cross-entropy, ``D(Z/τ)`` (the spherical UFM of Jiang et al. 2024, "Generalized neural collapse for a large
    number of classes", ICML, logits ``⟨w_k, h_i⟩/τ``); the residual of :meth:`gradients` is then
    ``∂D/∂Z = (1/τ)·D'(Z/τ)``. τ too is a number or a tuple of one value per replica (``module.temperature`` as a
    list); a tuple scales each replica's logits ``(R, n, C)`` by its own 1/τ.
    """

    loss: str = "sum_squared"
    label_smoothing: PerReplica = 0.0
    feature_decay: PerReplica = 0.0
    classifier_decay: PerReplica = 0.0
    bias_decay: PerReplica = 0.0
    temperature: PerReplica | None = None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"module.loss={self.loss!r} is not one of {sorted(LOSSES)}")
        if self.temperature is not None:
            if not all(math.isfinite(value) and value > 0 for value in replica_values(self.temperature)):
                raise ValueError(f"module.temperature={self.temperature} must be null or a finite number > 0")
            if self.data_loss.link is not Link.SOFTMAX:
                raise ValueError(f"module.temperature applies to module.loss=cross_entropy only, not to {self.loss}")
        smoothing = replica_values(self.label_smoothing)
        if not all(0.0 <= value < 1.0 for value in smoothing):
            raise ValueError(f"module.label_smoothing={self.label_smoothing} must lie in [0, 1)")
        if any(smoothing) and not self.data_loss.supports_label_smoothing:
            raise ValueError(
                f"module.label_smoothing applies to {' or '.join(LABEL_SMOOTHING_LOSSES)} only, not to {self.loss}"
            )
        for name in ("feature_decay", "classifier_decay", "bias_decay"):
            value = getattr(self, name)
            if not all(math.isfinite(item) and item >= 0 for item in replica_values(value)):
                raise ValueError(f"module.{name}={value} must be a finite number >= 0")

    @property
    def data_loss(self) -> Loss:
        """The :class:`~ufm_torch.objectives.losses.Loss` that ``loss`` names: D's value, residual and reduction."""
        return LOSSES[self.loss]

    @property
    def is_regularised(self) -> bool:
        """Whether any decay of any replica is non-zero (otherwise f = D)."""
        decays = (self.feature_decay, self.classifier_decay, self.bias_decay)
        return any(any(replica_values(decay)) for decay in decays)

    def targets(self, labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
        """Rows of ``Y`` (or of the smoothed ``Y_s`` for the cross-entropy), shape ``(n, C)``; ``(R, n, C)`` when s
        differs between replicas."""
        if isinstance(self.label_smoothing, float | int):
            return smoothed_targets(labels, num_classes, dtype, self.label_smoothing)
        smoothing = torch.tensor(self.label_smoothing, dtype=dtype, device=labels.device).view(-1, 1, 1)
        return one_hot_targets(labels, num_classes, dtype) * (1.0 - smoothing) + smoothing / num_classes

    @property
    def inverse_temperature(self) -> PerReplica:
        """1/τ: a number (1 without a temperature), or a tuple of one per replica when τ differs between them."""
        if self.temperature is None:
            return 1.0
        if isinstance(self.temperature, float | int):
            return 1.0 / self.temperature
        return tuple(1.0 / value for value in self.temperature)

    def inverse_temperature_of(self, logits: Tensor) -> float | Tensor:
        """1/τ to multiply ``logits`` ``(R, n, C)`` with: a number when every replica shares τ, else a tensor
        ``(R, 1, 1)`` of ``logits``' dtype and device (:func:`replica_tensor`)."""
        return replica_tensor(self.inverse_temperature, logits, trailing=2)

    def data_term(self, logits: Tensor, labels: Tensor) -> Tensor:
        """``D(Z/τ)`` per replica from the logits Z ``(..., n, C)`` (τ = 1 without a temperature; ``(R, n, C)``
        when τ differs between replicas)."""
        if self.temperature is not None:
            logits = logits * self.inverse_temperature_of(logits)
        return self.data_loss.value(logits, labels, replica_tensor(self.label_smoothing, logits))

    def logit_residual(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``R = ∂D(Z/τ)/∂Z = (1/τ)·c(σ(Z/τ) − Y)``, shape ``(..., n, C)`` (module docstring; τ = 1 without a
        temperature; ``(R, n, C)`` when τ differs between replicas)."""
        if self.temperature is None:
            return self.data_loss.residual(logits, targets)
        scale = self.inverse_temperature_of(logits)
        return self.data_loss.residual(logits * scale, targets).mul_(scale)

    def penalty(self, features: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``λ_W/2‖W‖²_F + λ_H/2‖H‖²_F + λ_b/2‖b‖²`` per replica (only the terms of some non-zero decay are
        computed)."""
        total = weight.new_zeros(weight.shape[:-2])
        if any(replica_values(self.classifier_decay)):
            total = total + 0.5 * replica_tensor(self.classifier_decay, weight) * weight.square().sum(dim=(-1, -2))
        if any(replica_values(self.feature_decay)):
            total = total + 0.5 * replica_tensor(self.feature_decay, features) * features.square().sum(dim=(-1, -2))
        if any(replica_values(self.bias_decay)) and bias is not None:
            total = total + 0.5 * replica_tensor(self.bias_decay, bias) * bias.square().sum(dim=-1)
        return total

    def value(self, features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:
        """``f(W, H, b)`` per replica, shape ``(...)``."""
        logits = features @ weight.transpose(-1, -2)
        if bias is not None:
            logits = logits + bias.unsqueeze(-2)
        return self.data_term(logits, labels) + self.penalty(features, weight, bias)

    def gradients(
        self, features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Closed-form ``(∇_features, ∇_W, ∇_b)`` of f (module docstring); ``∇_b`` is None without a bias."""
        logits = features @ weight.transpose(-1, -2)
        if bias is not None:
            logits = logits + bias.unsqueeze(-2)
        targets = self.targets(labels, weight.shape[-2], logits.dtype)
        rows = self.logit_residual(logits, targets)
        grad_features = rows @ weight + replica_tensor(self.feature_decay, features, trailing=2) * features
        grad_weight = rows.transpose(-1, -2) @ features + replica_tensor(self.classifier_decay, weight, 2) * weight
        grad_bias = None if bias is None else rows.sum(dim=-2) + replica_tensor(self.bias_decay, bias, 1) * bias
        return grad_features, grad_weight, grad_bias


PAPER_OBJECTIVE = Objective()
"""The paper's risk ``½‖WH + b1ᵀ − Y‖²_F`` without decay (Mixon et al., Section 2)."""
