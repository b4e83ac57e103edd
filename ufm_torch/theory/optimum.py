"""The global optimum of the regularised UFM: a convex reduction solved to float64 accuracy, closed forms, metrics.

Problem (row convention of :mod:`ufm_torch.objectives.ufm`: ``features`` ``(..., n, p)`` is ``Hᵀ``, ``weight``
``(..., C, p)`` is ``W``, ``bias`` ``(..., C)`` is ``b``; leading dimensions are replicas)::

    f(W, H, b) = D(W, H, b) + λ_W/2 ‖W‖²_F + λ_H/2 ‖H‖²_F + λ_b/2 ‖b‖²

with the data term ``D`` of :data:`ufm_torch.objectives.losses.LOSSES` (``n = Σ_k n_k`` samples, ``n_k`` in class k):

- ``sum_squared``: ``½‖WH + b1ᵀ − Y‖²_F`` (the paper's risk, a sum over samples);
- ``mean_squared``: ``(1/n) Σ_i ½‖Wh_i + b − y_i‖²`` (the sum divided by n, as the codebase's backbone loss);
- ``cross_entropy``: ``(1/n) Σ_i CE(Wh_i + b, y_i)`` with label smoothing ``s ∈ [0, 1)``: the target of class k is
  ``q_k = (1 − s)e_k + (s/C)1``, ``CE(z, q) = logsumexp(z) − qᵀz`` (``torch.nn.functional.cross_entropy``).

No bias means ``b ≡ 0`` (λ_b is then ignored); with a bias, ``λ_b = 0`` leaves it unregularised.

**Convex reduction** (valid for λ_W, λ_H > 0 and p ≥ C). (i) ℓ is convex in ``h`` and ``‖·‖²`` strictly convex,
so replacing the features of class k by their mean ``h_k`` never increases f (Jensen) and strictly lowers it
unless they are equal: every minimiser is collapsed, and ``‖H‖²_F = Σ_k n_k‖h_k‖² = ‖M D‖²_F`` with
``M = [h_1 … h_C]`` (p × C) and ``D = diag(√n_k)``. (ii) For a C × C matrix ``X``,
``min {λ_W/2‖W‖² + λ_H/2‖M'‖² : WM' = X} = √(λ_Wλ_H)‖X‖_*`` (AM–GM on the singular values; attainable because
p ≥ C ≥ rank X). With ``Z = WM`` (column k: the logits of class k minus b) and ``X = Z D``::

    f* = min_{X, b}  Σ_k w_k ℓ(x_k/√n_k + b, e_k) + τ‖X‖_* + λ_b/2 ‖b‖²,   τ = √(λ_Wλ_H),

with ``w_k = n_k/n`` for the mean-reduced losses and ``w_k = n_k`` for ``sum_squared``. Equivalently
``f_sum(W, H, b; λ_W, λ_H, λ_b) = n · f_mean(W, H, b; λ_W/n, λ_H/n, λ_b/n)``: same minimisers, ``f*`` times n.
The reduced problem is convex; :func:`solve_optimum` solves it by FISTA with gradient restart (O'Donoghue and
Candès 2015), whose proximal step for ``τ‖X‖_*`` is singular-value soft-thresholding.

**The optimum's Grams.** With ``X* = UΣVᵀ`` every cheapest factorisation is, up to an orthogonal ``R`` (p × C,
``RᵀR = I``), ``W = (λ_H/λ_W)^{1/4} UΣ^{1/2}Rᵀ`` and ``M' = MD = (λ_W/λ_H)^{1/4} RΣ^{1/2}Vᵀ``, hence

- ``(WWᵀ)* = √(λ_H/λ_W) (X*X*ᵀ)^{1/2} = √(λ_H/λ_W) UΣUᵀ``;
- ``(MᵀM)* = √(λ_W/λ_H) D⁻¹(X*ᵀX*)^{1/2}D⁻¹ = √(λ_W/λ_H) D⁻¹VΣVᵀD⁻¹`` (the Gram of the class means).

References: Zhu et al. 2021, "A geometric analysis of neural collapse with unconstrained features"; Tirer and Bruna
2022, "Extended unconstrained features model for exploring deep neural collapse"; Zhou et al. 2022, "On the
optimization landscape of neural collapse under MSE loss"; Dang et al. 2023, "Neural collapse in deep linear
networks: from balanced to imbalanced data"; Hong and Ling 2023, "Neural collapse for unconstrained feature model
under cross-entropy loss with imbalanced data".
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ufm_torch.metrics.tags import OPTIMUM_TAGS
from ufm_torch.objectives.losses import LABEL_SMOOTHING_LOSSES, LOSSES, Link, Loss, one_hot_targets

DTYPE = torch.float64
ZERO_SINGULAR_VALUE = 1e-12  # singular values of X* below this times max_k √n_k are rounding at a threshold: 0


@dataclass(frozen=True)
class UFMProblem:
    """One regularised UFM: loss (a name of :data:`~ufm_torch.objectives.losses.LOSSES`), class sizes ``n_k``,
    feature dimension p and the weight decays.

    ``lambda_bias`` is ignored when ``bias`` is False; ``label_smoothing`` applies to the losses that support it
    (``cross_entropy``).
    """

    loss: str
    class_counts: tuple[int, ...]
    feature_dim: int
    lambda_weight: float
    lambda_features: float
    lambda_bias: float = 0.0
    bias: bool = True
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {tuple(LOSSES)}, got {self.loss!r}")
        if len(self.class_counts) < 2 or min(self.class_counts) < 1:
            raise ValueError(f"need at least 2 classes, each with a sample; got class_counts {self.class_counts}")
        if self.feature_dim < len(self.class_counts):
            raise ValueError(
                f"the global-optimum oracle needs p ≥ C, got feature_dim p = {self.feature_dim} < "
                f"C = {len(self.class_counts)} classes"
            )
        if not (self.lambda_weight > 0 and self.lambda_features > 0):
            raise ValueError(
                f"the oracle needs λ_W > 0 and λ_H > 0, got {self.lambda_weight} and {self.lambda_features}"
            )
        if self.lambda_bias < 0:
            raise ValueError(f"λ_b must be ≥ 0, got {self.lambda_bias}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.label_smoothing > 0 and not self.data_loss.supports_label_smoothing:
            raise ValueError(
                f"label smoothing applies to {' or '.join(LABEL_SMOOTHING_LOSSES)} only, not to {self.loss}"
            )

    @classmethod
    def from_labels(cls, labels: Tensor, num_classes: int, **settings: object) -> UFMProblem:
        """The problem whose class sizes are those of ``labels`` (integers in ``[0, C)``)."""
        counts = torch.bincount(labels.reshape(-1), minlength=num_classes)
        return cls(class_counts=tuple(int(count) for count in counts), **settings)  # type: ignore[arg-type]

    @property
    def data_loss(self) -> Loss:
        """The :class:`~ufm_torch.objectives.losses.Loss` that ``loss`` names."""
        return LOSSES[self.loss]

    @property
    def num_classes(self) -> int:
        """C."""
        return len(self.class_counts)

    @property
    def num_samples(self) -> int:
        """n = Σ_k n_k."""
        return sum(self.class_counts)

    @property
    def effective_lambda_bias(self) -> float:
        """λ_b, or 0 without a bias."""
        return self.lambda_bias if self.bias else 0.0

    @property
    def bias_shift_invariant(self) -> bool:
        """Whether the optimal biases form a line ``b* + t1``: a shift-invariant loss (cross-entropy), a bias,
        ``λ_b = 0``.

        Cross-entropy is invariant under ``z ↦ z + t1`` (softmax, and ``1ᵀq_k = 1``), so then nothing fixes t.
        """
        return self.data_loss.shift_invariant and self.bias and self.lambda_bias == 0

    def class_major_labels(self) -> Tensor:
        """Labels ``0…0 1…1 …`` with ``n_k`` copies of k."""
        return torch.repeat_interleave(torch.arange(self.num_classes), torch.tensor(self.class_counts))

    def check_labels(self, labels: Tensor) -> None:
        """Raise ``ValueError`` unless ``labels`` has this problem's class sizes."""
        counts = torch.bincount(labels.reshape(-1).cpu(), minlength=self.num_classes)
        if counts.numel() != self.num_classes or tuple(int(c) for c in counts) != self.class_counts:
            raise ValueError(f"labels have class sizes {tuple(counts.tolist())}, the problem {self.class_counts}")


