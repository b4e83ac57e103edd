"""Distance from a row of a matrix to the convex hull of the other rows, exact up to a certified gap.

For rows ``w_1, …, w_C`` of ``W`` ``(C, p)`` and a row ``k``,

    d_k = dist(w_k, conv{w_j : j ≠ k}) = min_{λ ∈ Δ} ‖x(λ)‖,   x(λ) = Σ_{j≠k} λ_j (w_k − w_j),

``Δ`` the probability simplex: the minimum-norm point of the polytope ``conv{w_k − w_j}`` (Wolfe 1976, "Finding the
nearest point in a polytope", Math. Programming 11). It is solved as a non-negative least-squares problem with the
sum-to-one condition in an appended row (Lawson & Hanson 1974, "Solving least squares problems", ch. 23, the
least-distance programme):

    min_{μ ≥ 0} ‖Pμ‖² + (1ᵀμ − 1)²,   P = [w_k − w_j]_j (columns),   λ = μ / 1ᵀμ.

No penalty weight enters: for fixed ``λ`` the minimum over the scale ``s = 1ᵀμ`` is ``‖Pλ‖²/(1 + ‖Pλ‖²)``,
increasing in ``‖Pλ‖``, so the minimiser's ``λ`` is the minimum-norm point's. ``scipy.optimize.nnls`` (the
Lawson–Hanson active-set method) solves it in finitely many steps; one step adds a vertex and solves a least-squares
problem on the active ones, ``O(p s²)`` for ``s`` active vertices (``s ≤ p + 1``, Carathéodory).

**Candidates and certificate (column generation).** Only the ``m`` rows nearest to ``w_k`` (:data:`CANDIDATES`)
enter the first solve. Weak duality gives, for the solution's ``x`` and ``u = x/‖x‖``,

    min_{j≠k} ⟨w_k − w_j, u⟩  ≤  d_k  ≤  ‖x‖,

the lower bound taken over **all** rows (one row of ``u Wᵀ``); it meets the upper bound exactly at the optimum
(Wolfe's criterion ``⟨x, w_k − w_j⟩ ≥ ‖x‖²`` for every ``j``). While the gap exceeds the tolerance, the rows that
violate the criterion most (:data:`ADDITIONS` of them) join the candidates and the problem is solved again; each round
adds a row not yet used, so the loop ends. The rows of a block are solved together: one matrix product per round
gives every row's certificate. Cost per row: ``O(Cp)`` per round for the certificate (usually 2–3 rounds), plus the
active-set solves, about 1–2 ms each at ``p = 512`` and 64–128 candidates (``benchmarks/bench_hyperspherical.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor

HULL_TOLERANCE = 1e-10
"""Largest certified gap ``upper − lower`` accepted for a distance, in the units of ``W`` (unit rows: absolute)."""

CANDIDATES = 64
"""Nearest rows in the first solve of a row; at ``C = 10 000``, ``p = 512`` (random unit rows) about 70 rows are
active and 2–3 rounds add the missing ones (64 measured fastest of 32–192)."""

ADDITIONS = 32
"""Most violating rows added to a row's candidates per round."""

ROW_BLOCK = 64
"""Rows solved together: one ``(64, C)`` matrix of products per round (5 MiB at ``C = 10 000``)."""


class HullDistances(NamedTuple):
    """Certified bounds on ``d_k`` for the requested rows ``(r,)``, float64: ``distances`` the norm of a point of the
    hull's difference polytope (an upper bound, the distance itself to within ``distances − lower_bounds``) and
    ``lower_bounds`` the dual bound over all rows."""

    distances: Tensor
    lower_bounds: Tensor


def nearest_rows(weight: Tensor, rows: Tensor, count: int) -> list[list[int]]:
    """The ``count`` rows ``j ≠ k`` nearest to ``w_k`` in Euclidean distance, for each ``k`` in ``rows``."""
    products = weight[rows] @ weight.T
    closeness = 2 * products - weight.square().sum(dim=-1)  # ‖w_k − w_j‖² = ‖w_k‖² − closeness_kj
    closeness[torch.arange(rows.numel()), rows] = -torch.inf
    return closeness.topk(min(count, weight.shape[0] - 1), dim=-1).indices.tolist()


