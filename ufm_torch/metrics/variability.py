"""The field's metric suite of one layer: NC1–NC4 with CDNV, GNC2, UNC3 and the nearest-centre agreement, batched.

Beside NC1–NC4 (Papyan, Han & Donoho 2020; :mod:`ufm_torch.metrics.neural_collapse`):

- ``cdnv``: class-distance normalised variance (Galanti, György & Hutter 2022), the mean over pairs ``i < j`` of
  ``(σ_i² + σ_j²) / (2‖μ_i − μ_j‖²)`` with ``σ_k² = (1/n_k) Σ_{i∈k} ‖h_i − μ_k‖²`` (from centred rows, never
  ``E‖h‖² − ‖μ‖²``);
- ``gnc2``: hyperspherical uniformity (Liu et al. 2023, GNC2), the population variance over pairs ``i < j`` of
  ``log(1/‖μ̂_i − μ̂_j‖)`` with ``μ̂_c = (μ_c − μ_G)/‖μ_c − μ_G‖``;
- ``unc3``: uniform duality (Wu & Papyan 2024, UNC3), the coefficient of variation (population std / mean) over
  classes of ``cos(w_c, μ_c − μ_G)``;
- ``ncc_agreement``: the fraction of samples where ``argmax(Wh + b) = argmin_c ‖h − μ_c‖``, ``1 − nc4``.

``μ_G`` is the mean of the class means (unweighted), as in NC1–NC4. Pairwise distances are taken between the
coordinates of the centred means in the orthonormal frame of their span (``MeanGeometry.coordinates``, at most
``d = min(C − 1, p)`` numbers per class). Small problems (``P·d ≤`` :data:`GRAM_PAIR_THRESHOLD` numbers,
``P = C(C−1)/2`` pairs) take exact differences ``x_i − x_j`` (:func:`pair_distances`); larger ones reduce tiles of
the Gram matrix, ``‖x_i − x_j‖² = ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩`` (:func:`tiled_pair_statistics`), holding neither a
``(P,)`` vector nor a ``C × C`` matrix.

Entry points: :func:`layer_metrics` (whole tensors), :func:`layer_metrics_with_statistics` (whole-tensor
:class:`ClassStatistics`: NC1's projections and NC4's decisions from one pass over the features),
:func:`layer_metrics_from_statistics` (any :class:`ClassStatistics`, e.g. from the streaming two-pass accumulators of
:mod:`ufm_torch.metrics.two_pass`, with NC4, ``ncc_agreement`` and ``accuracy`` when they were counted), and the
pure functions :func:`cdnv`, :func:`gnc2`, :func:`unc3` of class means. Undefined values are NaN with a
:class:`CollapseMetricWarning`: those of NC1–NC4, plus two class means that coincide (CDNV), two means in the same
direction from ``μ_G`` (GNC2) and a zero row of ``W`` (UNC3).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from ufm_torch.metrics.neural_collapse import (
    GRAM_TILE,
    SPREAD_TOLERANCE,
    MeanGeometry,
    classifier_values,
    coefficient_of_variation,
    empty_classes,
    geometry_of_means,
    mask_decisions,
    mask_degenerate,
    mean_geometry,
    mean_values,
    scaled_classifier,
    within_projections_and_mismatches,
)
from ufm_torch.metrics.statistics import (
    CenteredRows,
    ClassStatistics,
    class_statistics,
    divisor,
    mask_undefined,
    matrix_scale,
    warn_undefined,
)

LAYER_METRIC_NAMES = (
    "nc1",
    "nc1_quotient",
    "nc2_equinorm_means",
    "nc2_equiangle",
    "nc2_maxangle",
    "nc2_etf",
    "cdnv",
    "gnc2",
)
"""The metrics of a layer's features alone."""

CLASSIFIER_METRIC_NAMES = ("nc2_equinorm_classifier", "nc3", "unc3", "nc4", "ncc_agreement")
"""The metrics that also need the classifier ``(W, b)`` that reads the layer."""