@dataclass(frozen=True)
class UFMOptimum:
    """The global optimum of a :class:`UFMProblem` (:func:`solve_optimum`); tensors are float64 on the CPU.

    ``value`` is f* of the original problem; ``logit_matrix`` is ``Z* = W*M*`` (C × C, column k = logits of class k
    minus ``b*``); ``bias`` is ``b*`` (zeros without a bias; one point of the line ``b* + t1`` when
    ``problem.bias_shift_invariant``); ``classifier_gram`` is ``(WWᵀ)*``, ``feature_gram`` is ``(MᵀM)*``, the Gram
    of the class means; ``weight_is_zero`` says the minimiser is ``W = H = 0`` (``X* = 0``: the solver's
    thresholding removed every singular value, or left only rounding, below ``ZERO_SINGULAR_VALUE · max_k √n_k``,
    which is dropped). ``residual`` is the relative fixed-point residual
    ``‖x⁺ − y‖/(1 + ‖x⁺‖)`` of the last proximal step (in the solver's metric), reached in ``iterations`` steps.
    """

    problem: UFMProblem
    value: float
    logit_matrix: Tensor
    bias: Tensor
    classifier_gram: Tensor
    feature_gram: Tensor
    weight_is_zero: bool
    residual: float
    iterations: int
    converged: bool

    def factorisation(self, labels: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(features, weight, bias)`` of one global minimiser, in the row convention.

        ``W = (λ_H/λ_W)^{1/4} UΣ^{1/2}Rᵀ``, class means ``M = (λ_W/λ_H)^{1/4} RΣ^{1/2}VᵀD⁻¹`` with ``X* = UΣVᵀ``
        and ``R`` the first C columns of ``I_p``; sample i gets the mean of its class. ``labels`` defaults to
        :meth:`UFMProblem.class_major_labels`.
        """
        problem = self.problem
        labels = problem.class_major_labels() if labels is None else labels
        problem.check_labels(labels)
        sqrt_counts = torch.tensor(problem.class_counts, dtype=DTYPE).sqrt()
        left, singular_values, right_t = torch.linalg.svd(self.logit_matrix * sqrt_counts)
        ratio = (problem.lambda_features / problem.lambda_weight) ** 0.25
        root = singular_values.sqrt()
        embed = torch.eye(problem.feature_dim, problem.num_classes, dtype=DTYPE)
        weight = ratio * (left * root) @ embed.T
        class_means = (embed @ (root.unsqueeze(-1) * right_t) / (ratio * sqrt_counts)).T
        return class_means[labels.cpu()], weight, self.bias.clone()


class _Reduced(NamedTuple):
    """The reduced problem's data: weights w_k, √n_k, targets q_k (columns), τ, λ_b, the loss (its link and
    curvature), whether there is a bias, and the bias scale σ."""

    weights: Tensor
    sqrt_counts: Tensor
    targets: Tensor
    tau: float
    lambda_bias: float
    loss: Loss
    bias: bool
    bias_scale: float


def _reduced_problem(problem: UFMProblem) -> _Reduced:
    """Data of the reduced problem ``Σ_k w_k ℓ(x_k/√n_k + b, e_k) + τ‖X‖_* + λ_b/2‖b‖²`` (module docstring).

    The bias is optimised as ``b = σc``; ``σ² = (Σw/n)/(Σw + λ_b)`` equalises the curvature bounds of the X- and
    c-blocks (``w_k/n_k = Σw/n`` and ``Σ_k w_k + λ_b``), a fixed diagonal metric for the proximal steps.
    """
    counts = torch.tensor(problem.class_counts, dtype=DTYPE)
    n = problem.num_samples
    weights = counts / n if problem.data_loss.mean_reduced else counts
    s, c = problem.label_smoothing, problem.num_classes
    targets = (1.0 - s) * torch.eye(c, dtype=DTYPE) + s / c
    lambda_bias = problem.effective_lambda_bias
    total = float(weights.sum())
    bias_scale = math.sqrt((total / n) / (total + lambda_bias))
    tau = math.sqrt(problem.lambda_weight * problem.lambda_features)
    return _Reduced(weights, counts.sqrt(), targets, tau, lambda_bias, problem.data_loss, problem.bias, bias_scale)


def _smooth_part(reduced: _Reduced, scaled_x: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Value and gradients (in X and in b) of ``Σ_k w_k ℓ(x_k/√n_k + b, e_k) + λ_b/2‖b‖²``: ``ℓ = ½‖z − e_k‖²`` for a
    loss of the identity link, ``logsumexp(z) − q_kᵀz`` for the softmax link."""
    logits = scaled_x / reduced.sqrt_counts + bias.unsqueeze(-1)
    if reduced.loss.link is Link.IDENTITY:
        error = logits - torch.eye(logits.shape[-1], dtype=DTYPE)
        value = 0.5 * (reduced.weights * error.square().sum(0)).sum()
        grad_logits = error * reduced.weights
    else:
        log_norm = torch.logsumexp(logits, dim=0)
        value = (reduced.weights * (log_norm - (reduced.targets * logits).sum(0))).sum()
        grad_logits = (torch.exp(logits - log_norm) - reduced.targets) * reduced.weights
    value = value + 0.5 * reduced.lambda_bias * bias.square().sum()
    return value, grad_logits / reduced.sqrt_counts, grad_logits.sum(1) + reduced.lambda_bias * bias


