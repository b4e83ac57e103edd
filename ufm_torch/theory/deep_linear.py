"""The global optimum of the deep linear UFM with MSE and no bias, for any class sizes, in closed form.

Dang, Tran, Osher, Tran-The, Ho and Nguyen 2023, "Neural collapse in deep linear networks: from balanced to
imbalanced data" (ICML), bias-free MSE results for balanced (§3) and imbalanced (§4) data; derived again and
checked against multi-start L-BFGS in ``docs/deep_ufm_theory.md`` (§1–3). With m = L + 1 factors,
``τ = (λ_{H_1} Π_l λ_{W_l})^{1/m}`` and ``d_k = √n_k``:

1. every minimiser is collapsed, and with ``X = W_L⋯W_1 M D`` (M the H_1 class means, ``D = diag(√n_k)``)
   ``f = (1/2n)‖X − D‖²_F + Σ_j a_j/2‖A_j‖²_F ≥ (1/2n)‖X − D‖²_F + (m/2)τ Σ_i σ_i(X)^{2/m}`` (weighted AM–GM and
   the Schatten-2/m factorisation bound), with equality for balanced factors;
2. by von Neumann's trace inequality ``X* = diag(s_k)`` with ``s_k = t_k^m`` and ``t_k`` the minimiser over
   ``t ≥ 0`` of ``g_k(t) = (t^m − d_k)²/(2n) + (m/2)τt²``: ``t_k > 0`` solves ``nτ = t^{m−2}(d_k − t^m)`` (the
   larger root) when ``nτ < nτ_*(d_k) = (m − 2)^{(m−2)/m} (d_k/(m − 1))^{2(m−1)/m}``, else ``t_k = 0``;
3. at most ``r = min(K, p, d)`` classes (``min(K, p)`` for L = 1) keep ``t_k > 0``: the largest ones.

Then ``f* = Σ_k g_k(t_k)`` and, with ``c_j = √(τ/a_j)`` (``a_0 = λ_{H_1}``, ``a_l = λ_{W_l}``):
``σ_k(W_l) = c_l t_k``, ``‖h_k‖ = c_0 t_k/√n_k``, class-mean Gram of ``H_l`` ``= diag(c_0²⋯c_{l−1}² t_k^{2l}/n_k)``,
``W_LW_Lᵀ = diag(c_L² t_k²)``, ``(W_L⋯W_1)(W_L⋯W_1)ᵀ = diag(c_1²⋯c_L² t_k^{2L})``, logits of class k
``(t_k^m/√n_k) e_k``; every factor pays the same ``a_j‖A_j‖²_F = τ Σ_k t_k²``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import brentq

from ufm_torch.theory.deep_problem import DTYPE, DeepUFMOptimum, DeepUFMProblem, check_no_bias


def class_scale(sqrt_size: float, num_samples: int, tau: float, num_factors: int) -> float:
    """``t ≥ 0`` minimising ``g(t) = (t^m − √n_k)²/(2n) + (m/2)τt²`` (m = ``num_factors`` = L + 1 ≥ 2).

    ``g'(t) = (mt/n)[t^{m−2}(t^m − √n_k) + nτ]``, so ``t > 0`` is stationary iff ``ψ(t) = t^{m−2}(√n_k − t^m) = nτ``.
    ``g(t) = g(0)`` and ``g'(t) = 0`` together give ``t_*^m = √n_k(m − 2)/(m − 1)`` and the threshold
    ``nτ_* = ψ(t_*) = t_*^{m−2}√n_k/(m − 1) = (m − 2)^{(m−2)/m}(√n_k/(m − 1))^{2(m−1)/m}``: for ``nτ ≥ nτ_*`` the
    minimiser is 0 (the collapse to zero is discontinuous for m ≥ 3: t jumps from ``t_*`` to 0), else it is the
    root of ψ = nτ on ``[t_*, n_k^{1/(2m)}]``, where ψ decreases. For m = 2 this is the soft threshold
    ``t² = (√n_k − nτ)₊`` of the single-layer UFM.
    """
    m = num_factors
    lower = (sqrt_size * (m - 2) / (m - 1)) ** (1.0 / m)
    if num_samples * tau >= lower ** (m - 2) * sqrt_size / (m - 1):
        return 0.0
    return brentq(
        lambda t: t ** (m - 2) * (sqrt_size - t**m) - num_samples * tau,
        lower,
        sqrt_size ** (1.0 / m),
        xtol=1e-15,
        rtol=4 * np.finfo(float).eps,
    )


def scalar_loss(scales: torch.Tensor, problem: DeepUFMProblem) -> float:
    """``Σ_k g_k(t_k) = Σ_k [(t_k^m − √n_k)²/(2n) + (m/2)τt_k²]``, m = L + 1: f at the best point with scales t."""
    m, n = problem.depth + 1, problem.num_samples
    sqrt_sizes = torch.tensor(problem.class_sizes, dtype=DTYPE).sqrt()
    values = (scales**m - sqrt_sizes).square() / (2 * n) + 0.5 * m * problem.tau * scales.square()
    return float(values.sum())


def deep_linear_optimum(
    class_sizes: tuple[int, ...],
    feature_dim: int,
    width: int,
    depth: int,
    feature_decay: float,
    hidden_decay: float,
    classifier_decay: float,
    bias: bool = False,
) -> DeepUFMOptimum:
    """The global optimum of the bias-free deep linear UFM with MSE (module docstring; Dang et al. 2023).

    Any class sizes ``n_k``, any p and width d (the rank of ``X*`` is at most ``r = min(K, p, d)``: the r largest
    classes keep ``t_k > 0``; where classes of equal size tie for the last places the optimum is not unique and
    the first in class order are kept), all decays > 0. Large decays give the zero regime ``t_k = 0``: per class
    (minority collapse, the smallest classes first) and, for ``nτ ≥ nτ_*(max_k n_k)``, everywhere (``f* = ½``).
    Raises :class:`~ufm_torch.theory.deep_problem.OracleAssumptionError` for a bias or a decay ≤ 0.
    """
    check_no_bias(bias)
    problem = DeepUFMProblem(
        tuple(class_sizes), feature_dim, width, depth, feature_decay, hidden_decay, classifier_decay, "linear"
    )
    k, m, n, tau = problem.num_classes, depth + 1, problem.num_samples, problem.tau
    rank = min(k, feature_dim) if depth == 1 else min(k, feature_dim, width)
    scales = torch.tensor([class_scale(math.sqrt(size), n, tau, m) for size in problem.class_sizes], dtype=DTYPE)
    largest_first = sorted(range(k), key=lambda cls: -problem.class_sizes[cls])
    scales[largest_first[rank:]] = 0.0

    sizes = torch.tensor(problem.class_sizes, dtype=DTYPE)
    factors = [math.sqrt(tau / decay) for decay in (feature_decay, *problem.layer_decays)]
    kept = torch.nonzero(scales).flatten()  # class kept[j] lives on coordinate j of H_1 and of every hidden layer
    coordinates = torch.arange(kept.numel())
    class_means = torch.zeros(k, feature_dim, dtype=DTYPE)
    class_means[kept, coordinates] = factors[0] * scales[kept] / sizes[kept].sqrt()
    weights = []
    for layer, (out_dim, in_dim) in enumerate(problem.layer_shapes, start=1):
        weight = torch.zeros(out_dim, in_dim, dtype=DTYPE)
        weight[kept if layer == depth else coordinates, coordinates] = factors[layer] * scales[kept]
        weights.append(weight)

    gains = torch.tensor(factors, dtype=DTYPE).square().cumprod(0)  # c_0², c_0²c_1², …
    feature_grams = tuple(torch.diag(gains[layer - 1] * scales ** (2 * layer) / sizes) for layer in range(1, depth + 1))
    return DeepUFMOptimum(
        problem=problem,
        loss=scalar_loss(scales, problem),
        is_global=True,
        class_scales=scales,
        logit_matrix=torch.diag(scales**m / sizes.sqrt()),
        feature_grams=feature_grams,
        classifier_gram=torch.diag(factors[-1] ** 2 * scales.square()),
        product_gram=torch.diag(math.prod(c**2 for c in factors[1:]) * scales ** (2 * depth)),
        weight_singular_values=torch.tensor(factors[1:], dtype=DTYPE).unsqueeze(-1) * scales,
        class_means=class_means,
        weights=tuple(weights),
    )
