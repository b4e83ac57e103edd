"""Softmax codes: unit rows ``W ∈ R^{C×p}`` that maximise the one-vs-rest distance ``ρ(W)``, found numerically.

Jiang et al. 2024 (ICML, "Generalized neural collapse for a large number of classes") show that the classifier of the
spherical UFM tends, as the temperature τ grows, to a softmax code

    W* ∈ argmax_{‖w_k‖ = 1} ρ(W),   ρ(W) = min_k dist(w_k, conv{w_j : j ≠ k}).

By duality each distance is a margin, ``dist(w_k, conv{w_j}) = max_{‖h‖≤1} min_{j≠k} ⟨w_k − w_j, h⟩`` (for a positive
distance), so ``max_W ρ(W) = max_{W,H} min_{k, j≠k} ⟨w_k − w_j, h_k⟩`` over unit rows ``W`` and ``H`` (their
"hardmax" problem, the τ → ∞ limit of the spherical UFM's cross-entropy with one feature ``h_k`` per class).

**Method.** :func:`softmax_code` maximises the smooth surrogate (a soft minimum of the margins, of sharpness β)

    F_β(W, H) = −(1/β) log Σ_k Σ_{j≠k} exp(−β⟨w_k − w_j, h_k⟩),   min margin − log(C(C−1))/β ≤ F_β ≤ min margin,

1. *exploration*: ``restarts`` random starts at once (Gaussian rows, normalised, ``H = W``), Adam on the Riemannian
   gradient with every row renormalised after each step, β doubling from :data:`INITIAL_SHARPNESS` over ``stages``
   stages of ``steps`` steps while the learning rate decays ×0.7 per stage;
2. *polish*: the start with the largest exact ``ρ`` continues by plain Riemannian gradient ascent (step
   :data:`POLISH_STEP`/β, retraction by normalisation), β doubling for ``polish_stages`` more stages, and is kept if
   its exact ``ρ`` rose.

Every reported ``ρ`` is computed exactly (:func:`~ufm_torch.metrics.hyperspherical.softmax_code_margin`, certified
to 1e-10), so it is a certified *lower bound* on the optimum; that the code is optimal is certified only where the
optimum is known (``docs/many_classes.md``). One step costs ``O(restarts · C² p)`` time and ``O(restarts · C²)``
memory: the solver is for ``C`` up to a few hundred.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ufm_torch.metrics.hyperspherical import max_pairwise_cosine, softmax_code_margin

INITIAL_SHARPNESS = 10.0
"""β of the first stage; the surrogate's bias ``log(C(C−1))/β`` is then of the order of the margins themselves."""

LEARNING_RATE = 0.01
"""Adam's learning rate in the first exploration stage."""

LEARNING_RATE_DECAY = 0.7
"""Factor of the learning rate per exploration stage."""

POLISH_STEP = 4.0
"""The polish's step is ``POLISH_STEP/β`` (the surrogate's curvature is of order β; 1, 2 and 4 were stable on the
exact cases, 4 converged fastest: the icosahedron's ρ to 3e-10 where 1 left 6e-9)."""


class SoftmaxCode(NamedTuple):
    """The best code found: ``weight`` ``(C, p)`` unit rows (float64), its ``margin`` ``ρ(W)`` (exact to 1e-10),
    ``max_cosine`` ``max_{j≠k} ⟨w_j, w_k⟩`` and ``start_margins`` ``(restarts,)``, the exact ``ρ`` of every start
    after exploration (how often the best value was reached)."""

    weight: Tensor
    margin: Tensor
    max_cosine: Tensor
    start_margins: Tensor


def surrogate_gradients(weight: Tensor, duals: Tensor, sharpness: float) -> tuple[Tensor, Tensor]:
    """Riemannian gradients of ``F_β`` (module docstring) with respect to the unit rows of ``weight`` ``W`` and
    ``duals`` ``H`` (both ``(..., C, p)``): with ``π`` the soft-min weights of the margins ``m_kj = ⟨w_k − w_j, h_k⟩``
    (``Σ_{k, j≠k} π_kj = 1``) and ``r_k = Σ_j π_kj``, ``∂F/∂h_k = r_k w_k − Σ_j π_kj w_j``,
    ``∂F/∂w_k = r_k h_k − Σ_i π_ik h_i``, each projected onto the tangent space ``x ↦ g − ⟨g, x⟩x``."""
    products = duals @ weight.transpose(-1, -2)  # ⟨h_k, w_j⟩
    margins = products.diagonal(dim1=-2, dim2=-1)[..., :, None] - products
    margins.diagonal(dim1=-2, dim2=-1).fill_(torch.inf)
    weights = torch.softmax(-sharpness * margins.flatten(-2), dim=-1).view_as(margins)
    totals = weights.sum(dim=-1, keepdim=True)
    dual_gradient = totals * weight - weights @ weight
    weight_gradient = totals * duals - weights.transpose(-1, -2) @ duals
    return (
        weight_gradient - (weight_gradient * weight).sum(dim=-1, keepdim=True) * weight,
        dual_gradient - (dual_gradient * duals).sum(dim=-1, keepdim=True) * duals,
    )