def _lipschitz_constant(reduced: _Reduced) -> float:
    """A bound on the smooth part's curvature in the metric ``(X, c)``, ``b = σc``.

    The Hessian of ℓ in the logits is ``≤ κI``, κ the loss's
    :attr:`~ufm_torch.objectives.losses.Loss.logit_curvature` (1 for squared error, ½ for cross-entropy). Row j of
    the logits depends on row j of ``(X, c)`` through ``a_k = (e_k/√n_k, σ)``, so the bound is
    ``λ_max(κ Σ_k w_k a_k a_kᵀ + λ_bσ² e_{C+1}e_{C+1}ᵀ)``.
    """
    curvature = reduced.loss.logit_curvature
    if not reduced.bias:
        return curvature * float((reduced.weights / reduced.sqrt_counts.square()).max())
    c = reduced.weights.numel()
    rows = torch.cat([torch.diag(1.0 / reduced.sqrt_counts), torch.full((1, c), reduced.bias_scale, dtype=DTYPE)])
    matrix = curvature * (rows * reduced.weights) @ rows.T
    matrix[-1, -1] += reduced.lambda_bias * reduced.bias_scale**2
    return float(torch.linalg.eigvalsh(matrix).max())


def _shrink_singular_values(matrix: Tensor, threshold: float) -> Tensor:
    """``prox_{threshold‖·‖_*}``: singular-value soft-thresholding ``U(Σ − threshold)₊Vᵀ``."""
    left, singular_values, right_t = torch.linalg.svd(matrix)
    return (left * (singular_values - threshold).clamp_min(0.0)) @ right_t


