"""Metrics for any number of classes C against the feature dimension p: generalized collapse and spherical codes.

When ``C > p + 1`` no simplex ETF exists. Jiang et al. 2024 (ICML, "Generalized neural collapse for a large number of
classes") study the spherical UFM (features and classifier rows on the unit sphere, cross-entropy at temperature τ)
and its generalized collapse: GNC1, within-class variability of the normalised features collapses; GNC2, the
classifier tends (large τ) to a *softmax code*, an arrangement maximising the one-vs-rest distance

    ρ(W) = min_k dist(ŵ_k, conv{ŵ_j : j ≠ k}),   ŵ_k = w_k/‖w_k‖;

GNC3, each classifier row aligns with its class mean. Beside them, the spherical-code measures of how uniformly the
rows cover the sphere (Liu et al. 2018, "Learning towards minimum hyperspherical energy", NeurIPS; Liu et al. 2023,
"Generalizing and decoupling neural collapse via hyperspherical uniformity gap", ICLR): the largest pairwise cosine
(the Tammes objective), the smallest angle and the hyperspherical energies.

The functions take rows as given: the classifier's ``W`` (the spherical UFM has no bias), or class means that the
caller centred (``μ_c − μ_G``) where the global mean should not count. Shapes ``(..., C, p)`` with replicas in
``...``; results float64 ``(...)`` on the input's device; undefined values (``C < 2``, a zero row) NaN with a
:class:`CollapseMetricWarning`.

**Scale.** No ``C × C`` matrix is held whole: pairwise kernels run over tiles of :data:`PAIR_TILE` numbers (blocks of
rows of ``ŴŴᵀ``), so ``C = 10 000``, ``p = 512`` needs 32 MiB per tile. ``ρ`` solves hull distances only for the
rows that can attain the minimum (:func:`softmax_code_margin_bounds`); each solve is exact up to a certified gap
(:mod:`ufm_torch.metrics.convex_hull`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from ufm_torch.metrics.convex_hull import HULL_TOLERANCE, ROW_BLOCK, hull_distances
from ufm_torch.metrics.neural_collapse import SPREAD_TOLERANCE
from ufm_torch.metrics.statistics import class_statistics, divisor, warn_undefined

PAIR_TILE = 1 << 22
"""Numbers per tile of the cosine matrix (32 MiB of float64): ``PAIR_TILE // C`` rows at a time."""


def unit_directions(rows: Tensor, names: list[str]) -> tuple[Tensor, Tensor]:
    """``ŵ_k = w_k/‖w_k‖`` in float64 and where they are defined ``(...)``: ``C ≥ 2`` finite rows, none of them 0
    (otherwise a warning names ``names``)."""
    rows = rows.detach().to(torch.float64)
    norms = rows.norm(dim=-1)
    defined = (norms > 0).all(dim=-1) & rows.isfinite().all(dim=-1).all(dim=-1)
    if rows.shape[-2] < 2:
        defined = torch.zeros_like(defined)
    if not bool(defined.all()):
        warn_undefined(names, defined, f"they need C ≥ 2 finite non-zero rows (C = {rows.shape[-2]})")
    return (rows / divisor(norms)[..., None]).masked_fill_(~defined[..., None, None], 0.0), defined