PAIR_CHUNK = 1 << 22
"""Numbers per chunk of pairwise differences (32 MiB of float64): one chunk up to C ≈ 200 classes."""

GRAM_PAIR_THRESHOLD = PAIR_CHUNK
"""The largest ``P·d`` (pairs × numbers per pair, replicas included: one chunk of :data:`PAIR_CHUNK`) whose pair
statistics come from exact differences ``x_i − x_j``; above it they come from tiles of the Gram matrix
(:func:`tiled_pair_statistics`), ``C²d/2`` multiply-adds in one GEMM per tile instead of ``P·d`` subtractions with
their memory traffic (13 minutes at ``C = 10 000``, ``p = 512``): past ``C ≈ 200`` for one replica, ``d = C − 1``."""

NEAR_PAIR = 1e-6
"""On the Gram path, a pair with ``‖x_i − x_j‖² < NEAR_PAIR·(‖x_i‖² + ‖x_j‖²)`` has its distance recomputed from the
difference: the Gram form's absolute error is ``~ε(‖x_i‖² + ‖x_j‖²)``, so every other pair keeps a relative error in
``‖x_i − x_j‖²`` below ``~ε/NEAR_PAIR ≈ 2e-10`` (far below it for spread means)."""


def class_pairs(num_classes: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """The pairs ``i < j`` of classes as two index vectors ``(C(C−1)/2,)`` (``torch.triu_indices`` order)."""
    first, second = torch.triu_indices(num_classes, num_classes, offset=1, device=device)
    return first, second


def pair_distances(points: Tensor, pairs: tuple[Tensor, Tensor]) -> Tensor:
    """``‖x_i − x_j‖`` for the ``pairs`` of rows of ``points`` ``(..., C, d)``: ``(..., P)``, in chunks of at most
    :data:`PAIR_CHUNK` numbers."""
    first, second = pairs
    chunk = max(1, PAIR_CHUNK // max(1, points[..., 0, :].numel()))
    if first.numel() <= chunk:
        return (points.index_select(-2, first) - points.index_select(-2, second)).norm(dim=-1)
    return torch.cat([pair_distances(points, (first[start : start + chunk], second[start : start + chunk]))
                      for start in range(0, first.numel(), chunk)], dim=-1)  # fmt: skip


def distance_normalized_variance(distances: Tensor, variances: Tensor, pairs: tuple[Tensor, Tensor]) -> Tensor:
    """CDNV ``mean_{i<j} (σ_i² + σ_j²) / (2‖μ_i − μ_j‖²)`` from pair ``distances`` ``(..., P)`` and ``variances``
    ``(..., C)`` in the same units (Galanti, György & Hutter 2022, their Definition of the CDNV)."""
    shared = variances.index_select(-1, pairs[0]) + variances.index_select(-1, pairs[1])
    return (shared / (2 * distances.square())).mean(dim=-1)


def unit_rows(points: Tensor) -> Tensor:
    """``x_c / ‖x_c‖`` for the rows of ``points`` (zero rows stay zero)."""
    return points / divisor(points.norm(dim=-1))[..., None]


def log_distance_variance(unit_distances: Tensor) -> Tensor:
    """GNC2 ``Var_{i<j} log(1/‖μ̂_i − μ̂_j‖)`` (population variance) from the pair distances of the unit centred means
    (Liu et al. 2023, hyperspherical uniformity with the logarithmic kernel)."""
    return unit_distances.log().var(dim=-1, correction=0)


def duality_variation(geometry: MeanGeometry, scaled_weight: Tensor) -> Tensor:
    """UNC3 ``std_c cos(w_c, μ_c − μ_G) / mean_c cos(w_c, μ_c − μ_G)`` (population std; Wu & Papyan 2024)."""
    cosines = (scaled_weight * geometry.unit).sum(dim=-1) / divisor(scaled_weight.norm(dim=-1))
    return coefficient_of_variation(cosines)


class PairStatistics(NamedTuple):
    """What the field's metrics need of the pairs ``i < j`` of class means, float64 ``(...)``: ``cdnv``
    (:func:`distance_normalized_variance`), ``gnc2`` (:func:`log_distance_variance`), ``closest``
    ``min_{i<j} ‖x_i − x_j‖`` and ``closest_directions`` ``min_{i<j} ‖x̂_i − x̂_j‖`` (for :func:`mask_field_metrics`)."""

    cdnv: Tensor
    gnc2: Tensor
    closest: Tensor
    closest_directions: Tensor


def exact_pair_statistics(points: Tensor, variances: Tensor) -> PairStatistics:
    """:class:`PairStatistics` of the rows ``x_c`` of ``points`` ``(..., C, d)`` with ``σ_c²`` ``variances``
    ``(..., C)`` (same units) from the differences ``x_i − x_j`` of every pair: ``(P,)`` vectors, for small ``P·d``."""
    pairs = class_pairs(points.shape[-2], points.device)
    distances = pair_distances(points, pairs)
    unit_distances = pair_distances(unit_rows(points), pairs)
    return PairStatistics(
        distance_normalized_variance(distances, variances, pairs), log_distance_variance(unit_distances),
        distances.amin(dim=-1), unit_distances.amin(dim=-1),
    )  # fmt: skip


def triangular_tiles(num_classes: int, numbers_per_entry: int) -> Iterator[tuple[int, int]]:
    """Blocks ``[start, stop)`` of rows ``i ≤ C − 2`` for tiles of the pairs ``i < j`` (rows ``i`` of the block,
    columns ``j ≥ start``, so every row of a tile has a pair): at most
    :data:`~ufm_torch.metrics.neural_collapse.GRAM_TILE` numbers (``numbers_per_entry`` per entry, the replicas)
    each, at least one row; the tiles grow as fewer columns remain."""
    start = 0
    while start < num_classes - 1:
        rows = max(1, GRAM_TILE // max(1, (num_classes - start) * numbers_per_entry))
        yield start, min(num_classes - 1, start + rows)
        start += rows


def exact_squares(points: Tensor, tile: Tensor, near: Tensor, start: int) -> None:
    """Replace, in place, the entries of ``tile`` ``(B, b, C − start)`` (squared distances of rows ``start + r`` and
    ``start + c`` of ``points`` ``(B, C, d)``) marked by ``near`` with ``‖x_i − x_j‖²`` from the differences
    (:func:`pair_distances`, in chunks of :data:`PAIR_CHUNK` numbers)."""
    batch, row, column = near.nonzero(as_tuple=True)
    num_classes = points.shape[-2]
    flat = points.reshape(-1, points.shape[-1])
    first, second = batch * num_classes + start + row, batch * num_classes + start + column
    tile[batch, row, column] = pair_distances(flat, (first, second)).square()


def tiled_pair_statistics(points: Tensor, variances: Tensor) -> PairStatistics:
    """:class:`PairStatistics` of the rows ``x_c`` of ``points`` ``(..., C, d)`` with ``σ_c²`` ``variances``
    ``(..., C)`` over tiles of the Gram matrix: no ``(P,)`` vector, no ``C × C`` matrix.

    For a block ``I`` of rows (:func:`triangular_tiles`, columns ``j ≥ min I``), one GEMM gives ``G_ij = ⟨x_i, x_j⟩``
    and from it

    - ``d_ij² = max(0, ‖x_i‖² + ‖x_j‖² − 2G_ij)``;
    - for the unit rows ``x̂_c = x_c/‖x_c‖`` (zero rows stay zero, :func:`unit_rows`),
      ``d̂_ij² = max(0, ‖x̂_i‖² + ‖x̂_j‖² − 2G_ij/(‖x_i‖‖x_j‖))`` from the same ``G`` (a zero norm divides as 1);

    pairs ``i < j`` with ``d² < NEAR_PAIR·(‖x_i‖² + ‖x_j‖²)`` of either kind (:data:`NEAR_PAIR`: nearly coinciding
    means, where the Gram form loses its digits) take both ``d²`` from the differences instead
    (:func:`exact_squares`). Then, over the pairs ``i < j`` of the tile:

    - CDNV (Galanti, György & Hutter 2022): the sum of ``(σ_i² + σ_j²)/(2d_ij²)``, added over tiles and divided by
      ``P = C(C−1)/2``;
    - GNC2 (Liu et al. 2023): ``Var_{i<j} log(1/d̂_ij) = Var_{i<j} log d̂_ij = ¼ Var_{i<j} log d̂_ij²`` (population
      variance). Each tile gives the count ``n_t``, mean ``m_t`` and centred sum of squares
      ``M_t = Σ (log d̂² − m_t)²`` of its ``log d̂_ij²``; they merge with the running ``(n, m, M)`` by the parallel
      formula of Chan, Golub & LeVeque (1979): ``δ = m_t − m``, ``m ← m + δ n_t/(n + n_t)``,
      ``M ← M + M_t + δ² n n_t/(n + n_t)``, ``n ← n + n_t`` (no ``E[x²] − E[x]²`` cancellation); the variance is
      ``M/P`` once ``n = P``;
    - the smallest ``d²`` and ``d̂²``, whose square roots are ``closest`` and ``closest_directions``.

    Cost: ``C²d/2`` multiply-adds in GEMMs, tiles of at most :data:`~ufm_torch.metrics.neural_collapse.GRAM_TILE`
    numbers (8 MiB of float64) and a few temporaries of that size; only the tile's first ``b`` columns hold pairs
    ``j ≤ i`` to leave out. At ``C = 10 000``, ``p = 512`` (one thread): 1.7–2.5 s and about 110 MiB, where the
    differences took 787 s and 2.7 GiB (``docs/many_classes.md``, "Scale").
    """
    num_classes, width = points.shape[-2:]
    batch_shape = torch.broadcast_shapes(points.shape[:-2], variances.shape[:-1])
    flat = points.expand(*batch_shape, num_classes, width).reshape(-1, num_classes, width)
    variances = variances.expand(*batch_shape, num_classes).reshape(-1, num_classes)
    unit_flat = unit_rows(flat)
    squares, unit_squares = flat.square().sum(dim=-1), unit_flat.square().sum(dim=-1)
    inverse_norms = divisor(flat.norm(dim=-1)).reciprocal()
    cdnv_sum, count = 0, 0
    log_mean, log_moment = points.new_zeros(flat.shape[0]), points.new_zeros(flat.shape[0])
    closest, closest_unit = (points.new_full((flat.shape[0],), torch.inf) for _ in range(2))
    for start, stop in triangular_tiles(num_classes, flat.shape[0]):
        rows, columns = slice(start, stop), slice(start, None)
        gram = flat[:, rows] @ flat[:, columns].mT  # (B, b, w): rows start ≤ i < stop, columns j ≥ start
        block, width = gram.shape[-2:]
        lower = torch.ones(block, block, dtype=torch.bool, device=gram.device).tril_()  # j ≤ i: not a pair
        unit = (gram * inverse_norms[:, rows, None]).mul_(inverse_norms[:, None, columns]).mul_(-2)
        unit.add_(unit_squares[:, rows, None]).add_(unit_squares[:, None, columns]).clamp_(min=0)
        distances = gram.mul_(-2).add_(squares[:, rows, None]).add_(squares[:, None, columns]).clamp_(min=0)
        limit = torch.add(squares[:, rows, None], squares[:, None, columns]).mul_(NEAR_PAIR)
        near = distances < limit
        near |= unit < torch.add(unit_squares[:, rows, None], unit_squares[:, None, columns], out=limit).mul_(NEAR_PAIR)
        near[..., :block].masked_fill_(lower, False)
        del limit
        if bool(near.any()):
            exact_squares(flat, distances, near, start)
            exact_squares(unit_flat, unit, near, start)
        del near
        distances[..., :block].masked_fill_(lower, torch.inf)
        unit[..., :block].masked_fill_(lower, torch.inf)
        closest = torch.minimum(closest, distances.amin(dim=(-2, -1)))
        closest_unit = torch.minimum(closest_unit, unit.amin(dim=(-2, -1)))
        ratios = (variances[:, rows, None] + variances[:, None, columns]).div_(distances.mul_(2))
        cdnv_sum = cdnv_sum + ratios[..., :block].masked_fill_(lower, 0).sum(dim=(-2, -1))
        cdnv_sum = cdnv_sum + ratios[..., block:].sum(dim=(-2, -1))
        del ratios, distances
        tile_count = block * width - block * (block + 1) // 2
        logs = unit.log_()
        logs[..., :block].masked_fill_(lower, 0)
        tile_mean = logs.sum(dim=(-2, -1)) / tile_count
        logs.sub_(tile_mean[:, None, None]).square_()[..., :block].masked_fill_(lower, 0)
        tile_moment = logs.sum(dim=(-2, -1))
        delta, total = tile_mean - log_mean, count + tile_count
        log_mean = log_mean + delta * (tile_count / total)
        log_moment = log_moment + tile_moment + delta.square() * (count * tile_count / total)
        count = total
        del logs, unit, gram
    return PairStatistics(*(
        value.reshape(batch_shape) for value in (cdnv_sum / count, log_moment / (4 * count), closest.sqrt(),
                                                 closest_unit.sqrt())
    ))  # fmt: skip


def pair_statistics(points: Tensor, variances: Tensor) -> PairStatistics:
    """:class:`PairStatistics` of the rows of ``points`` ``(..., C, d)``: exact differences while ``P·d`` (replicas
    included) is at most :data:`GRAM_PAIR_THRESHOLD`, Gram tiles above."""
    num_classes = points.shape[-2]
    numbers = num_classes * (num_classes - 1) // 2 * max(1, points[..., 0, :].numel())
    if numbers <= GRAM_PAIR_THRESHOLD:
        return exact_pair_statistics(points, variances)
    return tiled_pair_statistics(points, variances)


def field_values(
    geometry: MeanGeometry, scaled_variances: Tensor, scaled_weight: Tensor | None
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """``cdnv``, ``gnc2`` and (with ``W/t``) ``unc3``, not yet masked, with the smallest distance between two class
    means and between two of their directions ``(...)`` (for :func:`mask_field_metrics`), the pair statistics from
    :func:`pair_statistics` of the centred means' coordinates."""
    pairs = pair_statistics(geometry.coordinates, scaled_variances)
    values = {"cdnv": pairs.cdnv, "gnc2": pairs.gnc2}
    if scaled_weight is not None:
        values["unc3"] = duality_variation(geometry, scaled_weight)
    return values, pairs.closest, pairs.closest_directions


def mask_field_metrics(
    values: dict[str, Tensor], geometry: MeanGeometry, masked: Tensor, closest: Tensor, closest_directions: Tensor,
    scaled_weight: Tensor | None,
) -> None:  # fmt: skip
    """NaN (with a warning) for CDNV where two class means coincide, GNC2 where two lie in the same direction from
    ``μ_G`` (``log(1/0)``), UNC3 where a row of ``W`` is 0; ``masked`` marks the replicas already NaN for a reason
    of :func:`~ufm_torch.metrics.neural_collapse.mask_degenerate`, which are not warned about twice."""
    tolerance = SPREAD_TOLERANCE * geometry.largest_mean
    if "cdnv" in values:
        reason = "two class means coincide (‖μ_i − μ_j‖ = 0)"
        mask_undefined(values, ["cdnv"], (closest > tolerance) | masked, reason)
    if "gnc2" in values:
        reason = "two class means lie in the same direction from μ_G (‖μ̂_i − μ̂_j‖ = 0)"
        mask_undefined(values, ["gnc2"], (closest_directions > SPREAD_TOLERANCE) | masked, reason)
    if "unc3" in values and scaled_weight is not None:
        rows = scaled_weight.norm(dim=-1).amin(dim=-1) > 0
        mask_undefined(values, ["unc3"], rows | masked, "a row w_c of W is 0, so cos(w_c, μ_c − μ_G) is undefined")


def undefined_values(names: list[str], statistics: ClassStatistics, weight: Tensor | None) -> dict[str, Tensor]:
    """All ``names`` NaN (with a warning): the metrics need ``C ≥ 2`` classes."""
    warn_undefined(names, torch.tensor(False), f"they need C ≥ 2 classes, got C = {statistics.num_classes}")
    shape = statistics.scale.shape
    if weight is not None:
        shape = torch.broadcast_shapes(shape, weight.shape[:-2])
    return {name: statistics.scale.new_full(shape, torch.nan, dtype=torch.float64) for name in names}


def assemble_layer_metrics(
    statistics: ClassStatistics, geometry: MeanGeometry, within_quadratic: Tensor, weight: Tensor | None,
    mismatches: Tensor | None, correct: Tensor | None, counted: bool,
) -> dict[str, Tensor]:  # fmt: skip
    """Every metric of a layer given NC1's ``u_kᵀ S u_k``, masked where undefined: :data:`LAYER_METRIC_NAMES`, with
    ``weight`` the first three of :data:`CLASSIFIER_METRIC_NAMES`, with ``mismatches`` ``nc4`` and
    ``ncc_agreement``, with ``correct`` ``accuracy``. ``counted``: the decisions come from an accumulator, which set
    them to NaN itself where its centres or inputs were not defined (so a class of this split without samples does
    not void them: held-out data against training centres)."""
    scaled_weight = None if weight is None else scaled_classifier(weight)
    scaled_variances = statistics.class_traces / statistics.counts.clamp(min=1)
    values = mean_values(statistics, geometry, within_quadratic)
    field, closest, closest_directions = field_values(geometry, scaled_variances, scaled_weight)
    values |= field
    if scaled_weight is not None:
        values |= classifier_values(geometry, scaled_weight)
    values = {name: values[name] for name in (*LAYER_METRIC_NAMES, *CLASSIFIER_METRIC_NAMES) if name in values}
    empty = empty_classes(statistics)
    masked = ~(mask_degenerate(values, geometry, empty, scaled_weight) & geometry.finite) | bool(empty)
    mask_field_metrics(values, geometry, masked, closest, closest_directions, scaled_weight)
    if mismatches is not None:
        values["nc4"] = mismatches / statistics.num_samples
        values["ncc_agreement"] = 1 - values["nc4"]
        if counted:
            reason = "a class centre of the nearest-centre rule is undefined or the inputs are not finite"
            mask_undefined(values, ["nc4", "ncc_agreement"], mismatches.isfinite(), reason)
        else:
            mask_decisions(values, ["nc4", "ncc_agreement"], mismatches, empty)
    if correct is not None:
        values["accuracy"] = correct / statistics.num_samples
        mask_undefined(values, ["accuracy"], correct.isfinite(), "the inputs are not finite")
    return values


def names_of(weight: Tensor | None, decisions: bool) -> list[str]:
    """The keys of a layer's metrics: with a classifier and decisions all of them, else fewer."""
    names = list(LAYER_METRIC_NAMES)
    if weight is not None:
        names += [name for name in CLASSIFIER_METRIC_NAMES if decisions or name not in ("nc4", "ncc_agreement")]
    return names


@torch.no_grad()
def layer_metrics_from_statistics(
    statistics: ClassStatistics, weight: Tensor | None = None, bias: Tensor | None = None
) -> dict[str, Tensor]:
    """Every metric of one layer from class statistics of any kind (whole tensors, p×p accumulator, two passes).

    Keys: :data:`LAYER_METRIC_NAMES`; with ``weight`` also ``nc2_equinorm_classifier``, ``nc3``, ``unc3``; when the
    statistics carry counted classifier decisions (``statistics.decisions``, the two-pass accumulator given a
    classifier) also ``nc4``, ``ncc_agreement = 1 − nc4`` and ``accuracy`` (fraction of samples with
    ``argmax(Wh + b) = y``), which were counted with the classifier and centres of that pass. ``bias`` does not enter
    these; it is accepted so that both ``layer_metrics_*_statistics`` share a signature. Float64 ``(...)``.
    """
    del bias
    weight = None if weight is None else weight.to(torch.float64)
    decisions = statistics.decisions
    if statistics.num_classes < 2:
        values = undefined_values(names_of(weight, decisions is not None), statistics, weight)
        if decisions is not None:
            values["accuracy"] = decisions.correct / statistics.num_samples
        return values
    geometry = mean_geometry(statistics)
    within_quadratic = statistics.within_scatter.quadratic_form(geometry.directions)
    if decisions is None:
        return assemble_layer_metrics(statistics, geometry, within_quadratic, weight, None, None, counted=True)
    return assemble_layer_metrics(
        statistics, geometry, within_quadratic, weight, decisions.mismatches, decisions.correct, counted=True
    )


@torch.no_grad()
def layer_metrics_with_statistics(
    statistics: ClassStatistics, weight: Tensor | None = None, bias: Tensor | None = None
) -> dict[str, Tensor]:
    """Every metric of one layer from :func:`class_statistics` of whole feature tensors (the UFM's monitor).

    Keys: :data:`LAYER_METRIC_NAMES`, and with ``weight`` all of :data:`CLASSIFIER_METRIC_NAMES` (``bias`` None: a
    zero bias). NC1's projections and NC4's decisions come from one pass over the features
    (:func:`~ufm_torch.metrics.neural_collapse.within_projections_and_mismatches`), ``ncc_agreement = 1 − nc4`` for
    free. Statistics that do not keep their centred rows go to :func:`layer_metrics_from_statistics`.
    """
    rows = statistics.within_scatter
    if weight is None or not isinstance(rows, CenteredRows):
        return layer_metrics_from_statistics(statistics, weight, bias)
    weight = weight.to(torch.float64)
    bias = weight.new_zeros(weight.shape[:-1]) if bias is None else bias.to(torch.float64)
    if statistics.num_classes < 2:
        return undefined_values(names_of(weight, True), statistics, weight)
    geometry = mean_geometry(statistics)
    within_quadratic, mismatches = within_projections_and_mismatches(rows, geometry, weight, bias)
    return assemble_layer_metrics(statistics, geometry, within_quadratic, weight, mismatches, None, counted=False)


@torch.no_grad()
def layer_metrics(
    features: Tensor, labels: Tensor, weight: Tensor | None = None, bias: Tensor | None = None,
    num_classes: int | None = None,
) -> dict[str, Tensor]:  # fmt: skip
    """Every metric of one layer's ``features`` ``(..., n, p)`` with ``labels`` ``(n,)`` (any float dtype; float64
    inside), and of the classifier ``weight`` ``(..., C, p)``, ``bias`` ``(..., C)`` (None: zero) reading it.

    Keys :data:`LAYER_METRIC_NAMES` (NC1, NC2, CDNV, GNC2), with ``weight`` also :data:`CLASSIFIER_METRIC_NAMES`
    (NC2 of W, NC3, UNC3, NC4, ``ncc_agreement``); float64 ``(...)``. ``C`` is ``weight.shape[-2]`` or
    ``num_classes`` (one of them is needed; they must agree).
    """
    if weight is not None:
        if num_classes is not None and num_classes != weight.shape[-2]:
            raise ValueError(f"num_classes = {num_classes} but weight has {weight.shape[-2]} rows (classes)")
        num_classes = weight.shape[-2]
    if num_classes is None:
        raise ValueError("layer_metrics needs num_classes (or a weight with one row per class)")
    return layer_metrics_with_statistics(class_statistics(features, labels, num_classes), weight, bias)


def means_geometry_and_scale(class_means: Tensor) -> tuple[MeanGeometry, Tensor]:
    """The :class:`MeanGeometry` of class means ``(..., C, p)`` divided by their power-of-two scale (so that they
    square safely), and that scale (1 for zero means)."""
    class_means = class_means.detach().to(torch.float64)
    scale = divisor(matrix_scale(class_means))
    return geometry_of_means(class_means / scale[..., None, None]), scale


def pure_field_metric(name: str, class_means: Tensor, variances: Tensor | None, weight: Tensor | None) -> Tensor:
    """One of ``cdnv``, ``gnc2``, ``unc3`` of class means, masked to NaN (with a warning) where undefined."""
    num_classes = class_means.shape[-2]
    if num_classes < 2:
        warn_undefined([name], torch.tensor(False), f"it needs C ≥ 2 classes, got C = {num_classes}")
        return class_means.new_full(class_means.shape[:-2], torch.nan, dtype=torch.float64)
    geometry, scale = means_geometry_and_scale(class_means)
    scaled_weight = None if weight is None else scaled_classifier(weight.detach().to(torch.float64))
    scaled_variances = geometry.means.new_zeros(geometry.means.shape[:-1]) if variances is None else (
        variances.detach().to(torch.float64) / scale[..., None].square()
    )  # fmt: skip
    values, closest, closest_directions = field_values(geometry, scaled_variances, scaled_weight)
    values = {name: values[name]}
    if variances is not None:
        finite = geometry.finite & variances.isfinite().all(dim=-1)
        geometry = geometry._replace(finite=finite)
    masked = ~(mask_degenerate(values, geometry, [], scaled_weight) & geometry.finite)
    mask_field_metrics(values, geometry, masked, closest, closest_directions, scaled_weight)
    return values[name]


@torch.no_grad()
def cdnv(class_means: Tensor, class_variances: Tensor) -> Tensor:
    """Class-distance normalised variance ``mean_{i<j} (σ_i² + σ_j²) / (2‖μ_i − μ_j‖²)`` (Galanti, György & Hutter
    2022, "On the role of neural collapse in transfer learning") of class means ``(..., C, p)`` and
    within-class variances ``σ_c² = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²`` ``(..., C)`` in the means' units squared
    (``ClassStatistics.class_variances``). Float64 ``(...)``; NaN with a warning where two means coincide or C < 2."""
    return pure_field_metric("cdnv", class_means, class_variances, None)


@torch.no_grad()
def gnc2(class_means: Tensor) -> Tensor:
    """Hyperspherical uniformity ``Var_{i<j} log(1/‖μ̂_i − μ̂_j‖)`` (population variance over pairs) of the centred,
    normalised class means ``μ̂_c = (μ_c − μ_G)/‖μ_c − μ_G‖``, ``μ_G`` the mean of the class means ``(..., C, p)``
    (Liu et al. 2023, "Generalizing and decoupling neural collapse via hyperspherical uniformity gap", GNC2 with the
    logarithmic kernel). Float64 ``(...)``; NaN with a warning where two directions coincide or C < 2."""
    return pure_field_metric("gnc2", class_means, None, None)


@torch.no_grad()
def unc3(class_means: Tensor, weight: Tensor) -> Tensor:
    """Uniform duality ``std_c cos(w_c, μ_c − μ_G) / mean_c cos(w_c, μ_c − μ_G)`` (population std; Wu & Papyan 2024,
    "Linguistic collapse: neural collapse in (large) language models", UNC3) of class means ``(..., C, p)`` and the
    classifier's rows ``weight`` ``(..., C, p)``. Float64 ``(...)``; NaN with a warning where a row of ``W`` is 0,
    a mean equals ``μ_G`` or C < 2."""
    return pure_field_metric("unc3", class_means, None, weight)