def solve_optimum(problem: UFMProblem, tolerance: float = 1e-13, max_iterations: int = 200_000) -> UFMOptimum:
    """The global optimum of ``problem``: FISTA with restart on the convex reduction (module docstring).

    Variables ``X = ZD`` (C × C) and, with a bias, ``c = b/σ``; smooth part ``Σ_k w_k ℓ(x_k/√n_k + b, e_k) +
    λ_b/2‖b‖²`` with the constant step ``1/L`` of :func:`_lipschitz_constant`, proximal step for ``τ‖X‖_*`` by
    singular-value soft-thresholding, momentum reset whenever ``⟨y − x⁺, x⁺ − x⟩ > 0`` (gradient restart). It stops
    when the fixed-point residual ``‖x⁺ − y‖/(1 + ‖x⁺‖)`` is below ``tolerance`` and warns (``RuntimeWarning``,
    ``converged=False``) after ``max_iterations`` steps otherwise: convergence is linear except at a threshold of
    the regularisation (for example β = 1/C for balanced cross-entropy), where the optimum is degenerate, and slow
    for cross-entropy with tiny λ (large logits, flat softmax: about 3·10⁴ steps, 3 s, at λ_W = λ_H = 10⁻⁶).
    """
    reduced = _reduced_problem(problem)
    c, sigma = problem.num_classes, reduced.bias_scale
    step = 1.0 / _lipschitz_constant(reduced)
    threshold = step * reduced.tau
    x_now, c_now = torch.zeros(c, c, dtype=DTYPE), torch.zeros(c, dtype=DTYPE)
    x_look, c_look = x_now, c_now
    momentum, residual, iterations, converged = 1.0, math.inf, 0, False
    while iterations < max_iterations:
        iterations += 1
        _, grad_x, grad_b = _smooth_part(reduced, x_look, sigma * c_look)
        x_next = _shrink_singular_values(x_look - step * grad_x, threshold)
        c_next = c_look - step * sigma * grad_b if problem.bias else c_look
        move_x, move_c = x_next - x_look, c_next - c_look
        size = math.sqrt(float(x_next.square().sum() + c_next.square().sum()))
        residual = math.sqrt(float(move_x.square().sum() + move_c.square().sum())) / (1.0 + size)
        if residual <= tolerance:
            x_now, c_now, converged = x_next, c_next, True
            break
        if float((move_x * (x_next - x_now)).sum() + (move_c * (c_next - c_now)).sum()) < 0:
            momentum, x_look, c_look = 1.0, x_next, c_next  # ⟨y − x⁺, x⁺ − x⟩ > 0: restart
        else:
            following = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * momentum**2))
            extrapolation = (momentum - 1.0) / following
            x_look = x_next + extrapolation * (x_next - x_now)
            c_look = c_next + extrapolation * (c_next - c_now)
            momentum = following
        x_now, c_now = x_next, c_next
    if not converged:
        warnings.warn(
            f"solve_optimum stopped after {iterations} steps at fixed-point residual {residual:.2e} > {tolerance:.0e}",
            RuntimeWarning,
            stacklevel=2,
        )
    bias = sigma * c_now if problem.bias else torch.zeros(c, dtype=DTYPE)
    left, singular_values, right_t = torch.linalg.svd(x_now)
    singular_values = torch.where(singular_values > ZERO_SINGULAR_VALUE * reduced.sqrt_counts.max(), singular_values, 0)
    x_now = (left * singular_values) @ right_t
    smooth_value, _, _ = _smooth_part(reduced, x_now, bias)
    ratio = math.sqrt(problem.lambda_features / problem.lambda_weight)
    inverse_sqrt = 1.0 / reduced.sqrt_counts
    right = right_t.T * inverse_sqrt.unsqueeze(-1)
    return UFMOptimum(
        problem=problem,
        value=float(smooth_value + reduced.tau * singular_values.sum()),
        logit_matrix=x_now * inverse_sqrt,
        bias=bias,
        classifier_gram=ratio * (left * singular_values) @ left.T,
        feature_gram=(right * singular_values) @ right.T / ratio,
        weight_is_zero=not bool(singular_values.any()),
        residual=residual,
        iterations=iterations,
        converged=converged,
    )


