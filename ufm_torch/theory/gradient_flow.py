"""The paper's closed forms (Lemma 4, Theorems 2 and 3) and integrators to check them against.

Everything follows the row convention of :mod:`ufm_torch.objectives.ufm`: ``features`` ``(..., CN, p)``
is the paper's ``Hᵀ``, ``weight`` ``(..., C, p)`` is ``W``, ``bias`` ``(..., C)`` is ``b``;
leading dimensions are replicas. Functions that take ``num_classes`` and ``samples_per_class``
instead of labels assume the UFM's class-major order ``labels = arange(C).repeat_interleave(N)``,
i.e. the paper's ``Y = I_C ⊗ 1_Nᵀ``. Symbols: ``C`` classes, ``N`` samples per class, ``p``
feature dimension.

Reference: D. G. Mixon, H. Parshall, J. Pi, "Neural collapse with unconstrained features".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy.integrate import DOP853, solve_ivp
from torch import Tensor

from ufm_torch.objectives.ufm import residual, ufm_gradients


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


State = tuple[Tensor, ...]

# solve_ivp method: Dormand–Prince 8(5,3). At the rtol 1e-10..1e-11 of tests/test_theory.py it needs 2-4x fewer
# evaluations of the right-hand side than RK45, with errors still well inside the tests' tolerances.
_METHOD = DOP853


def _flatten(state: State) -> np.ndarray:
    """The components of ``state`` raveled and concatenated into one float64 vector."""
    return np.concatenate([x.detach().cpu().reshape(-1).to(torch.float64).numpy() for x in state])


def _unflatten(vector: np.ndarray, like: State) -> State:
    """Inverse of :func:`_flatten`: split ``vector (..., n)`` into ``like``'s shapes, dtypes and devices.

    Leading dimensions of ``vector`` are kept in front of each component's shape.
    """
    flat = torch.from_numpy(np.ascontiguousarray(vector))
    pieces = flat.split([x.numel() for x in like], dim=-1)
    return tuple(
        piece.reshape((*flat.shape[:-1], *x.shape)).to(dtype=x.dtype, device=x.device)
        for piece, x in zip(pieces, like, strict=True)
    )


def integrate_flow(
    rhs: Callable[[State], State],
    state0: State,
    times: Sequence[float] | Tensor,
    rtol: float = 1e-9,
    atol: float = 1e-12,
    max_steps: int = 1_000_000,
) -> State:
    """Integrate the autonomous ODE ``y' = rhs(y)``, ``y(0) = state0``, with ``scipy.integrate.solve_ivp``.

    ``state0`` is a tuple of tensors, flattened into one float64 vector ``y`` (replicas share one
    step size); ``rhs`` receives and returns tensors of ``state0``'s shapes, dtypes and device.
    Method DOP853 (Dormand–Prince 8(5,3)); a step is accepted when the RMS over all components of
    ``local error / (atol + rtol · max(|y_old|, |y_new|))`` is at most 1. ``times`` are nonnegative
    and nondecreasing; states at them come from the method's dense output (``t_eval``, which is
    exactly ``state0`` at ``t = 0``). ``max_steps`` bounds the step attempts, counted as
    ``n_stages = 12`` evaluations of ``rhs`` each. Returns the states at ``times``, each component
    stacked along a new leading dimension. Raises ``RuntimeError`` when solve_ivp fails, when the
    step budget is spent or when ``rhs`` returns a non-finite value.
    """
    targets = torch.as_tensor(times, dtype=torch.float64).reshape(-1).numpy()
    if (targets < 0).any() or (np.diff(targets) < 0).any():
        raise ValueError(f"times must be nonnegative and nondecreasing, got {targets.tolist()}")
    unique, position = np.unique(targets, return_inverse=True)
    y0 = _flatten(state0)
    if unique.size == 0 or unique[-1] == 0.0:
        return _unflatten(np.repeat(y0[None], targets.size, axis=0), state0)
    budget = max_steps * _METHOD.n_stages
    evaluations = 0

    def flat_rhs(t: float, y: np.ndarray) -> np.ndarray:
        """``rhs`` on the flattened state (``t`` unused: the ODE is autonomous)."""
        nonlocal evaluations
        evaluations += 1
        if evaluations > budget:
            raise RuntimeError(f"integrate_flow: over {max_steps} steps ({budget} evaluations of rhs) before t={t}")
        slope = _flatten(rhs(_unflatten(y, state0)))
        if not np.isfinite(slope).all():  # solve_ivp would shrink a NaN step size forever
            raise RuntimeError(f"integrate_flow: rhs is not finite at t={t}")
        return slope

    with torch.no_grad():
        solution = solve_ivp(flat_rhs, (0.0, unique[-1]), y0, method=_METHOD, t_eval=unique, rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"integrate_flow: solve_ivp failed: {solution.message}")
    return _unflatten(solution.y.T[position], state0)


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

    :func:`integrate_flow` (scipy's solve_ivp) driven by ``ufm_gradients``. Returns a
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
