"""The paper's closed forms (Lemma 4, Theorems 2 and 3) and integrators to check them against.

Everything follows the row convention of :mod:`ufm_torch.training.objective`: ``features`` ``(..., CN, p)``
is the paper's ``Hᵀ``, ``weight`` ``(..., C, p)`` is ``W``, ``bias`` ``(..., C)`` is ``b``;
leading dimensions are replicas. Functions that take ``num_classes`` and ``samples_per_class``
instead of labels assume the UFM's class-major order ``labels = arange(C).repeat_interleave(N)``,
i.e. the paper's ``Y = I_C ⊗ 1_Nᵀ``. Symbols: ``C`` classes, ``N`` samples per class, ``p``
feature dimension.

Reference: D. G. Mixon, H. Parshall, J. Pi, "Neural collapse with unconstrained features".
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ufm_torch.training.objective import residual, ufm_gradients


class FlowState(NamedTuple):
    """A UFM point ``Z = (H, W, b)`` in the row convention, or a stack of them (leading dim)."""

    features: Tensor
    weight: Tensor
    bias: Tensor


class Theorem2Projections(NamedTuple):
    """Projections of ``U = (H, W)`` onto the eigenspaces of ``L_t`` (Mixon et al., Theorem 2).

    Each field is a ``(features, weight)`` pair; the five pairs sum to ``U``.
    """

    e1_plus: tuple[Tensor, Tensor]
    e1_minus: tuple[Tensor, Tensor]
    e2_plus: tuple[Tensor, Tensor]
    e2_minus: tuple[Tensor, Tensor]
    e3: tuple[Tensor, Tensor]


def _as_tensor(value: float | Tensor, like: Tensor) -> Tensor:
    """``value`` as a tensor of ``like``'s dtype and device."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _spread_over_samples(class_rows: Tensor, samples_per_class: int) -> Tensor:
    """``(1/√N)(X ⊗ 1_N)`` in the row convention: each row of ``X`` repeated ``N`` times, / √N."""
    return class_rows.repeat_interleave(samples_per_class, dim=-2) / math.sqrt(samples_per_class)


