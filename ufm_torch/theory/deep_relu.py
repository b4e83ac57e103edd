"""The deep ReLU UFM with MSE and no bias, balanced classes: the optimum for K = 2 and the DNC reference for K > 2.

The DNC family (``docs/deep_ufm_theory.md``, §4) has N samples in each of K classes and L + 1 free scalars
``ρ_0, …, ρ_L > 0``; with ``P`` ((K − 1) × K, orthonormal rows orthogonal to 1, the Helmert basis) and
``u_k = √(K/(K − 1)) P e_k`` (unit vectors of a simplex ETF in the first K − 1 coordinates of R^p):

- DNC1: every sample of class k has the same features at every layer;
- DNC2: the H_1 class means ``ρ_0 u_k`` form a simplex ETF; the post-ReLU class means of ``H_l`` (l ≥ 2) are
  ``a_l e_k``, an orthogonal frame of equal norms ``a_l = ρ_0ρ_1⋯ρ_{l−1}``;
- DNC3: ``W_1 = ρ_1 √(K/(K − 1)) E Pᵀ Eᵀ`` (its rows are the ETF directions: ``W_1 u_k = ρ_1 (K/(K − 1))(e_k − 1/K)``
  and ReLU keeps ``ρ_1 e_k``), ``W_l = ρ_l E Eᵀ`` for hidden layers, ``W_L = ρ_L Eᵀ`` (E: the first K coordinates).

Its loss is ``(z − 1)²/2 + (K/2)(Nλ_{H_1}ρ_0² + Σ_l λ_{W_l}ρ_l²)`` with logit ``z = Πρ_j``; AM–GM over the L + 1
terms at fixed z gives ``ρ_0 = √(τ/(Nλ_{H_1})) t``, ``ρ_l = √(τ/λ_{W_l}) t``, ``z = t^{L+1}/√N``, and the loss is
K times the single class's ``g(t)`` of :func:`ufm_torch.theory.deep_linear.class_scale` with ``n_k = N``,
``n = KN``: the DNC optimum has the loss of the balanced deep *linear* optimum. Any PSD Gram with constant
diagonal and non-positive off-diagonal entries (the ETF, the orthogonal frame and everything between) gives
H_1 class means of the same loss: only the post-ReLU layers and ``W_2, …, W_L`` are determined.

- K = 2: Súkeník, Mondelli and Lampert 2023, "Deep neural collapse is provably optimal for the deep
  unconstrained features model" (NeurIPS), main theorem: for binary classification every global minimiser of
  the L-DUFM is DNC (or zero), so the DNC optimum is the global optimum.
- K > 2: Súkeník, Lampert and Mondelli 2024, "Neural collapse versus low-rank bias: is deep neural collapse
  really optimal?" (NeurIPS): DNC is not optimal in general (lower-rank solutions win for several layers or many
  classes), and no closed form is known; the DNC value is a reference, and a run's ``optimum/loss_vs_dnc``
  (f − f_DNC) may be negative.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ufm_torch.theory.deep_linear import class_scale, scalar_loss
from ufm_torch.theory.deep_problem import DTYPE, DeepUFMOptimum, DeepUFMProblem, OracleAssumptionError, check_no_bias


def helmert_basis(num_classes: int) -> Tensor:
    """``P`` ((K − 1) × K): orthonormal rows spanning the complement of 1, so ``PᵀP = I − 11ᵀ/K``."""
    rows = torch.zeros(num_classes - 1, num_classes, dtype=DTYPE)
    for index in range(1, num_classes):
        rows[index - 1, :index] = 1.0
        rows[index - 1, index] = -index
        rows[index - 1] /= math.sqrt(index * (index + 1))
    return rows


def dnc_point(problem: DeepUFMProblem, scales: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    """``(class_means, weights)`` of the DNC family at ``scales`` ``(ρ_0, …, ρ_L)`` (module docstring).

    ``class_means`` is K × p (row k: the H_1 mean of class k), ``weights`` ``W_1, …, W_L`` in ``nn.Linear`` shape.
    Needs p ≥ K − 1 and width ≥ K.
    """
    k = problem.num_classes
    etf = math.sqrt(k / (k - 1)) * helmert_basis(k)  # column k: u_k
    class_means = torch.zeros(k, problem.feature_dim, dtype=DTYPE)
    class_means[:, : k - 1] = scales[0] * etf.T
    weights = []
    for layer, (out_dim, in_dim) in enumerate(problem.layer_shapes, start=1):
        weight = torch.zeros(out_dim, in_dim, dtype=DTYPE)
        if layer == 1:
            weight[:k, : k - 1] = scales[1] * etf.T
        else:
            weight[:k, :k] = scales[layer] * torch.eye(k, dtype=DTYPE)
        weights.append(weight)
    return class_means, tuple(weights)


def dnc_scales(problem: DeepUFMProblem, scale: float) -> Tensor:
    """``(ρ_0, …, ρ_L)`` of the DNC family's cheapest point with logit ``z = t^{L+1}/√N`` (t = ``scale``):
    ``ρ_0 = √(τ/(Nλ_{H_1})) t``, ``ρ_l = √(τ/λ_{W_l}) t``, so that every factor pays ``(K/2)τt²`` (AM–GM)."""
    decays = (problem.class_sizes[0] * problem.feature_decay, *problem.layer_decays)
    return torch.tensor([math.sqrt(problem.tau / decay) * scale for decay in decays], dtype=DTYPE)


def _dnc_optimum(problem: DeepUFMProblem, is_global: bool) -> DeepUFMOptimum:
    """The best point of the DNC family: one scale t from the balanced scalar equation (module docstring)."""
    k, depth = problem.num_classes, problem.depth
    scale = class_scale(math.sqrt(problem.class_sizes[0]), problem.num_samples, problem.tau, depth + 1)
    rho = dnc_scales(problem, scale)
    class_means, weights = dnc_point(problem, rho)
    eye = torch.eye(k, dtype=DTYPE)
    centred = k / (k - 1) * (eye - 1.0 / k)
    norms = rho.cumprod(0)  # a_l = ρ_0⋯ρ_{l−1} for l ≥ 2, then z = ρ_0⋯ρ_L
    feature_grams = (rho[0] ** 2 * centred, *(norms[layer - 1] ** 2 * eye for layer in range(2, depth + 1)))
    first = torch.full((k,), float(rho[1]) * math.sqrt(k / (k - 1)), dtype=DTYPE)
    first[-1] = 0.0
    singular_values = torch.stack([first, *(torch.full((k,), float(r), dtype=DTYPE) for r in rho[2:])])
    scales = torch.full((k,), scale, dtype=DTYPE)
    return DeepUFMOptimum(
        problem=problem,
        loss=scalar_loss(scales, problem),
        is_global=is_global,
        class_scales=scales,
        logit_matrix=float(norms[-1]) * eye,
        feature_grams=feature_grams,
        classifier_gram=rho[-1] ** 2 * eye,
        product_gram=float(rho[1:].prod()) ** 2 * centred,
        weight_singular_values=singular_values,
        class_means=class_means,
        weights=weights,
    )


def _relu_problem(
    class_sizes: tuple[int, ...],
    feature_dim: int,
    width: int,
    depth: int,
    feature_decay: float,
    hidden_decay: float,
    classifier_decay: float,
    bias: bool,
) -> DeepUFMProblem:
    """The ReLU problem, checked against the DNC construction's assumptions (balanced, L ≥ 2, p ≥ K − 1, d ≥ K)."""
    check_no_bias(bias)
    problem = DeepUFMProblem(
        tuple(class_sizes), feature_dim, width, depth, feature_decay, hidden_decay, classifier_decay, "relu"
    )
    k = problem.num_classes
    if not problem.balanced:
        raise OracleAssumptionError(f"the ReLU oracles need balanced classes, got class sizes {problem.class_sizes}")
    if depth < 2:
        raise OracleAssumptionError("depth 1 has no ReLU layer: use deep_linear_optimum (or theory.optimum)")
    if width < k or feature_dim < k - 1:
        raise OracleAssumptionError(
            f"the DNC construction needs width ≥ K and feature_dim ≥ K − 1, got width={width}, "
            f"feature_dim={feature_dim}, K={k}"
        )
    return problem


