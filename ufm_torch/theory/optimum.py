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
from collections.abc import Callable, Sequence
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
    def is_balanced(self) -> bool:
        """Whether every class has the same number of samples N."""
        return len(set(self.class_counts)) == 1

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

    @property
    def bias_shift_invariant(self) -> bool:
        """:attr:`UFMProblem.bias_shift_invariant` of the problem."""
        return self.problem.bias_shift_invariant

    def objective(self, features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:
        """f under the problem (:func:`ufm_objective`), per replica."""
        return ufm_objective(features, weight, bias, labels, self.problem)

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
    """The reduced problems' data, for G problems that share the loss, the class sizes and the bias: weights w_k and
    √n_k ``(C,)``, targets q_k (columns, ``(G, C, C)``), τ, λ_b and the bias scale σ ``(G,)``, the loss (its link
    and curvature) and whether there is a bias."""

    weights: Tensor
    sqrt_counts: Tensor
    targets: Tensor
    tau: Tensor
    lambda_bias: Tensor
    loss: Loss
    bias: bool
    bias_scale: Tensor

    def take(self, keep: Tensor) -> _Reduced:
        """The problems where ``keep`` (a boolean ``(G,)``) is true."""
        return self._replace(
            targets=self.targets[keep], tau=self.tau[keep], lambda_bias=self.lambda_bias[keep],
            bias_scale=self.bias_scale[keep],
        )  # fmt: skip


def _reduced_problems(problems: Sequence[UFMProblem]) -> _Reduced:
    """Data of the reduced problems ``Σ_k w_k ℓ(x_k/√n_k + b, e_k) + τ‖X‖_* + λ_b/2‖b‖²`` (module docstring).

    The bias is optimised as ``b = σc``; ``σ² = (Σw/n)/(Σw + λ_b)`` equalises the curvature bounds of the X- and
    c-blocks (``w_k/n_k = Σw/n`` and ``Σ_k w_k + λ_b``), a fixed diagonal metric for the proximal steps.
    """
    first = problems[0]
    counts = torch.tensor(first.class_counts, dtype=DTYPE)
    n, c = first.num_samples, first.num_classes
    weights = counts / n if first.data_loss.mean_reduced else counts
    smoothing = torch.tensor([problem.label_smoothing for problem in problems], dtype=DTYPE).view(-1, 1, 1)
    targets = (1.0 - smoothing) * torch.eye(c, dtype=DTYPE) + smoothing / c
    lambda_bias = torch.tensor([problem.effective_lambda_bias for problem in problems], dtype=DTYPE)
    total = float(weights.sum())
    bias_scale = ((total / n) / (total + lambda_bias)).sqrt()
    tau = torch.tensor([math.sqrt(p.lambda_weight * p.lambda_features) for p in problems], dtype=DTYPE)
    return _Reduced(weights, counts.sqrt(), targets, tau, lambda_bias, first.data_loss, first.bias, bias_scale)


def _smooth_part(reduced: _Reduced, scaled_x: Tensor, bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Value ``(G,)`` and gradients (in X and in b) of ``Σ_k w_k ℓ(x_k/√n_k + b, e_k) + λ_b/2‖b‖²``, for X
    ``(G, C, C)`` and b ``(G, C)``: ``ℓ = ½‖z − e_k‖²`` for a loss of the identity link, ``logsumexp(z) − q_kᵀz`` for
    the softmax link."""
    logits = scaled_x / reduced.sqrt_counts + bias.unsqueeze(-1)
    if reduced.loss.link is Link.IDENTITY:
        error = logits - torch.eye(logits.shape[-1], dtype=DTYPE)
        value = 0.5 * (reduced.weights * error.square().sum(-2)).sum(-1)
        grad_logits = error * reduced.weights
    else:
        log_norm = torch.logsumexp(logits, dim=-2, keepdim=True)
        value = (reduced.weights * (log_norm.squeeze(-2) - (reduced.targets * logits).sum(-2))).sum(-1)
        grad_logits = (torch.exp(logits - log_norm) - reduced.targets) * reduced.weights
    lambda_bias = reduced.lambda_bias.unsqueeze(-1)
    value = value + 0.5 * (lambda_bias * bias.square()).sum(-1)
    return value, grad_logits / reduced.sqrt_counts, grad_logits.sum(-1) + lambda_bias * bias


def _lipschitz_constants(reduced: _Reduced) -> Tensor:
    """A bound ``(G,)`` on each smooth part's curvature in the metric ``(X, c)``, ``b = σc``.

    The Hessian of ℓ in the logits is ``≤ κI``, κ the loss's
    :attr:`~ufm_torch.objectives.losses.Loss.logit_curvature` (1 for squared error, ½ for cross-entropy). Row j of
    the logits depends on row j of ``(X, c)`` through ``a_k = (e_k/√n_k, σ)``, so the bound is
    ``λ_max(κ Σ_k w_k a_k a_kᵀ + λ_bσ² e_{C+1}e_{C+1}ᵀ)``.
    """
    curvature = reduced.loss.logit_curvature
    if not reduced.bias:
        return curvature * (reduced.weights / reduced.sqrt_counts.square()).max().expand(reduced.tau.shape)
    c, count = reduced.weights.numel(), reduced.tau.numel()
    diagonal = torch.diag(1.0 / reduced.sqrt_counts).expand(count, c, c)
    rows = torch.cat([diagonal, reduced.bias_scale.view(-1, 1, 1).expand(count, 1, c)], dim=-2)
    matrix = curvature * (rows * reduced.weights) @ rows.transpose(-1, -2)
    matrix[:, -1, -1] += reduced.lambda_bias * reduced.bias_scale.square()
    return torch.linalg.eigvalsh(matrix).amax(-1)


def _shrink_singular_values(matrix: Tensor, threshold: Tensor) -> Tensor:
    """``prox_{threshold‖·‖_*}`` of each matrix ``(G, C, C)`` with its own ``threshold`` ``(G,)``: singular-value
    soft-thresholding ``U(Σ − threshold)₊Vᵀ``."""
    left, singular_values, right_t = torch.linalg.svd(matrix)
    return (left * (singular_values - threshold.unsqueeze(-1)).clamp_min(0.0).unsqueeze(-2)) @ right_t


class _Iterates(NamedTuple):
    """FISTA's state for the problems still running: the iterate ``(X, c)``, the extrapolated point and the momentum
    ``t`` of each."""

    x_now: Tensor
    c_now: Tensor
    x_look: Tensor
    c_look: Tensor
    momentum: Tensor

    def take(self, keep: Tensor) -> _Iterates:
        """The problems where ``keep`` is true."""
        return _Iterates(*(field[keep] for field in self))


def solve_optimum(problem: UFMProblem, tolerance: float = 1e-13, max_iterations: int = 200_000) -> UFMOptimum:
    """The global optimum of ``problem``: FISTA with restart on the convex reduction (module docstring), by
    :func:`solve_optima_batched` on a batch of one."""
    return solve_optima_batched([problem], tolerance, max_iterations)[0]


def solve_optima_batched(
    problems: Sequence[UFMProblem], tolerance: float = 1e-13, max_iterations: int = 200_000
) -> list[UFMOptimum]:
    """The global optima of ``problems``, which share the loss, the class sizes, p and the bias (their λ_W, λ_H, λ_b
    and s may differ): FISTA with restart on the convex reductions, batched, each problem with its own step and
    stopping test.

    Variables ``X = ZD`` (C × C) and, with a bias, ``c = b/σ``; smooth part ``Σ_k w_k ℓ(x_k/√n_k + b, e_k) +
    λ_b/2‖b‖²`` with the constant step ``1/L`` of :func:`_lipschitz_constants`, proximal step for ``τ‖X‖_*`` by
    singular-value soft-thresholding (one batched SVD per iteration for every problem still running), momentum reset
    whenever ``⟨y − x⁺, x⁺ − x⟩ > 0`` (gradient restart). A problem stops when its fixed-point residual
    ``‖x⁺ − y‖/(1 + ‖x⁺‖)`` is below ``tolerance`` and leaves the batch; after ``max_iterations`` steps the rest stop
    with a warning (``RuntimeWarning``, ``converged=False``): convergence is linear except at a threshold of the
    regularisation (for example β = 1/C for balanced cross-entropy), where the optimum is degenerate, and slow for
    cross-entropy with tiny λ (large logits, flat softmax: about 3·10⁴ steps at λ_W = λ_H = 10⁻⁶).
    """
    shared = {(problem.loss, problem.class_counts, problem.feature_dim, problem.bias) for problem in problems}
    if len(shared) != 1:
        raise ValueError(f"a batch of problems shares the loss, class sizes, p and bias; got {sorted(shared)}")
    reduced = _reduced_problems(problems)
    count, c = len(problems), problems[0].num_classes
    step = 1.0 / _lipschitz_constants(reduced)
    final_x, final_c = torch.zeros(count, c, c, dtype=DTYPE), torch.zeros(count, c, dtype=DTYPE)
    final_residual = torch.full((count,), math.inf, dtype=DTYPE)
    final_iterations = torch.zeros(count, dtype=torch.long)
    converged = torch.zeros(count, dtype=torch.bool)
    running, working, steps = torch.arange(count), reduced, step
    zeros_x, zeros_c = torch.zeros(count, c, c, dtype=DTYPE), torch.zeros(count, c, dtype=DTYPE)
    state = _Iterates(zeros_x, zeros_c, zeros_x, zeros_c, torch.ones(count, dtype=DTYPE))
    iterations = 0
    while running.numel() and iterations < max_iterations:
        iterations += 1
        sigma = working.bias_scale
        _, grad_x, grad_b = _smooth_part(working, state.x_look, sigma.unsqueeze(-1) * state.c_look)
        x_next = _shrink_singular_values(state.x_look - steps.view(-1, 1, 1) * grad_x, steps * working.tau)
        c_next = state.c_look - (steps * sigma).unsqueeze(-1) * grad_b if working.bias else state.c_look
        move_x, move_c = x_next - state.x_look, c_next - state.c_look
        size = (x_next.square().sum((-1, -2)) + c_next.square().sum(-1)).sqrt()
        residual = (move_x.square().sum((-1, -2)) + move_c.square().sum(-1)).sqrt() / (1.0 + size)
        done = residual <= tolerance
        if bool(done.any()) or iterations == max_iterations:  # these problems leave the batch
            leaving = done if iterations < max_iterations else torch.ones_like(done)
            index = running[leaving]
            final_x[index], final_c[index] = x_next[leaving], c_next[leaving]
            final_residual[index], final_iterations[index] = residual[leaving], iterations
            converged[running[done]] = True
            keep = ~leaving
            running, working, steps, state = running[keep], working.take(keep), steps[keep], state.take(keep)
            x_next, c_next, move_x, move_c = x_next[keep], c_next[keep], move_x[keep], move_c[keep]
        restart = (move_x * (x_next - state.x_now)).sum((-1, -2)) + (move_c * (c_next - state.c_now)).sum(-1) < 0
        following = 0.5 * (1.0 + (1.0 + 4.0 * state.momentum.square()).sqrt())
        extrapolation = torch.where(restart, 0.0, (state.momentum - 1.0) / following)
        state = _Iterates(
            x_next, c_next,
            x_next + extrapolation.view(-1, 1, 1) * (x_next - state.x_now),
            c_next + extrapolation.unsqueeze(-1) * (c_next - state.c_now),
            torch.where(restart, 1.0, following),
        )  # fmt: skip
    if not bool(converged.all()):
        worst = float(final_residual[~converged].max())
        warnings.warn(
            f"the optimum solver stopped {int((~converged).sum())} of {count} problems after {iterations} steps at "
            f"fixed-point residual up to {worst:.2e} > {tolerance:.0e}",
            RuntimeWarning,
            stacklevel=2,
        )
    return _optima(problems, reduced, final_x, final_c, final_residual, final_iterations, converged)


def _optima(
    problems: Sequence[UFMProblem], reduced: _Reduced, x_final: Tensor, c_final: Tensor, residual: Tensor,
    iterations: Tensor, converged: Tensor,
) -> list[UFMOptimum]:
    """The :class:`UFMOptimum` of each problem from the solver's last iterates (batched): singular values of X*
    below ``ZERO_SINGULAR_VALUE · max_k √n_k`` dropped, then f*, Z*, b* and the Grams of the module docstring."""
    bias = reduced.bias_scale.unsqueeze(-1) * c_final if reduced.bias else torch.zeros_like(c_final)
    left, singular_values, right_t = torch.linalg.svd(x_final)
    singular_values = torch.where(singular_values > ZERO_SINGULAR_VALUE * reduced.sqrt_counts.max(), singular_values, 0)
    x_final = (left * singular_values.unsqueeze(-2)) @ right_t
    smooth_value, _, _ = _smooth_part(reduced, x_final, bias)
    value = smooth_value + reduced.tau * singular_values.sum(-1)
    ratio = torch.tensor([math.sqrt(p.lambda_features / p.lambda_weight) for p in problems], dtype=DTYPE)
    inverse_sqrt = 1.0 / reduced.sqrt_counts
    right = right_t.transpose(-1, -2) * inverse_sqrt.unsqueeze(-1)
    scaled_left, scaled_right = left * singular_values.unsqueeze(-2), right * singular_values.unsqueeze(-2)
    classifier_grams = ratio.view(-1, 1, 1) * scaled_left @ left.transpose(-1, -2)
    feature_grams = scaled_right @ right.transpose(-1, -2) / ratio.view(-1, 1, 1)
    return [
        UFMOptimum(
            problem=problem, value=float(value[g]), logit_matrix=x_final[g] * inverse_sqrt, bias=bias[g],
            classifier_gram=classifier_grams[g], feature_gram=feature_grams[g],
            weight_is_zero=not bool(singular_values[g].any()), residual=float(residual[g]),
            iterations=int(iterations[g]), converged=bool(converged[g]),
        )
        for g, problem in enumerate(problems)
    ]


# ---------------------------------------------------------------------------------------------- original objective


def ufm_objective(
    features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, problem: UFMProblem | Sequence[UFMProblem]
) -> Tensor:
    """``f(W, H, b) = D + λ_W/2‖W‖²_F + λ_H/2‖H‖²_F + λ_b/2‖b‖²`` per replica (module docstring), shape ``(...)``.

    ``features`` ``(..., n, p)``, ``weight`` ``(..., C, p)``, ``bias`` ``(..., C)`` or None (``b = 0``); the data
    term is the value of ``problem.data_loss`` (:mod:`ufm_torch.objectives.losses`), the cross-entropy with label
    smoothing ``problem.label_smoothing`` (``torch.nn.functional.cross_entropy``'s convention). ``problem`` may be a
    sequence of problems sharing the loss, one per replica ``(R, …)``, each with its own λ and s.
    """
    problems = (problem,) if isinstance(problem, UFMProblem) else tuple(problem)
    first = problems[0]
    if weight.shape[-2] != first.num_classes:
        raise ValueError(f"weight has {weight.shape[-2]} rows, the problem {first.num_classes} classes")

    def per_replica(name: str) -> float | Tensor:
        values = [getattr(one, name) for one in problems]
        return values[0] if len(values) == 1 else torch.tensor(values, dtype=weight.dtype, device=weight.device)

    logits = features @ weight.transpose(-1, -2)
    if bias is not None:
        logits = logits + bias.unsqueeze(-2)
    data = first.data_loss.value(logits, labels, per_replica("label_smoothing"))
    penalty = 0.5 * per_replica("lambda_weight") * weight.square().sum((-1, -2))
    penalty = penalty + 0.5 * per_replica("lambda_features") * features.square().sum((-1, -2))
    if bias is not None:
        penalty = penalty + 0.5 * per_replica("effective_lambda_bias") * bias.square().sum(-1)
    return data + penalty


# -------------------------------------------------------------------------------------------- optima of replicas


@dataclass(frozen=True)
class OptimumBatch:
    """The global optima of problems that share the loss, class sizes, p and bias, one per replica (their λ_W, λ_H,
    λ_b and s may differ; :func:`solve_optima`), stacked along a first dimension R, float64 on the CPU: ``value``
    f* ``(R,)``, ``classifier_gram`` (WWᵀ)* and ``feature_gram`` (MᵀM)* ``(R, C, C)``, ``bias`` b* ``(R, C)`` and
    ``weight_is_zero`` ``(R,)``. The metrics below take it wherever they take a :class:`UFMOptimum`."""

    problems: tuple[UFMProblem, ...]
    value: Tensor
    classifier_gram: Tensor
    feature_gram: Tensor
    bias: Tensor
    weight_is_zero: Tensor

    @property
    def problem(self) -> UFMProblem:
        """The first problem: its loss, class sizes, p and bias are every problem's."""
        return self.problems[0]

    @property
    def bias_shift_invariant(self) -> Tensor:
        """:attr:`UFMProblem.bias_shift_invariant` of each problem, ``(R,)``."""
        return torch.tensor([problem.bias_shift_invariant for problem in self.problems])

    def objective(self, features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor) -> Tensor:
        """f of each replica under its own problem (:func:`ufm_objective`)."""
        return ufm_objective(features, weight, bias, labels, self.problems)


Optimum = UFMOptimum | OptimumBatch
"""What the metrics compare with: one optimum (broadcast over the replicas) or one per replica."""


def solve_optima(problems: Sequence[UFMProblem]) -> OptimumBatch:
    """The global optima of ``problems`` (one per replica; those of one replica group share the loss, class sizes,
    p and bias), each distinct problem solved once: by its closed form where one applies (:data:`CLOSED_FORMS`,
    evaluated for all of them at once on tensors of their λ and s), by the batched solver
    (:func:`solve_optima_batched`, one batch per loss, class sizes, p and bias) otherwise."""
    distinct = list(dict.fromkeys(problems))
    pending = list(distinct)
    stacked: dict[UFMProblem, tuple[Tensor, Tensor, Tensor, Tensor]] = {}
    for closed_form in CLOSED_FORMS:
        covered = [problem for problem in pending if closed_form.covers(problem)]
        if covered:
            optimum = closed_form.evaluate(covered)
            value = torch.as_tensor(optimum.value, dtype=DTYPE).expand(len(covered))
            stacked |= {
                problem: (value[g], optimum.classifier_gram[g], optimum.feature_gram[g], optimum.bias[g])
                for g, problem in enumerate(covered)
            }
            pending = [problem for problem in pending if problem not in stacked]
    batches: dict[tuple[object, ...], list[UFMProblem]] = {}
    for problem in pending:
        batches.setdefault((problem.loss, problem.class_counts, problem.feature_dim, problem.bias), []).append(problem)
    for batch in batches.values():
        stacked |= {
            optimum.problem: (torch.tensor(optimum.value, dtype=DTYPE), optimum.classifier_gram, optimum.feature_gram,
                              optimum.bias)
            for optimum in solve_optima_batched(batch)
        }  # fmt: skip
    parts = zip(*(stacked[problem] for problem in problems), strict=True)
    value, classifier_gram, feature_gram, bias = (torch.stack(part) for part in parts)
    weight_is_zero = classifier_gram.abs().amax((-1, -2)) == 0
    return OptimumBatch(tuple(problems), value, classifier_gram, feature_gram, bias, weight_is_zero)


# ------------------------------------------------------------------------------------------------------ the metrics


def class_mean_gram(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Gram ``MᵀM`` of the class means ``h_k = (1/n_k) Σ_{y_i = k} h_i``, shape ``(..., C, C)``."""
    indicator = one_hot_targets(labels, num_classes, features.dtype)
    means = indicator.transpose(-1, -2) @ features / indicator.sum(-2).unsqueeze(-1)
    return means @ means.transpose(-1, -2)


def _gram_error(gram: Tensor, optimal: Tensor, absolute: bool | Tensor) -> Tensor:
    """``‖G − G*‖_F/‖G*‖_F``, or ``‖G‖_F`` where ``absolute`` (the optimum is 0; per replica for a tensor)."""
    if isinstance(absolute, bool):
        if absolute:
            return torch.linalg.matrix_norm(gram)
        optimal = optimal.to(gram)
        return torch.linalg.matrix_norm(gram - optimal) / torch.linalg.matrix_norm(optimal)
    optimal = optimal.to(gram)
    relative = torch.linalg.matrix_norm(gram - optimal) / torch.linalg.matrix_norm(optimal).clamp_min(math.ulp(0.0))
    return torch.where(absolute.to(gram.device), torch.linalg.matrix_norm(gram), relative)


def loss_gap(features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, optimum: Optimum) -> Tensor:
    """``optimum/loss_gap``: ``f(W, H, b) − f*`` (≥ 0 up to the solver's accuracy), per replica."""
    optimum.problem.check_labels(labels)
    return optimum.objective(features, weight, bias, labels) - optimum_value(optimum, weight)


def optimum_value(optimum: Optimum, like: Tensor) -> float | Tensor:
    """f*: a number, or per replica a tensor on ``like``'s device."""
    return optimum.value if isinstance(optimum.value, float) else optimum.value.to(like)


def classifier_gram_error(weight: Tensor, optimum: Optimum) -> Tensor:
    """``optimum/classifier_gram``: ``‖WWᵀ − (WWᵀ)*‖_F / ‖(WWᵀ)*‖_F``; ``‖WWᵀ‖_F`` when the optimum is ``W = 0``.

    ``(WWᵀ)* = √(λ_H/λ_W)(X*X*ᵀ)^{1/2}`` (module docstring); the measure is invariant under ``W ↦ WQ``, Q orthogonal.
    """
    gram = weight @ weight.transpose(-1, -2)
    return _gram_error(gram, optimum.classifier_gram, optimum.weight_is_zero)


def feature_gram_error(features: Tensor, labels: Tensor, optimum: Optimum) -> Tensor:
    """``optimum/feature_gram``: ``‖MᵀM − (MᵀM)*‖_F / ‖(MᵀM)*‖_F`` for the class means M; absolute when ``W* = 0``.

    ``(MᵀM)* = √(λ_W/λ_H) D⁻¹(X*ᵀX*)^{1/2}D⁻¹``, ``D = diag(√n_k)``. Only the class means enter: within-class
    spread shows in ``optimum/loss_gap``, not here.
    """
    optimum.problem.check_labels(labels)
    gram = class_mean_gram(features, labels, optimum.problem.num_classes)
    return _gram_error(gram, optimum.feature_gram, optimum.weight_is_zero)


def bias_error(bias: Tensor | None, optimum: Optimum) -> Tensor:
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
    invariant = optimum.bias_shift_invariant
    if isinstance(invariant, bool):
        if invariant:
            difference = difference - difference.mean(-1, keepdim=True)
    else:
        centred = difference - difference.mean(-1, keepdim=True)
        difference = torch.where(invariant.to(bias.device).unsqueeze(-1), centred, difference)
    return torch.linalg.vector_norm(difference, dim=-1)


def optimum_metrics(
    features: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor, optimum: Optimum
) -> dict[str, Tensor]:
    """The four distances to the global optimum, keyed by :data:`OPTIMUM_TAGS`, each of the replica shape;
    ``optimum`` one optimum for every replica, or one per replica (:class:`OptimumBatch`)."""
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
    """A closed-form optimum: ``(WWᵀ)*``, ``(MᵀM)*`` (class means), ``b*`` and ``f*``. Each closed form takes its λ
    (and s) as numbers or as tensors of one shape ``(G,)``: the Grams are then ``(G, C, C)``, b* ``(G, C)`` and f*
    ``(G,)``."""

    classifier_gram: Tensor
    feature_gram: Tensor
    bias: Tensor
    value: float | Tensor


Scalar = float | Tensor
"""A number, or a tensor ``(G,)`` of one per problem."""


def _number(value: Tensor) -> float | Tensor:
    """A 0-dimensional result as a float (a closed form given numbers), else the tensor."""
    return float(value) if value.dim() == 0 else value


def _tensor(value: Scalar) -> Tensor:
    """``value`` as a float64 tensor (0-dimensional for a number)."""
    return torch.as_tensor(value, dtype=DTYPE)


class _Balanced(NamedTuple):
    """β = √(Nλ_Wλ_H), γ = √(Nλ_H/λ_W), λ_b of the mean-reduced problem (tensors), and f's factor (n or 1)."""

    beta: Tensor
    gamma: Tensor
    lambda_bias: Tensor
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
    lambda_weight: Scalar,
    lambda_features: Scalar,
    lambda_bias: Scalar,
) -> _Balanced:
    """Constants of a balanced problem, N samples per class; ``sum_squared`` maps to the mean with λ/n, f times n."""
    scale = _squared_error_scale(loss, num_classes * samples_per_class)
    lw, lh = _tensor(lambda_weight) / scale, _tensor(lambda_features) / scale
    beta = (samples_per_class * lw * lh).sqrt()
    return _Balanced(beta, (samples_per_class * lh / lw).sqrt(), _tensor(lambda_bias) / scale, scale)


def _symmetric_optimum(
    num_classes: int, centred: Tensor, mean: Tensor, gamma: Tensor, bias_level: Tensor, value: Tensor
) -> ClosedFormOptimum:
    """``Z = centred·(I − J) + mean·J`` (symmetric PSD), ``WWᵀ = γZ``, ``MᵀM = Z/γ``, ``b = bias_level·1``; each
    coefficient a number or one per problem."""
    eye = torch.eye(num_classes, dtype=DTYPE)
    average = torch.full((num_classes, num_classes), 1.0 / num_classes, dtype=DTYPE)
    centred, mean, gamma, bias_level, value = torch.broadcast_tensors(centred, mean, gamma, bias_level, value)
    logits = centred[..., None, None] * (eye - average) + mean[..., None, None] * average
    bias = bias_level[..., None].expand(*bias_level.shape, num_classes).clone()
    return ClosedFormOptimum(gamma[..., None, None] * logits, logits / gamma[..., None, None], bias, _number(value))


def mse_optimum_without_bias(
    num_classes: int,
    samples_per_class: int,
    lambda_weight: Scalar,
    lambda_features: Scalar,
    loss: str = "mean_squared",
) -> ClosedFormOptimum:
    """Balanced MSE without bias (Tirer and Bruna 2022): ``WWᵀ = γ(1 − Cβ)₊ I``, ``MᵀM = WWᵀ/γ²``.

    ``mean_squared``: β = √(Nλ_Wλ_H), γ = √(Nλ_H/λ_W), N samples per class; ``f* = Cβ − C²β²/2`` if Cβ < 1, else ½.
    ``sum_squared``: the same with λ/n (n = CN), i.e. ``Cβ → √(λ_Wλ_H/N)`` and γ unchanged, and f* times n.
    """
    constants = _balanced(loss, num_classes, samples_per_class, lambda_weight, lambda_features, 0.0)
    c_beta = num_classes * constants.beta
    scale = (1.0 - c_beta).clamp_min(0.0)
    value = torch.where(c_beta < 1, c_beta - 0.5 * c_beta**2, 0.5) * constants.value_scale
    zero = torch.zeros_like(scale)
    return _symmetric_optimum(num_classes, scale, scale, constants.gamma, zero, value)


def mse_optimum_with_free_bias(
    num_classes: int,
    samples_per_class: int,
    lambda_weight: Scalar,
    lambda_features: Scalar,
    loss: str = "mean_squared",
) -> ClosedFormOptimum:
    """Balanced MSE, unregularised bias (Zhou et al. 2022): ``WWᵀ = γ(1 − Cβ)₊(I − J)``, ``b = 1/C``, J = 11ᵀ/C.

    ``mean_squared``: ``f* = (C − 1)(β − Cβ²/2)`` if Cβ < 1, else ``(C − 1)/(2C)``; ``sum_squared`` as in
    :func:`mse_optimum_without_bias` (λ/n, f* times n; b = 1/C unchanged).
    """
    constants = _balanced(loss, num_classes, samples_per_class, lambda_weight, lambda_features, 0.0)
    beta, c = constants.beta, num_classes
    centred = (1.0 - c * beta).clamp_min(0.0)
    value = torch.where(c * beta < 1, (c - 1) * (beta - 0.5 * c * beta**2), (c - 1) / (2 * c))
    zero = torch.zeros_like(centred)
    return _symmetric_optimum(c, centred, zero, constants.gamma, zero + 1.0 / c, value * constants.value_scale)


def mse_optimum_with_regularised_bias(
    num_classes: int,
    samples_per_class: int,
    lambda_weight: Scalar,
    lambda_features: Scalar,
    lambda_bias: Scalar,
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
    if bool((_tensor(lambda_bias) <= 0).any()):
        raise ValueError(f"λ_b must be > 0 here (mse_optimum_with_free_bias has λ_b = 0), got {lambda_bias}")
    constants = _balanced(loss, num_classes, samples_per_class, lambda_weight, lambda_features, lambda_bias)
    beta, c, lb = constants.beta, num_classes, constants.lambda_bias
    centred = (1.0 - c * beta).clamp_min(0.0)
    centred_value = torch.where(c * beta < 1, (c - 1) * (beta - 0.5 * c * beta**2), (c - 1) / (2 * c))
    bias_only = beta >= lb / (c * (1 + lb))
    mean = torch.where(bias_only, 0.0, 1.0 - c * beta * (1 + 1 / lb))
    level = torch.where(bias_only, 1.0 / (c * (1 + lb)), beta / lb)
    mean_value = torch.where(bias_only, lb / (2 * c * (1 + lb)), beta - 0.5 * c * beta**2 * (1 + 1 / lb))
    value = (centred_value + mean_value) * constants.value_scale
    return _symmetric_optimum(c, centred, mean, constants.gamma, level, value)


def mse_optimum_imbalanced_without_bias(
    class_counts: tuple[int, ...],
    lambda_weight: Scalar,
    lambda_features: Scalar,
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
    lw, lh = _tensor(lambda_weight) / scale, _tensor(lambda_features) / scale
    tau = (lw * lh).sqrt().unsqueeze(-1)
    singular_values = (counts.sqrt() - n * tau).clamp_min(0.0)
    value = (torch.minimum(counts.sqrt(), n * tau).square() / (2 * n)).sum(-1)
    value = value + tau.squeeze(-1) * singular_values.sum(-1)
    ratio = (lh / lw).sqrt().unsqueeze(-1)
    return ClosedFormOptimum(
        torch.diag_embed(ratio * singular_values),
        torch.diag_embed(singular_values / counts / ratio),
        torch.zeros(*singular_values.shape, dtype=DTYPE),
        _number(value * scale),
    )


def cross_entropy_optimum(
    num_classes: int,
    samples_per_class: int,
    lambda_weight: Scalar,
    lambda_features: Scalar,
    label_smoothing: Scalar = 0.0,
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
    c, s = num_classes, _tensor(label_smoothing)
    lw, lh = _tensor(lambda_weight), _tensor(lambda_features)
    beta, gamma = (samples_per_class * lw * lh).sqrt(), (samples_per_class * lh / lw).sqrt()
    collapsed = beta < (1 - s) / c
    probability = torch.where(collapsed, 1 - s * (c - 1) / c - beta * (c - 1), 0.5)
    gain = torch.where(collapsed, torch.log(probability * (c - 1) / (1 - probability)), 0.0)
    value = torch.where(
        collapsed, torch.log(gain.exp() + c - 1) - gain * (1 - s + s / c) + beta * (c - 1) * gain, math.log(c)
    )
    zero = torch.zeros_like(gain)
    return _symmetric_optimum(c, gain, zero, gamma, zero, value)


def collapse_threshold(loss: str, num_classes: int, samples_per_class: int, label_smoothing: float = 0.0) -> float:
    """The product λ_Wλ_H past which a balanced problem's optimum has W = 0 (its closed forms above): Cβ = 1 − s
    with β = √(Nλ_Wλ_H), s the label smoothing (0 for the squared losses), so λ_Wλ_H = (1 − s)²/(C²N); for
    ``sum_squared`` every λ is divided by n = CN, so λ_Wλ_H = (1 − s)²n²/(C²N) = N."""
    margin = 1.0 - label_smoothing if LOSSES[loss].supports_label_smoothing else 1.0
    product = margin**2 / (num_classes**2 * samples_per_class)
    return product if LOSSES[loss].mean_reduced else product * (num_classes * samples_per_class) ** 2


# ------------------------------------------------------------------------------------- which closed form applies


@dataclass(frozen=True)
class ClosedForm:
    """A closed form of the optimum (above): the problems it ``covers``, and ``evaluate``, its optimum for a batch
    of such problems sharing loss, class sizes and bias, computed at once from tensors of their λ and s."""

    covers: Callable[[UFMProblem], bool]
    evaluate: Callable[[Sequence[UFMProblem]], ClosedFormOptimum]


def _values(problems: Sequence[UFMProblem], name: str) -> Tensor:
    """The attribute ``name`` (a λ, or s) of each problem, ``(G,)``."""
    return torch.tensor([getattr(problem, name) for problem in problems], dtype=DTYPE)


def _squared(problem: UFMProblem) -> bool:
    return problem.data_loss.link is Link.IDENTITY


def _balanced_shape(problems: Sequence[UFMProblem]) -> tuple[int, int]:
    """C and N of balanced problems."""
    return problems[0].num_classes, problems[0].class_counts[0]


CLOSED_FORMS: tuple[ClosedForm, ...] = (
    ClosedForm(
        lambda p: p.is_balanced and p.data_loss.link is Link.SOFTMAX,
        lambda ps: cross_entropy_optimum(
            *_balanced_shape(ps), _values(ps, "lambda_weight"), _values(ps, "lambda_features"),
            _values(ps, "label_smoothing"),
        ),
    ),
    ClosedForm(
        lambda p: p.is_balanced and _squared(p) and not p.bias,
        lambda ps: mse_optimum_without_bias(
            *_balanced_shape(ps), _values(ps, "lambda_weight"), _values(ps, "lambda_features"), ps[0].loss
        ),
    ),
    ClosedForm(
        lambda p: p.is_balanced and _squared(p) and p.bias and p.lambda_bias == 0,
        lambda ps: mse_optimum_with_free_bias(
            *_balanced_shape(ps), _values(ps, "lambda_weight"), _values(ps, "lambda_features"), ps[0].loss
        ),
    ),
    ClosedForm(
        lambda p: p.is_balanced and _squared(p) and p.bias and p.lambda_bias > 0,
        lambda ps: mse_optimum_with_regularised_bias(
            *_balanced_shape(ps), _values(ps, "lambda_weight"), _values(ps, "lambda_features"),
            _values(ps, "lambda_bias"), ps[0].loss,
        ),
    ),
    ClosedForm(
        lambda p: not p.is_balanced and _squared(p) and not p.bias,
        lambda ps: mse_optimum_imbalanced_without_bias(
            ps[0].class_counts, _values(ps, "lambda_weight"), _values(ps, "lambda_features"), ps[0].loss
        ),
    ),
)  # fmt: skip
"""Every closed form, with the problems it covers (docs/architecture.md, "Global optimum oracle"); imbalanced
cross-entropy and imbalanced MSE with a bias have none (Hong and Ling 2023): the solver answers them."""