def strong_collapse_gram(
    num_classes: int,
    samples_per_class: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> Tensor:
    """The (SNC1) Gram matrix ``√N (I_C − 1_C 1_Cᵀ/C)``, shape ``(C, C)`` (Mixon et al., SNC1)."""
    eye = torch.eye(num_classes, dtype=dtype, device=device)
    return math.sqrt(samples_per_class) * (eye - 1.0 / num_classes)


def lemma4_risk(weight: Tensor, bias: Tensor, samples_per_class: int) -> Tensor:
    """``½‖WWᵀ − √N(I − 11ᵀ/C)‖²_F + (CN/2)‖b − 1/C‖²`` per replica (Mixon et al., Lemma 4).

    Equals the empirical risk ``R(H, W, b)`` for ``(H, W, b) ∈ S`` (eq. 3); off ``S`` it does not.
    """
    num_classes = weight.shape[-2]
    target = strong_collapse_gram(num_classes, samples_per_class, weight.dtype, weight.device)
    gram_error = (weight @ weight.transpose(-1, -2) - target).square().sum(dim=(-1, -2))
    bias_error = (bias - 1.0 / num_classes).square().sum(dim=-1)
    return 0.5 * gram_error + 0.5 * num_classes * samples_per_class * bias_error


def point_on_S(weight: Tensor, bias_level: float | Tensor, samples_per_class: int) -> FlowState:
    """A point of ``S`` built from any ``W`` (Mixon et al., Section 3, definition of S).

    ``W ← W − 1_C 1_Cᵀ W/C`` (so ``1_Cᵀ W = 0``), ``H = (1/√N)(W ⊗ 1_N)ᵀ`` and
    ``b = bias_level · 1_C``; ``bias_level`` is a number or a tensor of the replica shape.
    """
    centred = weight - weight.mean(dim=-2, keepdim=True)
    level = _as_tensor(bias_level, weight).unsqueeze(-1)
    bias = level * torch.ones(weight.shape[-2], dtype=weight.dtype, device=weight.device)
    return FlowState(_spread_over_samples(centred, samples_per_class), centred, bias)


def theorem2_bias(
    t: float | Tensor,
    num_classes: int,
    samples_per_class: int,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``b(t) = β(t) 1_C``, ``β(t) = (1 − e^{−CNt})/C``, shape ``t.shape + (C,)`` (Theorem 2).

    The bias of the linearised system of Mixon et al., Theorem 2, from ``b(0) = 0``; also the bias
    of the full gradient flow started on ``S`` with ``b(0) = 0`` (Theorem 3(b) with ``α = 1``).
    """
    time = torch.as_tensor(t, dtype=dtype)
    beta = -torch.expm1(-num_classes * samples_per_class * time) / num_classes
    return beta.unsqueeze(-1) * torch.ones(num_classes, dtype=dtype)


def theorem2_snc3_error(t: float | Tensor, num_classes: int, samples_per_class: int) -> Tensor:
    """SNC3 error of the flow, ``‖b(t) − 1_C/C‖₂ = e^{−CNt}/√C`` for ``b(0) = 0`` (Theorem 2).

    Exact for the linearised system of Mixon et al., Theorem 2, and for the full gradient flow
    started on ``S`` (Theorem 3(b), ``α = 1``): there the drift ``WH1_{CN}`` of ``∇_b R`` vanishes.
    """
    time = torch.as_tensor(t, dtype=torch.float64)
    return torch.exp(-num_classes * samples_per_class * time) / math.sqrt(num_classes)


def gradient_descent_snc3_error(steps: int | Tensor, lr: float, num_classes: int, samples_per_class: int) -> Tensor:
    """SNC3 error of gradient descent, ``‖b_k − 1_C/C‖₂ = |1 − ηCN|^k/√C`` for ``b₀ = 0``.

    The bias gradient is ``∇_b R = A1_{CN} = WH1_{CN} + CN(b − 1_C/C)`` (Mixon et al., Section 3
    and eq. 1), so a step of size ``η`` gives
    ``b_{k+1} − 1_C/C = (1 − ηCN)(b_k − 1_C/C) − η W_k H_k 1_{CN}``. The formula is exact
    precisely when ``W_k H_k 1_{CN} = 0`` at every step ``k < steps``: for gradient descent on
    the linearised system of Theorem 2 (no ``WH`` term), and for gradient descent started on
    ``S`` (a subspace that ``∇R`` maps into itself, Theorem 3(a), so every iterate stays in ``S``,
    where ``H1_{CN} = 0``). Off ``S`` it is only the linear part: the true error then differs by
    at most ``η Σ_{j<k} |1 − ηCN|^{k−1−j} ‖W_j H_j 1_{CN}‖``. Discrete counterpart of
    :func:`theorem2_snc3_error` (``(1 − ηCN)^k`` in place of ``e^{−CNηk}``).
    """
    step_count = torch.as_tensor(steps, dtype=torch.float64)
    factor = abs(1.0 - lr * num_classes * samples_per_class)
    return factor**step_count / math.sqrt(num_classes)


def theorem2_projections(
    features: Tensor, weight: Tensor, num_classes: int, samples_per_class: int
) -> Theorem2Projections:
    """Projections of ``U = (H, W)`` onto ``E₁^±, E₂^±, E₃`` (Mixon et al., proof of Theorem 2).

    The eigenspaces of ``L_t`` (paper notation, ``ε = ±1``):
    ``E₁^ε = {H = ε(1/√N)(W ⊗ 1_N)ᵀ, 1_CᵀW = 0}``, ``E₂^ε = {H = εz1_{CN}ᵀ, W = √N 1_C zᵀ}``,
    ``E₃ = {(I_C ⊗ 1_Nᵀ)Hᵀ = 0, W = 0}``. Closed form: with ``μ_c`` the class means of the
    feature rows, ``V = √N [μ_c]`` (``C × p``) is an isometric coordinate for the class-constant
    part of the features, in which ``E₁^ε ⊕ E₂^ε = {(V, W) = (εX, X)}``. So ``X = (εV + W)/2``;
    its row-centred part ``X − 1_C1_CᵀX/C`` gives ``Π₁^ε U = (ε(1/√N)(X ⊗ 1_N)ᵀ, X)``, its row
    mean gives ``Π₂^ε U`` the same way, and ``Π₃ U = (features − class means, 0)``.
    Class-major sample order is assumed. Note on the paper's proof: at ``t = 0`` (``β = 0``) the
    spaces ``E₁^ε`` and ``E₂^ε`` share the eigenvalue ``ε√N``, so "distinct eigenvalues" fails
    there; the decomposition still holds because the five spaces are mutually orthogonal (direct
    check), which is all the solution formula needs.
    """
    *batch, sample_count, feature_dim = features.shape
    if sample_count != num_classes * samples_per_class or weight.shape[-2] != num_classes:
        raise ValueError(
            f"expected features (..., {num_classes * samples_per_class}, p) and weight "
            f"(..., {num_classes}, p); got {tuple(features.shape)} and {tuple(weight.shape)}"
        )
    blocks = features.reshape(*batch, num_classes, samples_per_class, feature_dim)
    class_means = blocks.mean(dim=-2)
    e3_features = (blocks - class_means.unsqueeze(-2)).reshape(features.shape)
    class_coordinate = math.sqrt(samples_per_class) * class_means
    pairs = []
    for sign in (1.0, -1.0):
        combined = 0.5 * (sign * class_coordinate + weight)
        mean_part = combined.mean(dim=-2, keepdim=True).expand_as(combined)
        centred_part = combined - mean_part
        pairs.append(
            [(sign * _spread_over_samples(part, samples_per_class), part.clone()) for part in (centred_part, mean_part)]
        )
    (e1_plus, e2_plus), (e1_minus, e2_minus) = pairs
    return Theorem2Projections(e1_plus, e1_minus, e2_plus, e2_minus, (e3_features, torch.zeros_like(weight)))


def theorem2_solution(
    features0: Tensor,
    weight0: Tensor,
    t: float | Tensor,
    num_classes: int,
    samples_per_class: int,
) -> tuple[Tensor, Tensor]:
    """``U(t) = (H(t), W(t))`` of the linearised system from ``U₀``, ``b(0) = 0`` (Theorem 2).

    ``U(t) = e^{√N t}Π₁⁺U₀ + e^{−√N t}Π₁⁻U₀ + f₊(t)Π₂⁺U₀ + f₋(t)Π₂⁻U₀ + Π₃U₀`` with
    ``f_ε(t) = exp(ε(1 − e^{−CNt})/(C√N))`` (Mixon et al., proof of Theorem 2). Check of ``f_ε``:
    the eigenvalue of ``L_s`` on ``E₂^ε`` is ``ε√N(1 − Cβ(s)) = ε√N e^{−CNs}`` and
    ``∫₀ᵗ √N e^{−CNs} ds = (1 − e^{−CNt})/(C√N)``, so the paper's ``f_ε`` is right (no typo).
    ``t`` is a number or a 0-d tensor.
    """
    time = _as_tensor(t, features0)
    root_n = math.sqrt(samples_per_class)
    f_exponent = -torch.expm1(-num_classes * samples_per_class * time) / (num_classes * root_n)
    gains = (
        torch.exp(root_n * time),
        torch.exp(-root_n * time),
        torch.exp(f_exponent),
        torch.exp(-f_exponent),
        torch.ones_like(time),
    )
    projections = theorem2_projections(features0, weight0, num_classes, samples_per_class)
    features = sum(g * part[0] for g, part in zip(gains, projections, strict=True))
    weight = sum(g * part[1] for g, part in zip(gains, projections, strict=True))
    return features, weight


def theorem2_bound(
    features0: Tensor,
    weight0: Tensor,
    t: float | Tensor,
    num_classes: int,
    samples_per_class: int,
) -> tuple[Tensor, Tensor]:
    """Both sides of Mixon et al., Theorem 2's bound at time ``t``, each of the replica shape.

    ``lhs = ‖(H(t), W(t)) − e^{√N t} Π_T(H₀, W₀)‖_E`` with ``U(t)`` from
    :func:`theorem2_solution`, and ``rhs = e^{1/(C√N)} ‖Π_{T⊥}(H₀, W₀)‖_E``, where ``T = E₁⁺``
    and ``‖(H, W)‖²_E = ‖H‖²_F + ‖W‖²_F``. The theorem states ``lhs ≤ rhs`` for all ``t ≥ 0``.
    """
    time = _as_tensor(t, features0)
    features_t, weight_t = theorem2_solution(features0, weight0, time, num_classes, samples_per_class)
    tangent_features, tangent_weight = theorem2_projections(features0, weight0, num_classes, samples_per_class).e1_plus
    growth = torch.exp(math.sqrt(samples_per_class) * time)
    lhs = pair_norm(features_t - growth * tangent_features, weight_t - growth * tangent_weight)
    constant = math.exp(1.0 / (num_classes * math.sqrt(samples_per_class)))
    rhs = constant * pair_norm(features0 - tangent_features, weight0 - tangent_weight)
    return lhs, rhs


def pair_norm(features: Tensor, weight: Tensor) -> Tensor:
    """``‖(H, W)‖_E = (‖H‖²_F + ‖W‖²_F)^{1/2}`` per replica (Mixon et al., Theorem 2)."""
    return (features.square().sum(dim=(-1, -2)) + weight.square().sum(dim=(-1, -2))).sqrt()


def _require_on_S(weight: Tensor, bias: Tensor) -> None:
    """Raise ``ValueError`` unless ``1_CᵀW ≈ 0`` and ``b ∈ span{1_C}`` (to √eps relatively)."""
    tolerance = math.sqrt(torch.finfo(weight.dtype).eps)
    column_sums = float(weight.sum(dim=-2).abs().max())
    bias_spread = float((bias - bias.mean(dim=-1, keepdim=True)).abs().max())
    if column_sums > tolerance * max(1.0, float(weight.abs().max())) or bias_spread > (
        tolerance * max(1.0, float(bias.abs().max()))
    ):
        raise ValueError(
            "Theorem 3 needs a start on S: 1_Cᵀ W₀ = 0 and b₀ ∈ span{1_C} "
            f"(got max |1ᵀW₀| = {column_sums:.3g}, max |b₀ − mean b₀| = {bias_spread:.3g}); "
            "build one with point_on_S"
        )


def _range_mask(singular_values: Tensor, shape: Sequence[int], rank_rtol: float | None) -> Tensor:
    """Singular values above ``rank_rtol · σ_max`` (default ``max(C, p) · eps``, as matrix_rank)."""
    if rank_rtol is None:
        rank_rtol = max(shape) * torch.finfo(singular_values.dtype).eps
    return singular_values > rank_rtol * singular_values.amax(dim=-1, keepdim=True)


def theorem3_trajectory(
    weight0: Tensor,
    bias0: Tensor,
    t: float | Tensor,
    samples_per_class: int,
    rank_rtol: float | None = None,
) -> FlowState:
    """The gradient flow from ``Z₀ = (H₀, W₀, b₀) ∈ S`` at time ``t`` (Mixon et al., Theorem 3).

    ``b(t) = (1 − αe^{−CNt})/C · 1_C`` where ``b₀ = (1 − α)/C · 1_C``. ``W`` solves
    ``W' = √N W − WWᵀW``: with ``W₀ = Σ_j σ_j u_j v_jᵀ`` (SVD) the singular vectors stay fixed and
    ``λ_j = σ_j²`` follows the logistic ``λ' = 2λ(√N − λ)``, i.e.
    ``λ(t) = √N λ₀ e^{2√N t}/(√N + λ₀(e^{2√N t} − 1))``, evaluated as
    ``√N λ₀/(√N e^{−2√N t} + λ₀(1 − e^{−2√N t}))`` to avoid overflow. Singular values at or below
    ``rank_rtol · σ_max`` count as zero and stay zero. ``H(t) = (1/√N)(W(t) ⊗ 1_N)ᵀ``.
    ``t`` is a number or a 0-d tensor; ``weight0`` and ``bias0`` may carry replica dimensions.
    Raises ``ValueError`` when ``(W₀, b₀)`` is not on ``S``.
    """
    _require_on_S(weight0, bias0)
    num_classes = weight0.shape[-2]
    time = _as_tensor(t, weight0)
    root_n = math.sqrt(samples_per_class)
    left, singular_values, right = torch.linalg.svd(weight0, full_matrices=False)
    in_range = _range_mask(singular_values, weight0.shape[-2:], rank_rtol)
    initial = singular_values.square()
    decay = torch.exp(-2.0 * root_n * time)
    logistic = root_n * initial / (root_n * decay + initial * (1.0 - decay))
    current = torch.where(in_range, logistic, torch.zeros_like(logistic)).sqrt()
    weight = (left * current.unsqueeze(-2)) @ right
    bias_decay = torch.exp(-num_classes * samples_per_class * time)
    bias = 1.0 / num_classes + (bias0 - 1.0 / num_classes) * bias_decay
    return FlowState(_spread_over_samples(weight, samples_per_class), weight, bias)


def theorem3_limit_gram(weight0: Tensor, samples_per_class: int, rank_rtol: float | None = None) -> Tensor:
    """``lim W(t)W(t)ᵀ = √N (I − Π)``, ``Π`` projecting onto ``ker W₀ᵀ`` (Mixon et al., Theorem 3c).

    ``I − Π`` projects onto the range of ``W₀``, spanned by the left singular vectors whose
    singular values exceed ``rank_rtol · σ_max`` (default ``max(C, p) · eps``). On ``S`` this is the
    (SNC1) Gram :func:`strong_collapse_gram` exactly when ``rank W₀ = C − 1``.
    """
    left, singular_values, _ = torch.linalg.svd(weight0, full_matrices=False)
    in_range = _range_mask(singular_values, weight0.shape[-2:], rank_rtol)
    kept = left * in_range.to(left.dtype).unsqueeze(-2)
    return math.sqrt(samples_per_class) * kept @ kept.transpose(-1, -2)


def gradient_flow_rhs(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> FlowState:
    """``Z' = −∇R(Z)``: ``(−(WᵀA)ᵀ, −AHᵀ, −A1)`` in the row convention (Mixon et al., Section 3)."""
    grad_features, grad_weight, grad_bias = ufm_gradients(features, weight, bias, labels)
    return FlowState(-grad_features, -grad_weight, -grad_bias)


def linearised_flow_rhs(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> FlowState:
    """Theorem 2's system: ``A`` replaced by ``Ã = b1_{CN}ᵀ − Y`` (Mixon et al., Theorem 2).

    ``H' = −WᵀÃ``, ``W' = −ÃHᵀ``, ``b' = −Ã1_{CN}``. In the row convention ``Ãᵀ = 1_{CN}bᵀ − Yᵀ``,
    ``features' = −ÃᵀW``, ``weight' = −(Ãᵀ)ᵀ features``, ``bias' = −(Ãᵀ)ᵀ1``. With
    ``b = β(t)1_C`` the ``(H, W)`` part is ``L_t(H, W) = (WᵀM_t, M_tHᵀ)``, where
    ``M_t = (I_C ⊗ 1_Nᵀ) − β(t)1_C1_{CN}ᵀ = −Ã``.
    """
    linear_residual = residual(torch.zeros_like(features), weight, bias, labels)
    return FlowState(
        -linear_residual @ weight,
        -linear_residual.transpose(-1, -2) @ features,
        -linear_residual.sum(dim=-2),
    )


# Dormand–Prince 5(4) tableau (Dormand and Prince, 1980): stage coefficients, 5th-order weights
# (first-same-as-last: the 7th stage is the slope at the new point) and embedded error weights.
_DP_STAGES = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_WEIGHTS = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_ERROR = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

State = tuple[Tensor, ...]


def _combine(base: State, step: float, slopes: Sequence[State], weights: Sequence[float]) -> State:
    """``base + step · Σ_i weights[i] · slopes[i]``, component by component."""
    used = [(w, k) for w, k in zip(weights, slopes, strict=True) if w != 0.0]
    return tuple(value + step * sum(w * k[index] for w, k in used) for index, value in enumerate(base))


def _max_scaled(values: State, scale: State) -> float:
    """``max |value| / scale`` over every component."""
    return max(float((v / s).abs().max()) for v, s in zip(values, scale, strict=True))


def _initial_step(rhs: Callable[[State], State], state: State, slope: State, rtol: float, atol: float) -> float:
    """First step size by the usual two-evaluation heuristic (Hairer, Nørsett, Wanner, II.4)."""
    scale = tuple(atol + rtol * x.abs() for x in state)
    size0, size1 = _max_scaled(state, scale), _max_scaled(slope, scale)
    first = 1e-6 if size0 < 1e-5 or size1 < 1e-5 else 0.01 * size0 / size1
    probe_slope = rhs(tuple(x + first * f for x, f in zip(state, slope, strict=True)))
    change = tuple(f1 - f0 for f0, f1 in zip(slope, probe_slope, strict=True))
    largest = max(size1, _max_scaled(change, scale) / first)
    second = max(1e-6, first * 1e-3) if largest <= 1e-15 else (0.01 / largest) ** 0.2
    return min(100.0 * first, second)


def integrate_flow(
    rhs: Callable[[State], State],
    state0: State,
    times: Sequence[float] | Tensor,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    max_steps: int = 1_000_000,
) -> State:
    """Integrate the autonomous ODE ``y' = rhs(y)``, ``y(0) = state0``, by adaptive RK45.

    Dormand–Prince 5(4) with local extrapolation. ``state0`` is a tuple of tensors; ``times`` are
    nonnegative and nondecreasing. A step is accepted when
    ``max |local error| / (atol + rtol · max(|y_old|, |y_new|)) ≤ 1`` over all components
    (replicas share one step size); steps are shortened to land exactly on each requested time.
    Returns the states at ``times``, each component stacked along a new leading dimension.
    """
    targets = [float(x) for x in torch.as_tensor(times, dtype=torch.float64).reshape(-1)]
    if any(x < 0 for x in targets) or any(b < a for a, b in itertools.pairwise(targets)):
        raise ValueError(f"times must be nonnegative and nondecreasing, got {targets}")
    outputs: list[State] = []
    with torch.no_grad():
        state = tuple(x.clone() for x in state0)
        slope = tuple(rhs(state))
        step = _initial_step(rhs, state, slope, rtol, atol)
        now, steps_taken = 0.0, 0
        for target in targets:
            while now < target:
                steps_taken += 1
                if steps_taken > max_steps:
                    raise RuntimeError(f"integrate_flow: over {max_steps} steps before t={target}")
                trial = min(step, target - now)
                slopes = [slope]
                for stage in _DP_STAGES:
                    slopes.append(tuple(rhs(_combine(state, trial, slopes, stage))))
                new_state = _combine(state, trial, slopes, _DP_WEIGHTS)
                slopes.append(tuple(rhs(new_state)))
                zero = tuple(torch.zeros_like(x) for x in state)
                errors = _combine(zero, trial, slopes, _DP_ERROR)
                scale = tuple(
                    atol + rtol * torch.maximum(a.abs(), b.abs()) for a, b in zip(state, new_state, strict=True)
                )
                error = _max_scaled(errors, scale)
                factor = 10.0 if error == 0.0 else min(10.0, max(0.2, 0.9 * error**-0.2))
                if error <= 1.0:
                    clipped = trial < step
                    now = target if trial == target - now else now + trial
                    state, slope = new_state, slopes[-1]
                    step = max(step, trial * factor) if clipped else trial * factor
                else:
                    step = trial * min(1.0, factor)
                    if now + step == now:
                        raise RuntimeError(f"integrate_flow: step size underflow at t={now}")
            outputs.append(state)
    return tuple(torch.stack(parts) for parts in zip(*outputs, strict=True))


def integrate_gradient_flow(
    features0: Tensor,
    weight0: Tensor,
    bias0: Tensor,
    labels: Tensor,
    times: Sequence[float] | Tensor,
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> FlowState:
    """The full nonlinear gradient flow ``Z' = −∇R(Z)`` at ``times`` (Mixon et al., Section 3).

    Adaptive Dormand–Prince RK45 (:func:`integrate_flow`) driven by ``ufm_gradients``. Returns a
    :class:`FlowState` whose tensors have a leading time dimension of length ``len(times)``.
    """
    states = integrate_flow(lambda z: gradient_flow_rhs(*z, labels), (features0, weight0, bias0), times, rtol, atol)
    return FlowState(*states)


def gradient_descent(
    features0: Tensor,
    weight0: Tensor,
    bias0: Tensor,
    labels: Tensor,
    lr: float,
    steps: int,
    record_steps: Sequence[int] | None = None,
) -> tuple[FlowState, FlowState | None]:
    """Full-batch gradient descent ``Z_{k+1} = Z_k − η∇R(Z_k)`` (Mixon et al., Section 3).

    Uses the closed-form gradient ``ufm_gradients``. Returns ``(final, recorded)``: the state after
    ``steps`` steps and, when ``record_steps`` is given, the states after each of those step counts
    (``0 ≤ k ≤ steps``) stacked along a new leading dimension, else ``None``. Step ``k`` is the
    discrete counterpart of the gradient flow at time ``kη``.
    """
    wanted = set(record_steps) if record_steps is not None else set()
    if wanted and (min(wanted) < 0 or max(wanted) > steps):
        raise ValueError(f"record_steps must lie in [0, {steps}], got {list(wanted)}")
    snapshots: dict[int, FlowState] = {}
    state = FlowState(features0, weight0, bias0)
    with torch.no_grad():
        for step in range(steps + 1):
            if step in wanted:
                snapshots[step] = state
            if step < steps:
                grads = ufm_gradients(*state, labels)
                state = FlowState(*(x - lr * g for x, g in zip(state, grads, strict=True)))
    if record_steps is None:
        return state, None
    ordered = [snapshots[k] for k in record_steps]
    return state, FlowState(*(torch.stack(parts) for parts in zip(*ordered, strict=True)))