def cosine_tiles(unit: Tensor) -> Iterator[tuple[int, Tensor]]:
    """Blocks of rows of ``ŴŴᵀ``: ``(first row, tile (..., b, C))``, at most :data:`PAIR_TILE` numbers each; the
    tile's entries ``⟨ŵ_k, ŵ_k⟩`` are ``tile.diagonal(first row, -2, -1)``."""
    num_rows = unit.shape[-2]
    rows_per_tile = max(1, PAIR_TILE // max(1, unit[..., 0].numel()))
    for start in range(0, num_rows, rows_per_tile):
        yield start, unit[..., start : start + rows_per_tile, :] @ unit.transpose(-1, -2)


def row_max_cosines(unit: Tensor) -> Tensor:
    """``max_{j≠k} ⟨ŵ_k, ŵ_j⟩`` for every row ``k``, ``(..., C)``, over tiles."""
    maxima = []
    for start, tile in cosine_tiles(unit):
        tile.diagonal(start, -2, -1).fill_(-torch.inf)
        maxima.append(tile.amax(dim=-1))
    return torch.cat(maxima, dim=-1)


def mean_over_pairs(unit: Tensor, kernel: str, exponent: float) -> Tensor:
    """``(1/(C(C−1))) Σ_{j≠k} f(‖ŵ_j − ŵ_k‖)`` with ``‖ŵ_j − ŵ_k‖² = 2 − 2⟨ŵ_j, ŵ_k⟩`` over tiles: ``f(r) = r^{−s}``
    (``kernel="riesz"``) or ``log(1/r)`` (``"log"``)."""
    total = unit.new_zeros(unit.shape[:-2])
    for start, tile in cosine_tiles(unit):
        squared = tile.mul_(-2).add_(2).clamp_(min=0)
        values = squared.pow_(-exponent / 2) if kernel == "riesz" else squared.log_().mul_(-0.5)
        values.diagonal(start, -2, -1).fill_(0)
        total = total + values.sum(dim=(-2, -1))
    num_classes = unit.shape[-2]
    return total / (num_classes * (num_classes - 1))


@torch.no_grad()
def max_pairwise_cosine(weight: Tensor) -> Tensor:
    """The Tammes objective ``max_{j≠k} ⟨w_j, w_k⟩/(‖w_j‖‖w_k‖)`` of the rows of ``weight`` ``(..., C, p)`` (Tammes
    1930; the coherence that spherical codes minimise, Conway & Sloane, "Sphere packings, lattices and groups", ch. 1):
    ``−1/(C−1)`` for a simplex ETF, the smallest possible. Tiles of ``ŴŴᵀ``, float64 ``(...)``."""
    unit, defined = unit_directions(weight, ["max_pairwise_cosine"])
    return torch.where(defined, row_max_cosines(unit).amax(dim=-1), torch.nan)


@torch.no_grad()
def min_pairwise_angle(weight: Tensor) -> Tensor:
    """The smallest angle ``min_{j≠k} ∠(w_j, w_k) = arccos max_{j≠k} cos(w_j, w_k)`` in radians, the quantity the
    Tammes problem maximises (:func:`max_pairwise_cosine`). Near 0 the arccos of a rounded cosine is accurate to about
    ``√ε ≈ 1e-8`` rad."""
    return torch.arccos(max_pairwise_cosine(weight).clamp(-1, 1))


@torch.no_grad()
def hyperspherical_energy(weight: Tensor, exponent: float = 1.0) -> Tensor:
    """Riesz hyperspherical energy ``E_s = (1/(C(C−1))) Σ_{j≠k} ‖ŵ_j − ŵ_k‖^{−s}`` of the normalised rows of
    ``weight`` ``(..., C, p)``, ``s = exponent > 0`` (default 1), normalised as the mean over pairs (Liu et al. 2018,
    "Learning towards minimum hyperspherical energy", NeurIPS, the energy with ``f_s(z) = z^{−s}``; Liu et al. 2023,
    hyperspherical uniformity). ``‖ŵ_j − ŵ_k‖² = 2 − 2cos``, over tiles; ``+inf`` where two directions coincide."""
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0 (s = 0 is log_hyperspherical_energy), got {exponent}")
    unit, defined = unit_directions(weight, ["hyperspherical_energy"])
    return torch.where(defined, mean_over_pairs(unit, "riesz", exponent), torch.nan)


@torch.no_grad()
def log_hyperspherical_energy(weight: Tensor) -> Tensor:
    """Logarithmic hyperspherical energy ``E_0 = (1/(C(C−1))) Σ_{j≠k} log(1/‖ŵ_j − ŵ_k‖)`` of the normalised rows of
    ``weight`` ``(..., C, p)`` (Liu et al. 2018, the energy with ``f_0(z) = log(1/z)``; the mean of the logarithmic
    kernel of Liu et al. 2023, whose variance over pairs of centred means is
    :func:`~ufm_torch.metrics.variability.gnc2`). Over tiles; ``+inf`` where two directions coincide."""
    unit, defined = unit_directions(weight, ["log_hyperspherical_energy"])
    return torch.where(defined, mean_over_pairs(unit, "log", 0.0), torch.nan)


class MarginBounds(NamedTuple):
    """Certified bounds on ``ρ(W)``, float64 ``(...)``: ``value``, the smallest hull distance solved (``ρ`` itself
    when ``value − lower_bound ≤`` the tolerance, else an upper bound); ``lower_bound``; ``rows_solved``, how many
    rows' hull distances were solved (int64)."""

    value: Tensor
    lower_bound: Tensor
    rows_solved: Tensor


def margin_of_unit_rows(unit: Tensor, max_rows: int | None, tolerance: float) -> tuple[float, float, int]:
    """``(value, lower bound, rows solved)`` of :func:`softmax_code_margin_bounds` for one ``(C, p)`` matrix of unit
    rows on the CPU."""
    simple_bounds = 1 - row_max_cosines(unit)  # d_k ≥ min_j ⟨ŵ_k − ŵ_j, ŵ_k⟩, the dual bound at u = ŵ_k
    order = simple_bounds.argsort()
    value, solved_lower, solved = torch.inf, torch.inf, 0
    limit = unit.shape[0] if max_rows is None else min(max_rows, unit.shape[0])
    while solved < limit and simple_bounds[order[solved]] < value - tolerance:
        block = order[solved : solved + min(ROW_BLOCK, max(1, solved), limit - solved)]
        block = block[simple_bounds[block] < value - tolerance]
        distances = hull_distances(unit, block, tolerance)
        value = min(value, float(distances.distances.min()))
        solved_lower = min(solved_lower, float(distances.lower_bounds.min()))
        solved += block.numel()
    unsolved_lower = float(simple_bounds[order[solved]]) if solved < unit.shape[0] else torch.inf
    return value, min(solved_lower, unsolved_lower, value), solved


@torch.no_grad()
def softmax_code_margin_bounds(
    weight: Tensor, max_rows: int | None = None, tolerance: float = HULL_TOLERANCE
) -> MarginBounds:
    """Certified bounds on the one-vs-rest distance ``ρ(W) = min_k dist(ŵ_k, conv{ŵ_j : j ≠ k})`` of the normalised
    rows of ``weight`` ``(..., C, p)``, the quantity a softmax code maximises (Jiang et al. 2024, ICML, "Generalized
    neural collapse for a large number of classes", the softmax code and GNC2).

    Every row has the cheap lower bound ``d_k ≥ 1 − max_{j≠k} cos(w_k, w_j)`` (the dual bound at ``u = ŵ_k``, one
    tiled pass). Rows are solved exactly (:func:`~ufm_torch.metrics.convex_hull.hull_distances`) in increasing order
    of that bound, in blocks of 1, 1, 2, 4, …, 64 (``convex_hull.ROW_BLOCK``), until the next bound is at least the
    smallest distance found less ``tolerance``: every unsolved row is then provably no closer. Symmetric codes
    (simplex ETF, polygon, orthoplex, the Platonic solids) stop after one row, since there the bound is attained;
    unit rows in general position (random ``W``, ``C ≫ p``) have ``d_k`` above every bound and need every row, about
    5 ms each at ``p = 512`` (``benchmarks/bench_hyperspherical.py``). ``max_rows`` caps the rows solved per replica:
    the bounds then stay certified but may be apart. Computed on the CPU in float64.
    """
    unit, defined = unit_directions(weight, ["softmax_code_margin"])
    flat = unit.to("cpu").reshape(-1, *unit.shape[-2:])
    results = [margin_of_unit_rows(rows, max_rows, tolerance) for rows in flat]
    value, lower = (torch.tensor([result[i] for result in results], dtype=torch.float64) for i in range(2))
    solved = torch.tensor([result[2] for result in results], dtype=torch.int64)
    shape, device = unit.shape[:-2], weight.device
    value, lower = (torch.where(defined, bound.reshape(shape).to(device), torch.nan) for bound in (value, lower))
    return MarginBounds(value, lower, solved.reshape(shape).to(device))


@torch.no_grad()
def softmax_code_margin(weight: Tensor, tolerance: float = HULL_TOLERANCE) -> Tensor:
    """``ρ(W) = min_k dist(ŵ_k, conv{ŵ_j : j ≠ k})`` of the normalised rows of ``weight`` ``(..., C, p)``, certified to
    within ``tolerance`` (Jiang et al. 2024, ICML, the one-vs-rest distance of the softmax code, GNC2):
    ``C/(C−1)`` for a simplex ETF, ``1 − cos(2π/C)`` for the regular C-gon, 1 for the orthoplex ``±e_i``. Exact and
    pruned as in :func:`softmax_code_margin_bounds`; float64 ``(...)``."""
    return softmax_code_margin_bounds(weight, None, tolerance).value


@torch.no_grad()
def gnc1(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """GNC1 ``Tr(Σ_W Σ_B⁺)/C`` of the normalised features ``ĥ_i = h_i/‖h_i‖`` of ``features`` ``(..., n, p)`` with
    ``labels`` ``(n,)`` (Jiang et al. 2024, ICML, GNC1: Papyan et al.'s NC1 on the sphere), ``μ_c`` the class means of
    the ``ĥ_i``, ``μ_G`` their mean, ``Σ_W = (1/n) Σ_i (ĥ_i − μ_{y_i})(ĥ_i − μ_{y_i})ᵀ``, ``Σ_B = (1/C) Σ_c
    (μ_c − μ_G)(μ_c − μ_G)ᵀ``. Jiang et al.'s scripts take ``μ_G`` as the mean over samples; the two agree for
    balanced classes. ``Σ_B⁺`` through the SVD ``M̄ = USVᵀ`` of the centred means ``(C, p)``:
    ``Tr(Σ_W Σ_B⁺)/C = Σ_k v_kᵀ Σ_W v_k / s_k²`` over ``s_k > max(C, p)·ε·s_1``, with neither a ``C × C`` nor a
    ``p × p`` matrix (``O(C p min(C, p) + n p min(C, p))``). Float64 ``(...)``; NaN with a warning where a feature is
    0, a class has no samples, all class means coincide or ``C < 2``."""
    unit = features.detach().to(torch.float64, copy=True)  # the one (n, p) copy, normalised in place
    norms = unit.norm(dim=-1)
    unit.div_(divisor(norms)[..., None])
    statistics = class_statistics(unit, labels, num_classes)
    means = statistics.scaled_means
    centred = means - means.mean(dim=-2, keepdim=True)
    _, singular_values, directions = torch.linalg.svd(centred, full_matrices=False)
    kept = singular_values > max(centred.shape[-2:]) * torch.finfo(torch.float64).eps * singular_values[..., :1]
    within = statistics.within_scatter.quadratic_form(directions) / statistics.num_samples
    value = torch.where(kept, within / divisor(singular_values.square()), 0.0).sum(dim=-1)
    spread = singular_values[..., 0] > SPREAD_TOLERANCE * means.norm(dim=-1).amax(dim=-1)
    defined = (norms > 0).all(dim=-1) & spread & bool((statistics.counts > 0).all()) & (num_classes >= 2)
    if not bool(defined.all()):
        reason = "a feature is 0, a class has no samples, all class means coincide or C < 2"
        warn_undefined(["gnc1"], defined, reason)
    return torch.where(defined, value, torch.nan)


@torch.no_grad()
def gnc3(class_means: Tensor, weight: Tensor) -> Tensor:
    """GNC3 ``(1/C) Σ_k (1 − cos(w_k, h̄_k))`` of the classifier's rows ``weight`` and the class means ``h̄_k``
    (both ``(..., C, p)``) as given (Jiang et al. 2024, ICML, GNC3, self-duality ``ŵ_k = ĥ_k``): 0 when every row
    points at its class mean, in ``[0, 2]``. The paper's spherical UFM has no bias and no centring; Jiang et al.'s
    scripts pass ``μ_k − μ_G`` of the normalised features, which the caller centres. Float64 ``(...)``; NaN with a
    warning where a row of ``W`` or a mean is 0."""
    unit_means, means_defined = unit_directions(class_means, ["gnc3"])
    unit_weight, weight_defined = unit_directions(weight, ["gnc3"])
    value = (1 - torch.linalg.vecdot(unit_means, unit_weight)).mean(dim=-1)
    return torch.where(means_defined & weight_defined, value, torch.nan)