def normalise_(rows: Tensor) -> Tensor:
    """Divide every row by its norm, in place."""
    return rows.div_(rows.norm(dim=-1, keepdim=True))


def explore(weight: Tensor, duals: Tensor, stages: int, steps: int) -> tuple[Tensor, Tensor]:
    """Step 1 of :func:`softmax_code`: Adam on ``(W, H)`` of every start at once, β doubling per stage."""
    optimizer = torch.optim.Adam([weight, duals], lr=LEARNING_RATE)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=LEARNING_RATE_DECAY)
    for stage in range(stages):
        sharpness = INITIAL_SHARPNESS * 2**stage
        for _ in range(steps):
            weight_gradient, dual_gradient = surrogate_gradients(weight, duals, sharpness)
            weight.grad, duals.grad = -weight_gradient, -dual_gradient
            optimizer.step()
            normalise_(weight)
            normalise_(duals)
        scheduler.step()
    return weight, duals


def polish(weight: Tensor, duals: Tensor, first_stage: int, stages: int, steps: int) -> Tensor:
    """Step 2 of :func:`softmax_code`: Riemannian gradient ascent with step ``POLISH_STEP/β``, β doubling per stage."""
    for stage in range(first_stage, first_stage + stages):
        sharpness = INITIAL_SHARPNESS * 2**stage
        for _ in range(steps):
            weight_gradient, dual_gradient = surrogate_gradients(weight, duals, sharpness)
            weight = normalise_(weight + POLISH_STEP * weight_gradient / sharpness)
            duals = normalise_(duals + POLISH_STEP * dual_gradient / sharpness)
    return weight


@torch.no_grad()
def softmax_code(
    num_classes: int, feature_dim: int, restarts: int = 8, stages: int = 10, steps: int = 150,
    polish_stages: int = 4, seed: int = 0,
) -> SoftmaxCode:  # fmt: skip
    """The best softmax code found for ``C = num_classes`` unit vectors in ``R^p``, ``p = feature_dim`` (Jiang et al.
    2024, ICML, the softmax code; method in the module docstring: ``restarts`` starts explored by Adam over
    ``stages`` × ``steps`` steps of a soft-min surrogate of sharpness doubling from 10, the best polished by
    Riemannian gradient ascent over ``polish_stages`` × ``steps`` more). Deterministic given ``seed``; float64 on the
    CPU.

    Reached on the known optima (``tests/test_softmax_code.py``, ``ρ`` within 1e-8): the simplex ETF for
    ``C ≤ p + 1`` (``ρ = C/(C−1)``), the regular C-gon in ``p = 2`` (``1 − cos(2π/C)``), the orthoplex at ``C = 2p``
    (``ρ = 1``) and the tetrahedron, octahedron and icosahedron in ``p = 3``. Elsewhere the result is the best found,
    a certified lower bound on the optimal ``ρ`` only.
    """
    if num_classes < 2 or feature_dim < 1:
        raise ValueError(f"a softmax code needs C ≥ 2 and p ≥ 1, got C = {num_classes}, p = {feature_dim}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randn(restarts, num_classes, feature_dim, generator=generator, dtype=torch.float64)
    weight = normalise_(starts)
    weight, duals = explore(weight, weight.clone(), stages, steps)
    start_margins = softmax_code_margin(weight)
    best = int(start_margins.argmax())
    polished = polish(weight[best].clone(), duals[best].clone(), stages, polish_stages, steps)
    margin = softmax_code_margin(polished)
    code, margin = (polished, margin) if margin > start_margins[best] else (weight[best], start_margins[best])
    return SoftmaxCode(code, margin, max_pairwise_cosine(code), start_margins)