def relu_two_class_optimum(
    class_sizes: tuple[int, ...],
    feature_dim: int,
    width: int,
    depth: int,
    feature_decay: float,
    hidden_decay: float,
    classifier_decay: float,
    bias: bool = False,
) -> DeepUFMOptimum:
    """The global optimum of the bias-free deep ReLU UFM with MSE for K = 2 balanced classes (Súkeník et al. 2023).

    Every global minimiser is DNC (main theorem, binary case, any L ≥ 2), so f* is the DNC family's minimum
    (module docstring): ``f* = 2g(t)``, ``g(t) = (t^{L+1} − √N)²/(2n) + ((L+1)/2)τt²``, n = 2N, with t from
    ``nτ = t^{L−1}(√N − t^{L+1})`` or 0 (the zero regime, f* = ½), exactly the balanced deep linear optimum.
    Assumptions: K = 2 (use :func:`relu_dnc_reference` for K > 2), n_1 = n_2, depth L ≥ 2, width ≥ 2,
    feature_dim ≥ 1 (the H_1 means may be antipodal), no bias, decays > 0; else
    :class:`~ufm_torch.theory.deep_problem.OracleAssumptionError`.
    """
    problem = _relu_problem(class_sizes, feature_dim, width, depth, feature_decay, hidden_decay, classifier_decay, bias)
    if problem.num_classes != 2:
        raise OracleAssumptionError(
            f"the ReLU global optimum is proved for K = 2 only, got K = {problem.num_classes}: use relu_dnc_reference"
        )
    return _dnc_optimum(problem, is_global=True)


def relu_dnc_reference(
    class_sizes: tuple[int, ...],
    feature_dim: int,
    width: int,
    depth: int,
    feature_decay: float,
    hidden_decay: float,
    classifier_decay: float,
    bias: bool = False,
) -> DeepUFMOptimum:
    """The best deep-neural-collapse point of the bias-free deep ReLU UFM with MSE, balanced classes, any K ≥ 2.

    A reference, not a global optimum, for K > 2 (Súkeník, Lampert and Mondelli 2024: lower-rank solutions can
    beat it): ``is_global`` is True only for K = 2, and :meth:`DeepUFMOptimum.metrics` reports
    ``optimum/loss_vs_dnc`` = f − f_DNC (a difference; negative means the run beat DNC). The family's L + 1
    scalars ρ_j reduce by AM–GM to one, t (module docstring), so ``f_DNC = K g(t)`` is exact, not a numerical
    minimum. Assumptions: n_k = N for every class, depth L ≥ 2, width ≥ K, feature_dim ≥ K − 1, no bias,
    decays > 0; else :class:`~ufm_torch.theory.deep_problem.OracleAssumptionError`.
    """
    problem = _relu_problem(class_sizes, feature_dim, width, depth, feature_decay, hidden_decay, classifier_decay, bias)
    return _dnc_optimum(problem, is_global=problem.num_classes == 2)