# ---------------------------------------------------------------------------------------------- original objective


def ufm_objective(features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, problem: UFMProblem) -> Tensor:
    """``f(W, H, b) = D + λ_W/2‖W‖²_F + λ_H/2‖H‖²_F + λ_b/2‖b‖²`` per replica (module docstring), shape ``(...)``.

    ``features`` ``(..., n, p)``, ``weight`` ``(..., C, p)``, ``bias`` ``(..., C)`` or None (``b = 0``); the data
    term is the value of ``problem.data_loss`` (:mod:`ufm_torch.objectives.losses`), the cross-entropy with label
    smoothing ``problem.label_smoothing`` (``torch.nn.functional.cross_entropy``'s convention).
    """
    if weight.shape[-2] != problem.num_classes:
        raise ValueError(f"weight has {weight.shape[-2]} rows, the problem {problem.num_classes} classes")
    logits = features @ weight.transpose(-1, -2)
    if bias is not None:
        logits = logits + bias.unsqueeze(-2)
    data = problem.data_loss.value(logits, labels, problem.label_smoothing)
    penalty = 0.5 * problem.lambda_weight * weight.square().sum((-1, -2))
    penalty = penalty + 0.5 * problem.lambda_features * features.square().sum((-1, -2))
    if bias is not None:
        penalty = penalty + 0.5 * problem.effective_lambda_bias * bias.square().sum(-1)
    return data + penalty


# ------------------------------------------------------------------------------------------------------ the metrics