def minimum_norm_point(weight: np.ndarray, row: int, candidates: list[int]) -> np.ndarray:
    """``x = Σ_j λ_j (w_k − w_j)`` over the ``candidates`` ``j`` at the minimum norm (NNLS with the sum-to-one row)."""
    differences = weight[row] - weight[candidates]
    system = np.vstack([differences.T, np.ones((1, len(candidates)))])
    target = np.zeros(system.shape[0])
    target[-1] = 1.0
    scaled, _ = nnls(system, target, maxiter=10 * system.shape[1])
    return (scaled / scaled.sum()) @ differences


def solve_block(weight: Tensor, rows: Tensor, tolerance: float) -> tuple[Tensor, Tensor]:
    """Upper and lower bounds on ``d_k`` for a block of ``rows`` of ``weight`` (float64, CPU): candidate solves and
    certificate rounds until every gap is within ``tolerance`` or no row violates the optimality criterion."""
    upper = torch.empty(rows.numel(), dtype=torch.float64)
    lower = torch.empty_like(upper)
    candidates = nearest_rows(weight, rows, CANDIDATES)
    array = weight.numpy()
    pending = list(range(rows.numel()))
    while pending:
        indices = rows[pending]
        points = torch.from_numpy(np.stack([minimum_norm_point(array, int(rows[i]), candidates[i]) for i in pending]))
        norms = points.norm(dim=-1)
        directions = points / torch.where(norms > 0, norms, 1.0)[:, None]
        scores = directions @ weight.T
        margins = scores.gather(1, indices[:, None]) - scores  # ⟨w_k − w_j, u⟩
        margins[torch.arange(len(pending)), indices] = torch.inf
        bounds = torch.where(norms > tolerance, margins.amin(dim=-1), 0.0)
        upper[pending], lower[pending] = norms, bounds
        still = []
        for position, i in enumerate(pending):
            if norms[position] - bounds[position] <= tolerance:
                continue
            violations = margins[position].clone()
            violations[candidates[i]] = torch.inf
            violators = torch.nonzero(violations < norms[position] - tolerance).flatten()
            if violators.numel():
                worst = violators[violations[violators].argsort()[:ADDITIONS]]
                candidates[i] = candidates[i] + worst.tolist()
                still.append(i)
        pending = still
    return upper, lower


@torch.no_grad()
def hull_distances(weight: Tensor, rows: Tensor | None = None, tolerance: float = HULL_TOLERANCE) -> HullDistances:
    """``d_k = dist(w_k, conv{w_j : j ≠ k}) = min_{λ∈Δ} ‖w_k − Σ_{j≠k} λ_j w_j‖`` for the ``rows`` (default all) of
    ``weight`` ``(C, p)``, ``C ≥ 2``, with certified lower bounds (module docstring: Lawson–Hanson NNLS on candidate
    rows, the dual bound over all rows; the one-vs-rest distance in Jiang et al.'s 2024 softmax code).

    Float64 on the CPU (the active-set solves are scipy's), :data:`ROW_BLOCK` rows at a time (a ``(b, C)`` matrix of
    products per round, never ``C × C``); the returned tensors are on ``weight``'s device. A gap
    ``distances − lower_bounds`` above ``tolerance`` is left only where no row violates the optimality criterion by
    more than ``tolerance`` (the solver's own rounding).
    """
    device = weight.device
    weight = weight.detach().to(device="cpu", dtype=torch.float64)
    rows = torch.arange(weight.shape[0]) if rows is None else rows.to("cpu")
    bounds = [solve_block(weight, rows[start : start + ROW_BLOCK], tolerance)
              for start in range(0, rows.numel(), ROW_BLOCK)]  # fmt: skip
    upper, lower = (torch.cat([block[i] for block in bounds]) for i in range(2))
    return HullDistances(upper.to(device), lower.to(device))
