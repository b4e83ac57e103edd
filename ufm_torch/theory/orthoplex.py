"""The spherical UFM in the orthoplex regime ``p + 2 ≤ C ≤ 2p``: the predicted code, its rival, trained codes.

The spherical UFM (Jiang et al. 2024, ICML, "Generalized neural collapse for a large number of classes": rows of
``W`` and ``H`` on the unit sphere, cross-entropy on the logits ``⟨w_k, h_i⟩/τ``) has, for ``C ≤ p + 1``, the simplex
ETF as its optimum. Alcala, Andreeva, Kobzar, Mixon, Na, Sule and Xie (2026, arXiv:2603.20587, "Neural collapse in
the orthoplex regime") characterise the geometry in the *orthoplex regime* ``d + 2 ≤ n ≤ 2d`` (our ``p + 2 ≤ C ≤
2p``) with Radon's theorem and convexity; their full text was not available to us, and the description below is our
own derivation (``docs/many_classes.md``, "The orthoplex regime"):

1. *Proved (Radon).* ``ρ(W) = min_k dist(w_k, conv{w_j : j ≠ k}) ≤ 1`` for unit rows once ``C ≥ p + 2``: Radon
   splits any ``p + 2`` rows into ``A ∪ B`` with a point ``x ∈ conv A ∩ conv B``; with ``x = Σ_{i∈A} a_i w_i``
   (convex weights), ``Σ_i a_i ‖w_i − x‖² = 1 − ‖x‖²``, so some ``i ∈ A`` has
   ``dist(w_i, conv{w_j : j ≠ i}) ≤ ‖w_i − x‖ ≤ √(1 − ‖x‖²) ≤ 1``.
2. *Proved.* If every ``⟨w_j, w_k⟩ ≤ 0`` then ``conv{w_j : j ≠ k} ⊂ {⟨w_k, ·⟩ ≤ 0}`` and ``ρ ≥ 1``. At most ``2p``
   unit vectors of ``R^p`` have pairwise non-positive inner products (Rankin 1955, "The closest packing of spherical
   caps in n dimensions"), so ``max ρ = 1`` exactly for ``p + 2 ≤ C ≤ 2p``, attained by a continuum of codes (every
   orthogonal sum of regular simplices that fits, among others): the softmax code alone does not fix the geometry.
3. *Dominant-term argument, checked numerically (not proved), and only within a window of τ.* At a finite τ with
   ``h_k = w_k`` the loss is about ``Σ_k Σ_{j≠k} exp((⟨w_j, w_k⟩ − 1)/τ)``. Among orthogonal sums of regular
   simplices (blocks of sizes ``s_i ≥ 2``, ``Σ(s_i − 1) ≤ p``, ``Σ s_i = C``) each orthogonal pair costs
   ``e^{−1/τ}`` and these dominate, so the number of pairs across blocks ``(C² − Σ s_i²)/2`` is minimised: the
   fewest blocks, ``C − p``, one of them as large as possible. The predicted geometry (:func:`orthoplex_regime_code`)
   is ``C − p − 1`` antipodal pairs and one regular simplex of ``2p + 2 − C`` vertices, mutually orthogonal
   (``C = 2p``: the orthoplex ``±e_i``; ``C = p + 2``: a pair and a ``p``-vertex simplex).
4. *What the numerics add.* The argument compares block codes only. Codes off that family do better at small τ:
   :func:`tilted_pairs_code`, ``C − p`` antipodal pairs tilted by a small angle away from ``2p − C`` lone vertices
   (``ρ < 1``), lowers the loss of every pair next to a lone vertex at first order. At its best tilt
   (:func:`best_tilted_pairs`) it beats the prediction below a crossover ``τ*(p, C)`` (about 0.10 for (4, 6), 0.23
   for (4, 7), 0.075 for (5, 7), 0.165 for (5, 8), 0.29 for (5, 9); ``C = 2p``: the same orthoplex), and above about
   τ = 0.5 other block codes (a (3, 3) split for (4, 6)) beat it. Between the two, multi-start minimisation and
   training end in the prediction (``tests/test_orthoplex.py``, ``experiment=orthoplex``).

:func:`code_blocks` splits a trained code into blocks (the connected components of the graph ``cos < −tolerance``)
and :func:`compare_with_regime` measures a trained ``(W, H)`` against the prediction (:class:`OrthoplexComparison`).
``tests/test_orthoplex.py`` checks the prediction against multi-start minimisation of the loss and a trained run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ufm_torch.metrics.hyperspherical import max_pairwise_cosine, softmax_code_margin

BLOCK_TOLERANCE = 1e-6
"""Two rows whose cosine is below ``−BLOCK_TOLERANCE`` lie in the same block (:func:`code_blocks`)."""


def check_regime(feature_dim: int, num_classes: int) -> None:
    """:class:`ValueError` unless ``p ≥ 2`` and ``p + 2 ≤ C ≤ 2p`` (the orthoplex regime)."""
    if feature_dim < 2 or not feature_dim + 2 <= num_classes <= 2 * feature_dim:
        raise ValueError(
            f"the orthoplex regime needs p ≥ 2 and p + 2 ≤ C ≤ 2p, got p = {feature_dim}, C = {num_classes}"
        )


def regime_block_sizes(feature_dim: int, num_classes: int) -> tuple[int, ...]:
    """The block sizes of the predicted code, ascending: ``C − p − 1`` antipodal pairs (size 2) and one regular
    simplex of ``2p + 2 − C`` vertices; ``C − p`` blocks in all, spanning ``Σ(s_i − 1) = p`` dimensions (module
    docstring, item 3; the orthoplex regime of Alcala et al. 2026). (4, 6) → (2, 4); (4, 8) → (2, 2, 2, 2)."""
    check_regime(feature_dim, num_classes)
    return tuple(sorted((2,) * (num_classes - feature_dim - 1) + (2 * feature_dim + 2 - num_classes,)))


def regular_simplex(size: int) -> Tensor:
    """``s = size`` unit vectors of ``R^{s−1}`` with pairwise inner products ``−1/(s−1)`` (the regular simplex, the
    simplex ETF; ``s = 2``: the antipodal pair ``±1``; ``s = 1``: the single vector ``1`` of ``R^1``), float64
    ``(s, max(s − 1, 1))``: the centred basis vectors ``e_i − 1/s`` of ``R^s``, normalised, in an orthonormal basis of
    their span."""
    if size < 1:
        raise ValueError(f"a regular simplex needs at least one vertex, got {size}")
    if size == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    centred = torch.eye(size, dtype=torch.float64) - 1.0 / size
    basis = torch.linalg.svd(centred).Vh[: size - 1]  # the span of the centred vectors, ⟂ 1
    rows = centred @ basis.T
    return rows / rows.norm(dim=-1, keepdim=True)


def block_code(sizes: Sequence[int], feature_dim: int) -> Tensor:
    """The orthogonal sum of regular simplices of the given ``sizes`` in ``R^p``: block ``i`` occupies its own
    ``max(s_i − 1, 1)`` coordinates (:func:`regular_simplex`), blocks are mutually orthogonal. Float64 ``(Σ s_i, p)``,
    rows in the order of ``sizes``; :class:`ValueError` when ``Σ max(s_i − 1, 1) > p``. Every inner product is
    ``≤ 0``, so ``ρ ≥ 1``, and ``ρ = 1`` once ``C ≥ p + 2`` (module docstring, items 1 and 2)."""
    dims = [max(size - 1, 1) for size in sizes]
    if sum(dims) > feature_dim:
        raise ValueError(f"blocks {tuple(sizes)} need {sum(dims)} dimensions, more than p = {feature_dim}")
    code = torch.zeros(sum(sizes), feature_dim, dtype=torch.float64)
    row, column = 0, 0
    for size, dim in zip(sizes, dims, strict=True):
        code[row : row + size, column : column + dim] = regular_simplex(size)
        row, column = row + size, column + dim
    return code


def orthoplex_regime_code(feature_dim: int, num_classes: int) -> Tensor:
    """The predicted classifier (and, by self-duality, feature) code of the spherical UFM in the orthoplex regime
    ``p + 2 ≤ C ≤ 2p`` (Alcala et al. 2026's regime; our derivation, module docstring item 3): ``C − p − 1``
    antipodal pairs ``±e_i`` and one regular simplex of ``2p + 2 − C`` vertices in the remaining
    ``2p + 1 − C`` coordinates, mutually orthogonal (:func:`block_code` of :func:`regime_block_sizes`). Float64
    ``(C, p)``, unit rows, rank ``p``, every pairwise inner product ``≤ 0``, so ``ρ(W) = 1``, the largest possible
    (Radon; Rankin 1955)."""
    return block_code(regime_block_sizes(feature_dim, num_classes), feature_dim)


def cross_entropy_loss(weight: Tensor, features: Tensor, labels: Tensor, temperature: float) -> Tensor:
    """The spherical UFM's loss (Jiang et al. 2024): the mean over samples of the cross-entropy
    ``log Σ_j exp(⟨w_j, h_i⟩/τ) − ⟨w_{y_i}, h_i⟩/τ`` of rows ``weight`` ``(..., C, p)``, ``features`` ``(..., n, p)``
    and ``labels`` ``(n,)``, as given (not normalised). Float64 ``(...)``."""
    logits = features.to(torch.float64) @ weight.to(torch.float64).transpose(-1, -2) / temperature
    picked = logits.gather(-1, labels.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(logits, dim=-1) - picked).mean(dim=-1)


def block_vertex_loss(size: int, num_classes: int, temperature: float) -> float:
    """The cross-entropy of a sample at its class's vertex ``h = w_k`` in a block of ``s = size`` of an orthogonal
    sum of regular simplices of ``C`` rows at temperature τ:
    ``log(1 + (s − 1)·exp((−1/(s − 1) − 1)/τ) + (C − s)·exp(−1/τ))`` (the ``s − 1`` block mates at inner product
    ``−1/(s − 1)``, an antipodal pair's ``−1`` for ``s = 2``; the ``C − s`` others orthogonal); ``s = 1``:
    ``log(1 + (C − 1)·exp(−1/τ))``."""
    within = (size - 1) * math.exp((-1.0 / (size - 1) - 1.0) / temperature) if size > 1 else 0.0
    return math.log1p(within + (num_classes - size) * math.exp(-1.0 / temperature))


def block_code_loss(sizes: Sequence[int], temperature: float) -> float:
    """The spherical UFM's loss per sample of :func:`block_code` with every feature at its class's row
    (``h_i = w_{y_i}``, any number of samples per class, balanced): ``(1/C) Σ_i s_i·ℓ(s_i)`` with ``ℓ`` of
    :func:`block_vertex_loss` and ``C = Σ s_i``."""
    num_classes = sum(sizes)
    return sum(size * block_vertex_loss(size, num_classes, temperature) for size in sizes) / num_classes


def predicted_loss(feature_dim: int, num_classes: int, temperature: float) -> float:
    """The loss per sample of :func:`orthoplex_regime_code` at ``h_i = w_{y_i}`` (:func:`block_code_loss` of
    :func:`regime_block_sizes`): ``(1/C)[2(C − p − 1)·ℓ(2) + (2p + 2 − C)·ℓ(2p + 2 − C)]``."""
    return block_code_loss(regime_block_sizes(feature_dim, num_classes), temperature)


def tilted_pairs_counts(feature_dim: int, num_classes: int) -> tuple[int, int]:
    """``(k, m) = (C − p, 2p − C)``: the antipodal pairs and the lone vertices of :func:`tilted_pairs_code`
    (``2k + m = C`` rows, ``k + m = p`` dimensions)."""
    check_regime(feature_dim, num_classes)
    return num_classes - feature_dim, 2 * feature_dim - num_classes


def tilted_pairs_gram_entries(feature_dim: int, num_classes: int, sine: float, lift: float) -> dict[str, float]:
    """The inner products of :func:`tilted_pairs_code` (``s = sine``, ``β = lift``): ``partner`` ``2s² − 1`` (the
    two rows of a pair), ``pairs`` ``s²`` (rows of different pairs), ``lone`` ``−sβ`` (a pair's row and a lone
    vertex), ``lones`` ``β² − (1 − β²)/(m − 1)`` (two lone vertices, ``m ≥ 2``; 0 otherwise)."""
    _, lone = tilted_pairs_counts(feature_dim, num_classes)
    lift = 1.0 if lone <= 1 else lift
    lones = lift**2 - (1 - lift**2) / (lone - 1) if lone > 1 else 0.0
    return {"partner": 2 * sine**2 - 1, "pairs": sine**2, "lone": -sine * lift, "lones": lones}


def tilted_pairs_code(feature_dim: int, num_classes: int, sine: float, lift: float) -> Tensor:
    """The rival family found by training (``docs/many_classes.md``): ``k = C − p`` antipodal pairs tilted away from
    ``m = 2p − C`` lone vertices. With ``c`` the unit vector ``(e_{k+1} + … + e_p)/√m`` and ``f_1 … f_m`` a regular
    simplex of ``span(e_{k+1} … e_p) ∩ c^⊥`` (:func:`regular_simplex`), the rows are ``±√(1 − s²) e_i − s c``
    (``i ≤ k``) and ``β c + √(1 − β²) f_j`` (``m = 1``: just ``c``), ``s = sine``, ``β = lift`` in ``[0, 1]`` (1
    whenever ``m ≤ 1``); inner products in :func:`tilted_pairs_gram_entries`. ``s = 0``: pairs ⊕ lone vertices, all
    mutually orthogonal (``ρ = 1`` when every inner product is ``≤ 0``); ``s > 0`` has ``ρ < 1`` but, at its best
    ``s`` and small enough τ, a lower loss than the prediction (``C = 2p − 1`` already at τ = 0.2). ``C = 2p``: the
    orthoplex. Float64 ``(C, p)``."""
    pairs, lone = tilted_pairs_counts(feature_dim, num_classes)
    lift = 1.0 if lone == 1 else lift
    code = torch.zeros(num_classes, feature_dim, dtype=torch.float64)
    if lone:
        centre = torch.zeros(feature_dim, dtype=torch.float64)
        centre[pairs:] = lone**-0.5
        spread = torch.zeros(lone, feature_dim, dtype=torch.float64)
        if lone > 1:
            simplex = regular_simplex(lone)  # (m, m − 1), rows ⟂ (1, …, 1) once embedded by the basis below
            basis = torch.linalg.svd(torch.eye(lone, dtype=torch.float64) - 1.0 / lone).Vh[: lone - 1]
            spread[:, pairs:] = simplex @ basis
        code[2 * pairs :] = lift * centre + math.sqrt(max(0.0, 1 - lift**2)) * spread
    else:
        centre = torch.zeros(feature_dim, dtype=torch.float64)
    cosine = math.sqrt(1 - sine**2)
    for index in range(pairs):
        axis = torch.zeros(feature_dim, dtype=torch.float64)
        axis[index] = cosine
        code[2 * index], code[2 * index + 1] = axis - sine * centre, -axis - sine * centre
    return code


def tilted_pairs_loss(feature_dim: int, num_classes: int, temperature: float, sine: float, lift: float) -> float:
    """The loss per sample of :func:`tilted_pairs_code` at ``h_i = w_{y_i}``, with ``E(c) = exp((c − 1)/τ)`` and the
    inner products of :func:`tilted_pairs_gram_entries`: ``(1/C)[2k·ℓ_pair + m·ℓ_lone]``,
    ``ℓ_pair = log(1 + E(partner) + 2(k − 1)E(pairs) + m·E(lone))``,
    ``ℓ_lone = log(1 + 2k·E(lone) + (m − 1)E(lones))``."""
    pairs, lone = tilted_pairs_counts(feature_dim, num_classes)
    entries = tilted_pairs_gram_entries(feature_dim, num_classes, sine, 1.0 if lone == 1 else lift)

    def weight(name: str) -> float:
        return math.exp((entries[name] - 1) / temperature)

    pair_loss = math.log1p(weight("partner") + 2 * (pairs - 1) * weight("pairs") + lone * weight("lone"))
    lone_loss = math.log1p(2 * pairs * weight("lone") + (lone - 1) * weight("lones")) if lone else 0.0
    return (2 * pairs * pair_loss + lone * lone_loss) / num_classes


def best_tilted_pairs(feature_dim: int, num_classes: int, temperature: float) -> tuple[float, float, float]:
    """``(loss, s, β)``: the smallest :func:`tilted_pairs_loss` over ``s ∈ [0, 0.99]``, ``β ∈ [0, 1]`` (scipy's
    L-BFGS-B from three starts; ``β = 1`` for ``m = 1``, nothing to optimise for ``C = 2p``)."""
    from scipy.optimize import minimize

    def objective(point: Sequence[float]) -> float:
        return tilted_pairs_loss(feature_dim, num_classes, temperature, float(point[0]), float(point[1]))

    starts = ((0.1, 0.5), (0.3, 0.8), (0.05, 1.0))
    options = {"ftol": 1e-16, "gtol": 1e-14}
    results = [minimize(objective, start, method="L-BFGS-B", bounds=[(0.0, 0.99), (0.0, 1.0)], options=options)
               for start in starts]  # fmt: skip
    best = min(results, key=lambda result: float(result.fun))
    lift = 1.0 if num_classes >= 2 * feature_dim - 1 else float(best.x[1])
    return float(best.fun), float(best.x[0]), lift


def simplex_gram(size: int) -> Tensor:
    """The Gram matrix of a regular simplex of ``s = size`` unit vectors: 1 on the diagonal, ``−1/(s − 1)`` off it."""
    off = -1.0 / (size - 1) if size > 1 else 0.0
    return torch.full((size, size), off, dtype=torch.float64).fill_diagonal_(1.0)


@dataclass(frozen=True)
class CodeBlocks:
    """The block decomposition of one code (:func:`code_blocks`): ``members`` the rows of each block (blocks in
    ascending size, rows ascending), ``sizes`` their sizes, ``simplex_error`` the largest
    ``|⟨ŵ_j, ŵ_k⟩ − (−1/(s − 1))|`` over pairs within a block of size ``s`` (0 with only pairs and singletons
    exactly antipodal), ``cross_cosine`` the largest ``|⟨ŵ_j, ŵ_k⟩|`` over pairs in different blocks (0 with a
    single block)."""

    members: tuple[tuple[int, ...], ...]
    sizes: tuple[int, ...]
    simplex_error: float
    cross_cosine: float


def code_blocks(weight: Tensor, tolerance: float = BLOCK_TOLERANCE) -> CodeBlocks:
    """The blocks of the code ``weight`` ``(C, p)`` (rows normalised first): the connected components of the graph on
    the rows with an edge where ``cos(w_j, w_k) < −tolerance``. For an orthogonal sum of regular simplices
    (:func:`block_code`) these are its simplices, whatever the rotation and order of the rows; a code is that sum
    exactly when ``simplex_error`` and ``cross_cosine`` are 0 (:class:`CodeBlocks`)."""
    unit = weight.detach().to(torch.float64)
    unit = unit / unit.norm(dim=-1, keepdim=True)
    cosines = unit @ unit.T
    num_classes = cosines.shape[0]
    adjacent = (cosines < -tolerance).tolist()
    component = [-1] * num_classes
    members: list[tuple[int, ...]] = []
    for start in range(num_classes):
        if component[start] >= 0:
            continue
        component[start], stack, found = len(members), [start], [start]
        while stack:
            row = stack.pop()
            for other in range(num_classes):
                if adjacent[row][other] and component[other] < 0:
                    component[other] = len(members)
                    stack.append(other)
                    found.append(other)
        members.append(tuple(sorted(found)))
    members.sort(key=lambda block: (len(block), block))
    simplex_error = 0.0
    for block in members:
        index = torch.tensor(block)
        gram = cosines[index][:, index]
        simplex_error = max(simplex_error, float((gram - simplex_gram(len(block))).abs().max()))
    labels = torch.tensor(component)
    across = labels[:, None] != labels[None, :]
    cross_cosine = float(cosines.abs()[across].max()) if bool(across.any()) else 0.0
    return CodeBlocks(tuple(members), tuple(len(block) for block in members), simplex_error, cross_cosine)


@dataclass(frozen=True)
class OrthoplexComparison:
    """One trained spherical UFM against the orthoplex-regime prediction (:func:`compare_with_regime`).

    ``predicted_sizes`` and ``found_sizes`` (ascending, :func:`regime_block_sizes`, :func:`code_blocks` of ``W``);
    ``matches``: the sizes agree; ``cross_cosine`` and ``simplex_error`` of the found blocks; ``max_cosine``
    ``max_{j≠k} cos(w_j, w_k)`` (≤ 0 for every code with ``ρ = 1`` here); ``margin`` ``ρ(W)``
    (:func:`~ufm_torch.metrics.hyperspherical.softmax_code_margin`, 1 at most here, by Radon); ``loss`` the trained
    loss per sample, ``predicted_loss`` the prediction's (:func:`predicted_loss`) and ``loss_gap`` their difference
    (≥ 0 up to rounding if the prediction is optimal); ``duality_gap`` ``max_i (1 − cos(w_{y_i}, h_i))``, 0 when
    every feature points at its class's row (self-duality, GNC3 of Jiang et al. 2024 with one sample per class);
    ``tilted_loss`` the best loss of the competing family (:func:`best_tilted_pairs`) and ``tilted_gap`` the trained
    loss less it (about 0 when training ended in that family)."""

    feature_dim: int
    num_classes: int
    predicted_sizes: tuple[int, ...]
    found_sizes: tuple[int, ...]
    matches: bool
    cross_cosine: float
    simplex_error: float
    max_cosine: float
    margin: float
    loss: float
    predicted_loss: float
    loss_gap: float
    duality_gap: float
    tilted_loss: float
    tilted_gap: float


def compare_with_regime(
    weight: Tensor, features: Tensor, labels: Tensor, temperature: float, tolerance: float = BLOCK_TOLERANCE
) -> OrthoplexComparison:
    """Compare a trained spherical UFM, classifier ``weight`` ``(C, p)`` and ``features`` ``(n, p)`` with ``labels``
    ``(n,)``, at temperature τ with the orthoplex-regime prediction (:class:`OrthoplexComparison`; ``p + 2 ≤ C ≤ 2p``
    or :class:`ValueError`): its blocks (:func:`code_blocks` at ``tolerance``), ``ρ(W)``, the largest cosine, its
    loss (:func:`cross_entropy_loss` of the rows as given) against :func:`predicted_loss`, and how far each feature
    is from its class's row, and against the best of the competing family (:func:`best_tilted_pairs`)."""
    num_classes, feature_dim = weight.shape
    predicted = regime_block_sizes(feature_dim, num_classes)
    weight, features = weight.detach().to(torch.float64), features.detach().to(torch.float64)
    blocks = code_blocks(weight, tolerance)
    loss = float(cross_entropy_loss(weight, features, labels, temperature))
    optimum = predicted_loss(feature_dim, num_classes, temperature)
    unit_weight = weight / weight.norm(dim=-1, keepdim=True)
    unit_features = features / features.norm(dim=-1, keepdim=True)
    duality_gap = float((1 - (unit_weight[labels] * unit_features).sum(dim=-1)).max())
    tilted = best_tilted_pairs(feature_dim, num_classes, temperature)[0]
    return OrthoplexComparison(
        feature_dim=feature_dim,
        num_classes=num_classes,
        predicted_sizes=predicted,
        found_sizes=blocks.sizes,
        matches=blocks.sizes == predicted,
        cross_cosine=blocks.cross_cosine,
        simplex_error=blocks.simplex_error,
        max_cosine=float(max_pairwise_cosine(weight)),
        margin=float(softmax_code_margin(weight)),
        loss=loss,
        predicted_loss=optimum,
        loss_gap=loss - optimum,
        duality_gap=duality_gap,
        tilted_loss=tilted,
        tilted_gap=loss - tilted,
    )