def class_mean_gram(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Gram ``MᵀM`` of the class means ``h_k = (1/n_k) Σ_{y_i = k} h_i``, shape ``(..., C, C)``."""
    indicator = one_hot_targets(labels, num_classes, features.dtype)
    means = indicator.transpose(-1, -2) @ features / indicator.sum(-2).unsqueeze(-1)
    return means @ means.transpose(-1, -2)


def _gram_error(gram: Tensor, optimal: Tensor, absolute: bool) -> Tensor:
    """``‖G − G*‖_F/‖G*‖_F``, or ``‖G‖_F`` when ``absolute`` (the optimum is 0)."""
    if absolute:
        return torch.linalg.matrix_norm(gram)
    optimal = optimal.to(gram)
    return torch.linalg.matrix_norm(gram - optimal) / torch.linalg.matrix_norm(optimal)


def loss_gap(features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, optimum: UFMOptimum) -> Tensor:
    """``optimum/loss_gap``: ``f(W, H, b) − f*`` (≥ 0 up to the solver's accuracy), per replica."""
    optimum.problem.check_labels(labels)
    return ufm_objective(features, weight, bias, labels, optimum.problem) - optimum.value


def classifier_gram_error(weight: Tensor, optimum: UFMOptimum) -> Tensor:
    """``optimum/classifier_gram``: ``‖WWᵀ − (WWᵀ)*‖_F / ‖(WWᵀ)*‖_F``; ``‖WWᵀ‖_F`` when the optimum is ``W = 0``.

    ``(WWᵀ)* = √(λ_H/λ_W)(X*X*ᵀ)^{1/2}`` (module docstring); the measure is invariant under ``W ↦ WQ``, Q orthogonal.
    """
    gram = weight @ weight.transpose(-1, -2)
    return _gram_error(gram, optimum.classifier_gram, optimum.weight_is_zero)


def feature_gram_error(features: Tensor, labels: Tensor, optimum: UFMOptimum) -> Tensor:
    """``optimum/feature_gram``: ``‖MᵀM − (MᵀM)*‖_F / ‖(MᵀM)*‖_F`` for the class means M; absolute when ``W* = 0``.

    ``(MᵀM)* = √(λ_W/λ_H) D⁻¹(X*ᵀX*)^{1/2}D⁻¹``, ``D = diag(√n_k)``. Only the class means enter: within-class
    spread shows in ``optimum/loss_gap``, not here.
    """
    optimum.problem.check_labels(labels)
    gram = class_mean_gram(features, labels, optimum.problem.num_classes)
    return _gram_error(gram, optimum.feature_gram, optimum.weight_is_zero)


def bias_error(bias: Tensor | None, optimum: UFMOptimum) -> Tensor:
    """``optimum/bias``: the distance from ``b`` to the set of optimal biases.

    The set is the point ``b*`` when the reduced objective is strictly convex in b (``λ_b > 0``, or no bias: b* = 0)
    and for the squared losses (the logits are then unique and so, in every case the closed forms cover, is b*;
    the oracle's b* is taken as the point). For cross-entropy with an unregularised bias it is the line
    ``{b* + t1}``, and the distance is ``‖(I − 11ᵀ/C)(b − b*)‖₂``. ``bias=None`` means ``b = 0``.
    """
    target = optimum.bias
    if bias is None:
        bias = torch.zeros_like(target)
    difference = bias - target.to(bias)
    if optimum.problem.bias_shift_invariant:
        difference = difference - difference.mean(-1, keepdim=True)
    return torch.linalg.vector_norm(difference, dim=-1)


def optimum_metrics(
    features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, optimum: UFMOptimum
) -> dict[str, Tensor]:
    """The four distances to the global optimum, keyed by :data:`OPTIMUM_TAGS`, each of the replica shape."""
    if bias is None:
        bias = weight.new_zeros(weight.shape[:-1])
    values = (
        loss_gap(features, weight, bias, labels, optimum),
        classifier_gram_error(weight, optimum),
        feature_gram_error(features, labels, optimum),
        bias_error(bias, optimum),
    )
    return dict(zip(OPTIMUM_TAGS, values, strict=True))


# ---------------------------------------------------------------------------------------------------- closed forms


class ClosedFormOptimum(NamedTuple):
    """A closed-form optimum: ``(WWᵀ)*``, ``(MᵀM)*`` (class means), ``b*`` and ``f*``."""

    classifier_gram: Tensor
    feature_gram: Tensor
    bias: Tensor
    value: float


class _Balanced(NamedTuple):
    """β = √(Nλ_Wλ_H), γ = √(Nλ_H/λ_W), λ_b of the mean-reduced problem, and f's factor (n or 1)."""

    beta: float
    gamma: float
    lambda_bias: float
    value_scale: float


def _squared_error_scale(loss: str, num_samples: float) -> float:
    """The factor between a squared-error problem and its mean-reduced form: n for a summed loss (its closed form
    is the mean's with every λ divided by n and f* times n, module docstring), 1 for a mean one. A loss that is not
    a squared error (its link is not the identity) has no closed form here: ``ValueError``."""
    data_loss = LOSSES.get(loss)
    if data_loss is None or data_loss.link is not Link.IDENTITY:
        squared = " or ".join(name for name, known in LOSSES.items() if known.link is Link.IDENTITY)
        raise ValueError(f"the squared-error closed forms take {squared}, got {loss!r}")
    return 1.0 if data_loss.mean_reduced else float(num_samples)


def _balanced(
    loss: str,
    num_classes: int,
    samples_per_class: int,
    lambda_weight: float,
    lambda_features: float,
    lambda_bias: float,
) -> _Balanced:
    """Constants of a balanced problem, N samples per class; ``sum_squared`` maps to the mean with λ/n, f times n."""
    scale = _squared_error_scale(loss, num_classes * samples_per_class)
    lw, lh = lambda_weight / scale, lambda_features / scale
    beta = math.sqrt(samples_per_class * lw * lh)
    return _Balanced(beta, math.sqrt(samples_per_class * lh / lw), lambda_bias / scale, scale)


def _symmetric_optimum(
    num_classes: int, centred: float, mean: float, gamma: float, bias_level: float, value: float
) -> ClosedFormOptimum:
    """``Z = centred·(I − J) + mean·J`` (symmetric PSD), ``WWᵀ = γZ``, ``MᵀM = Z/γ``, ``b = bias_level·1``."""
    eye = torch.eye(num_classes, dtype=DTYPE)
    average = torch.full((num_classes, num_classes), 1.0 / num_classes, dtype=DTYPE)
    logits = centred * (eye - average) + mean * average
    bias = torch.full((num_classes,), bias_level, dtype=DTYPE)
    return ClosedFormOptimum(gamma * logits, logits / gamma, bias, value)


def mse_optimum_without_bias(
    num_classes: int,
    samples_per_class: int,
    lambda_weight: float,
    lambda_features: float,
    loss: str = "mean_squared",
) -> ClosedFormOptimum:
    """Balanced MSE without bias (Tirer and Bruna 2022): ``WWᵀ = γ(1 − Cβ)₊ I``, ``MᵀM = WWᵀ/γ²``.

    ``mean_squared``: β = √(Nλ_Wλ_H), γ = √(Nλ_H/λ_W), N samples per class; ``f* = Cβ − C²β²/2`` if Cβ < 1, else ½.
    ``sum_squared``: the same with λ/n (n = CN), i.e. ``Cβ → √(λ_Wλ_H/N)`` and γ unchanged, and f* times n.
    """
    constants = _balanced(loss, num_classes, samples_per_class, lambda_weight, lambda_features, 0.0)
    c_beta = num_classes * constants.beta
    scale = max(1.0 - c_beta, 0.0)
    value = (c_beta - 0.5 * c_beta**2) if c_beta < 1 else 0.5
    optimum = _symmetric_optimum(num_classes, scale, scale, constants.gamma, 0.0, value * constants.value_scale)
    return optimum._replace(bias=torch.zeros(num_classes, dtype=DTYPE))


def mse_optimum_with_free_bias(
    num_classes: int,
    samples_per_class: int,
    lambda_weight: float,
    lambda_features: float,
    loss: str = "mean_squared",
) -> ClosedFormOptimum:
    """Balanced MSE, unregularised bias (Zhou et al. 2022): ``WWᵀ = γ(1 − Cβ)₊(I − J)``, ``b = 1/C``, J = 11ᵀ/C.

    ``mean_squared``: ``f* = (C − 1)(β − Cβ²/2)`` if Cβ < 1, else ``(C − 1)/(2C)``; ``sum_squared`` as in
    :func:`mse_optimum_without_bias` (λ/n, f* times n; b = 1/C unchanged).
    """
    constants = _balanced(loss, num_classes, samples_per_class, lambda_weight, lambda_features, 0.0)
    beta, c = constants.beta, num_classes
    centred = max(1.0 - c * beta, 0.0)
    value = (c - 1) * (beta - 0.5 * c * beta**2) if c * beta < 1 else (c - 1) / (2 * c)
    return _symmetric_optimum(c, centred, 0.0, constants.gamma, 1.0 / c, value * constants.value_scale)


def mse_optimum_with_regularised_bias(
    num_classes: int,
    samples_per_class: int,
    lambda_weight: float,
    lambda_features: float,
    lambda_bias: float,
    loss: str = "mean_squared",
) -> ClosedFormOptimum:
    """Balanced MSE with ``λ_b > 0``: ``WWᵀ = γ[(1 − Cβ)₊(I − J) + (1 − Cβ(1 + 1/λ_b))₊ J]``.

    ``mean_squared`` (derived by symmetry, ``Z = a(I − J) + cJ``, ``b = t1``): if ``β ≥ λ_b/(C(1 + λ_b))`` then
    ``c = 0``, ``b = 1/(C(1 + λ_b))``, ``f* = A + λ_b/(2C(1 + λ_b))``; otherwise ``c = 1 − Cβ(1 + 1/λ_b) > 0``,
    ``b = β/λ_b``, ``f* = A + β − (Cβ²/2)(1 + 1/λ_b)``; ``A = (C − 1)(β − Cβ²/2)`` if Cβ < 1, else
    ``(C − 1)/(2C)``. The ``(·)₊`` on ``1 − Cβ`` matters in the first case, which includes Cβ ≥ 1 (then
    ``W = 0`` but ``b ≠ 0``). ``sum_squared``: λ_W, λ_H, λ_b divided by n = CN, f* times n; so the threshold reads
    ``√(Nλ_Wλ_H) ≥ Nλ_b/(CN + λ_b)`` and the first case's bias ``N/(CN + λ_b)``. MSE with a free bias is λ_b → 0.
    """
    if lambda_bias <= 0:
        raise ValueError(f"λ_b must be > 0 here (mse_optimum_with_free_bias has λ_b = 0), got {lambda_bias}")
    constants = _balanced(loss, num_classes, samples_per_class, lambda_weight, lambda_features, lambda_bias)
    beta, c, lb = constants.beta, num_classes, constants.lambda_bias
    centred = max(1.0 - c * beta, 0.0)
    centred_value = (c - 1) * (beta - 0.5 * c * beta**2) if c * beta < 1 else (c - 1) / (2 * c)
    if beta >= lb / (c * (1 + lb)):
        mean, level, mean_value = 0.0, 1.0 / (c * (1 + lb)), lb / (2 * c * (1 + lb))
    else:
        mean, level = 1.0 - c * beta * (1 + 1 / lb), beta / lb
        mean_value = beta - 0.5 * c * beta**2 * (1 + 1 / lb)
    value = (centred_value + mean_value) * constants.value_scale
    return _symmetric_optimum(c, centred, mean, constants.gamma, level, value)


def mse_optimum_imbalanced_without_bias(
    class_counts: tuple[int, ...],
    lambda_weight: float,
    lambda_features: float,
    loss: str = "mean_squared",
) -> ClosedFormOptimum:
    """MSE without bias, class sizes ``n_k`` (Dang et al. 2023): ``WWᵀ = diag((√(λ_H n_k/λ_W) − nλ_H)₊)``.

    ``mean_squared``: n is the TOTAL number of samples. Derivation: ``Σ_k (n_k/n)½‖x_k/√n_k − e_k‖² =
    ‖X − D‖²/(2n)``, so ``X* = prox_{nτ‖·‖_*}(D) = diag((√n_k − nτ)₊)``, τ = √(λ_Wλ_H); then
    ``WWᵀ = √(λ_H/λ_W)X*``, ``MᵀM = √(λ_W/λ_H) diag((√n_k − nτ)₊/n_k)``,
    ``f* = Σ_k [min(√n_k, nτ)²/(2n) + τ(√n_k − nτ)₊]``. Balanced, it is Tirer and Bruna's γ(1 − Cβ)₊.
    ``sum_squared``: λ/n, so ``WWᵀ = diag((√(λ_H n_k/λ_W) − λ_H)₊)`` (n drops out), f* times n.
    """
    counts = torch.tensor(class_counts, dtype=DTYPE)
    n = float(counts.sum())
    scale = _squared_error_scale(loss, n)
    lw, lh = lambda_weight / scale, lambda_features / scale
    tau = math.sqrt(lw * lh)
    singular_values = (counts.sqrt() - n * tau).clamp_min(0.0)
    value = float((counts.sqrt().clamp_max(n * tau).square() / (2 * n)).sum())
    value += tau * float(singular_values.sum())
    ratio = math.sqrt(lh / lw)
    return ClosedFormOptimum(
        torch.diag(ratio * singular_values),
        torch.diag(singular_values / counts / ratio),
        torch.zeros(len(class_counts), dtype=DTYPE),
        value * scale,
    )


def cross_entropy_optimum(
    num_classes: int,
    samples_per_class: int,
    lambda_weight: float,
    lambda_features: float,
    label_smoothing: float = 0.0,
) -> ClosedFormOptimum:
    """Balanced mean cross-entropy (Zhu et al. 2021): ``WWᵀ = γg*(I − J)`` if ``β < (1 − s)/C``, else ``W = H = 0``.

    β = √(Nλ_Wλ_H), γ = √(Nλ_H/λ_W), N per class. With ``Z = g(I − J)`` the loss of every class is
    ``log(e^g + C − 1) − g(1 − s + s/C)`` and the penalty ``β(C − 1)g``; setting the derivative to 0, the softmax
    probability of the true class is ``π = 1 − s(C − 1)/C − β(C − 1)`` and ``g* = log(π(C − 1)/(1 − π))``, positive
    iff ``β < (1 − s)/C``. For s = 0 this is Zhu et al.'s ``g* = log(1/β − (C − 1))`` (confirmed), with
    ``f* = −log(1 − (C − 1)β) + (C − 1)βg*``. Otherwise ``Z = 0`` and ``f* = log C``. ``MᵀM = WWᵀ/γ²``. The bias
    is ``b* = 0``: the unique optimum for λ_b > 0, and one point of the optimal line ``t1`` for λ_b = 0 (the
    result holds for any λ_b ≥ 0 and for no bias alike).
    """
    c, s = num_classes, label_smoothing
    beta = math.sqrt(samples_per_class * lambda_weight * lambda_features)
    gamma = math.sqrt(samples_per_class * lambda_features / lambda_weight)
    if beta < (1 - s) / c:
        probability = 1 - s * (c - 1) / c - beta * (c - 1)
        gain = math.log(probability * (c - 1) / (1 - probability))
        value = math.log(math.exp(gain) + c - 1) - gain * (1 - s + s / c) + beta * (c - 1) * gain
    else:
        gain, value = 0.0, math.log(c)
    return _symmetric_optimum(c, gain, 0.0, gamma, 0.0, value)
