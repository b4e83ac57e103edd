"""Neural collapse metrics NC1–NC4 (Papyan, Han & Donoho 2020, PNAS; Mixon et al., Section 1), batched.

Notation (DESIGN.md, "Metric definitions"): ``μ_c`` class means, ``μ_G = (1/C) Σ_c μ_c``,
``M̄ = [μ_c − μ_G]`` (``p × C``), ``Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ``, ``Σ_B = M̄M̄ᵀ/C``,
``M̃`` the columns of ``M̄`` normalised to unit length. Every "std" is the population standard deviation
(``correction=0``). Results are float64 of shape ``...`` (the replica dimensions).

Degenerate inputs give NaN and a :class:`CollapseMetricWarning`: ``C < 2`` (every metric), a class without
samples (every metric of the means), class means that coincide (``max_c ‖μ_c − μ_G‖ ≤ 1e-12 · max_c ‖μ_c‖``,
the level of rounding: NC1 and NC2–NC3), a class mean at ``μ_G`` (the cosines of ``M̃``), ``W = 0``
(``nc2_equinorm_classifier``, ``nc3``) and non-finite inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ufm_torch.metrics.statistics import (
    CenteredRows,
    ClassStatistics,
    class_statistics,
    divisor,
    largest_magnitude,
    mask_undefined,
    matrix_scale,
    power_of_two_scale,
    row_blocks,
    warn_undefined,
)

NC_METRIC_NAMES = (
    "nc1",
    "nc1_quotient",
    "nc2_equinorm_means",
    "nc2_equinorm_classifier",
    "nc2_equiangle",
    "nc2_maxangle",
    "nc2_etf",
    "nc3",
    "nc4",
)

SPREAD_TOLERANCE = 1e-12
"""Class means closer to ``μ_G`` than this, relative to the largest ``‖μ_c‖``, count as coinciding."""

GRAM_TILE = 1 << 20
"""Numbers per tile of a ``C × C`` Gram matrix that is reduced tile by tile instead of held whole (8 MiB of float64):
NC2's cosines (:func:`cosine_values`) and the pair statistics of
:func:`~ufm_torch.metrics.variability.tiled_pair_statistics`. Each tile passes through several elementwise operations
after its GEMM, which run faster on tiles that stay in cache: at ``C = 10 000``, ``p = 512`` the pair statistics took
1.7–1.9 s with tiles of ``2²⁰`` numbers, 2.0–2.5 s with ``2²²`` (``hyperspherical.PAIR_TILE``) or ``2¹⁸`` and 5.2 s
with ``2¹⁶`` (one thread, the shared 2-core machine)."""


def helmert_coordinates(rows: Tensor) -> Tensor:
    """``Qᵀx`` ``(..., C−1, p)`` for rows ``x`` ``(..., C, p)``, ``Q`` ``(C, C−1)`` the Helmert basis of ``1^⊥``
    (``QᵀQ = I``, ``Qᵀ1 = 0``), in ``O(Cp)`` without forming ``Q``.

    Column ``k = 1, …, C−1`` of ``Q`` is ``(1, …, 1, −k, 0, …, 0)/√(k(k+1))`` with ``k`` ones, so
    ``(Qᵀx)_k = (Σ_{i<k} x_i − k·x_k)/√(k(k+1))`` (rows indexed from 0): a cumulative sum of the rows. ``Q`` itself is
    ``C × (C−1)``, 763 MiB of float64 at ``C = 10 000``.
    """
    num_classes = rows.shape[-2]
    k = torch.arange(1, num_classes, dtype=rows.dtype, device=rows.device)[:, None]
    prefix = rows[..., :-1, :].cumsum(dim=-2)  # Σ_{i<k} x_i for k = 1, …, C−1
    return (prefix - k * rows[..., 1:, :]) / torch.sqrt(k * (k + 1))


class MeanGeometry(NamedTuple):
    """The class means in units of the feature scale and the frame of their span (shared by every metric).

    ``finite`` ``(...)``: means and within-class trace finite (elsewhere ``means`` are set to 0);
    ``means`` ``(..., C, p)``; ``centred`` ``M̄ᵀ`` (rows ``μ_c − μ_G``); ``directions`` ``(..., k, p)`` and
    ``singular_values`` ``(..., k)``: the SVD ``M̄ = Σ_k s_k u_k v_kᵀ`` (all ``k = min(C−1, p)`` orthonormal rows
    ``u_k``, which span every ``μ_c − μ_G``); ``kept``: the ``s_k`` above the rank tolerance; ``coordinates``
    ``(..., C, k)``: ``(μ_c − μ_G)·u_k``, the centred means in that frame (same distances and angles, ``k ≤ C − 1``
    numbers per class); ``centred_norms`` ``(..., C)``: ``‖μ_c − μ_G‖``; ``unit`` ``(..., C, p)``: the rows of
    ``M̃ᵀ``, ``(μ_c − μ_G)/‖μ_c − μ_G‖`` (zero rows where ``μ_c = μ_G``); ``largest_mean`` ``(...)``: ``max_c ‖μ_c‖``.
    """

    finite: Tensor
    means: Tensor
    centred: Tensor
    directions: Tensor
    singular_values: Tensor
    kept: Tensor
    coordinates: Tensor
    centred_norms: Tensor
    unit: Tensor
    largest_mean: Tensor


def mean_geometry(statistics: ClassStatistics) -> MeanGeometry:
    """:class:`MeanGeometry` of the statistics' class means (:func:`geometry_of_means`); a non-finite within-class
    trace counts as non-finite means."""
    return geometry_of_means(statistics.scaled_means, statistics.within_scatter.trace().isfinite())


def geometry_of_means(means: Tensor, finite: Tensor | bool = True) -> MeanGeometry:
    """:class:`MeanGeometry` of class means ``(..., C, p)`` (in units where squaring is safe, e.g. of the feature
    scale); replicas whose means are not finite (or where ``finite`` is false) get zero means.

    The SVD is of ``QᵀM̄ᵀ`` (``(C−1) × p``, ``Q`` the Helmert basis of ``1^⊥``, by :func:`helmert_coordinates`
    without forming ``Q``), which has the same ``u_k, s_k`` as ``M̄`` because ``M̄1 = 0``, without the rounding-level
    singular value of the centring; singular values below ``max(C−1, p)·ε·s_max`` are not kept.
    """
    finite = means.isfinite().all(dim=-1).all(dim=-1) & finite
    means = torch.where(finite[..., None, None], means, 0.0)
    centred = means - means.mean(dim=-2, keepdim=True)
    spanned = helmert_coordinates(centred)
    _, singular_values, directions = torch.linalg.svd(spanned, full_matrices=False)
    tolerance = max(spanned.shape[-2:]) * torch.finfo(spanned.dtype).eps
    kept = singular_values > tolerance * singular_values[..., :1]
    coordinates = centred @ directions.transpose(-1, -2)
    centred_norms = centred.norm(dim=-1)
    unit = centred / divisor(centred_norms)[..., None]
    largest_mean = means.norm(dim=-1).amax(dim=-1)
    return MeanGeometry(
        finite, means, centred, directions, singular_values, kept, coordinates, centred_norms, unit, largest_mean
    )


def within_to_between_trace(geometry: MeanGeometry, within_quadratic: Tensor, num_samples: Tensor) -> Tensor:
    """NC1 ``Tr(Σ_W Σ_B⁺)/C = Σ_k u_kᵀ Σ_W u_k / s_k²`` over the kept ``k`` (Papyan et al., NC1).

    ``Σ_B⁺ = C Σ_k u_k u_kᵀ / s_k²``; ``within_quadratic`` holds ``u_kᵀ S u_k`` with ``S = n Σ_W`` (the
    scatter), ``(..., k)``. No ``p × p`` matrix is formed.
    """
    within = within_quadratic / num_samples
    return torch.where(geometry.kept, within / geometry.singular_values.square(), 0.0).sum(dim=-1)


def centred_mean_directions(class_means: Tensor) -> Tensor:
    """Rows of ``M̃ᵀ``: ``(μ_c − μ_G)/‖μ_c − μ_G‖``, shape ``(..., C, p)``; a mean at ``μ_G`` gives a zero row.

    ``M̃ᵀM̃`` (their Gram matrix) is compared with the simplex ETF in NC2 (Papyan, Han & Donoho 2020).
    """
    centred = class_means - class_means.mean(dim=-2, keepdim=True)
    return centred / divisor(centred.norm(dim=-1))[..., None]


def undefined_for_one_class(
    names: list[str], statistics: ClassStatistics, weight: Tensor
) -> dict[str, Tensor]:
    """All ``names`` NaN (with a warning): NC1–NC4 need ``C ≥ 2`` classes."""
    warn_undefined(names, torch.tensor(False), f"they need C ≥ 2 classes, got C = {statistics.num_classes}")
    shape = torch.broadcast_shapes(statistics.scale.shape, weight.shape[:-2])
    return {name: weight.new_full(shape, torch.nan, dtype=torch.float64) for name in names}


def coefficient_of_variation(values: Tensor) -> Tensor:
    """``std/mean`` along the last dimension (population std)."""
    return values.std(dim=-1, correction=0) / values.mean(dim=-1)


@torch.no_grad()
def nc_metrics_from_statistics(
    statistics: ClassStatistics, weight: Tensor, bias: Tensor | None = None
) -> dict[str, Tensor]:
    """NC1–NC3 from class statistics (Papyan, Han & Donoho 2020; DESIGN "Metric definitions"): every key but ``nc4``.

    - ``nc1 = Tr(Σ_W Σ_B⁺)/C``, ``nc1_quotient = tr Σ_W / tr Σ_B``;
    - ``nc2_equinorm_means = std_c ‖μ_c − μ_G‖ / mean_c ‖μ_c − μ_G‖``, ``nc2_equinorm_classifier`` the same for
      ``‖w_c‖``; ``nc2_equiangle = std_{c≠c'} cos(μ̃_c, μ̃_c')``, ``nc2_maxangle = mean_{c≠c'} |cos + 1/(C−1)|``,
      ``nc2_etf = ‖M̃ᵀM̃ − (C/(C−1))I + (1/(C−1))11ᵀ‖_F`` (Mixon et al., NC2);
    - ``nc3 = ‖Wᵀ/‖W‖_F − M̃/‖M̃‖_F‖_F`` (Mixon et al., NC3).

    ``nc4`` needs per-sample features: :func:`nc_metrics_with_statistics`, :func:`nearest_center_mismatches` or
    ``NearestCenterMismatch``. ``bias`` does not enter NC1–NC3; it is accepted so that both ``*_from_statistics``
    share a signature.
    """
    del bias
    weight = weight.to(torch.float64)
    if statistics.num_classes < 2:
        return undefined_for_one_class([name for name in NC_METRIC_NAMES if name != "nc4"], statistics, weight)
    geometry = mean_geometry(statistics)
    within_quadratic = statistics.within_scatter.quadratic_form(geometry.directions)
    return nc1_to_nc3(statistics, geometry, weight, within_quadratic)


def nc1_to_nc3(
    statistics: ClassStatistics, geometry: MeanGeometry, weight: Tensor, within_quadratic: Tensor
) -> dict[str, Tensor]:
    """The values of :func:`nc_metrics_from_statistics` given ``u_kᵀ S u_k`` (``within_quadratic``), masked to
    NaN where undefined (module docstring)."""
    scaled_weight = scaled_classifier(weight)
    values = mean_values(statistics, geometry, within_quadratic) | classifier_values(geometry, scaled_weight)
    values = {name: values[name] for name in NC_METRIC_NAMES if name in values}
    mask_degenerate(values, geometry, empty_classes(statistics), scaled_weight)
    return values


def mean_values(statistics: ClassStatistics, geometry: MeanGeometry, within_quadratic: Tensor) -> dict[str, Tensor]:
    """NC1 and the NC2 measures of the means (Papyan, Han & Donoho 2020), not yet masked: ``nc1``, ``nc1_quotient``,
    ``nc2_equinorm_means``, ``nc2_equiangle``, ``nc2_maxangle``, ``nc2_etf``."""
    num_classes = statistics.num_classes
    between_trace = geometry.centred.square().sum(dim=(-1, -2)) / num_classes
    within_trace = statistics.within_scatter.trace() / statistics.num_samples
    return {
        "nc1": within_to_between_trace(geometry, within_quadratic, statistics.num_samples),
        "nc1_quotient": within_trace / between_trace,
        "nc2_equinorm_means": coefficient_of_variation(geometry.centred_norms),
        **cosine_values(geometry.unit),
    }


def cosine_values(unit: Tensor) -> dict[str, Tensor]:
    """``nc2_equiangle``, ``nc2_maxangle``, ``nc2_etf`` (Papyan, Han & Donoho 2020; Mixon et al., NC2) of the rows of
    ``M̃ᵀ`` ``unit`` ``(..., C, p)``, from their cosines ``M̃ᵀM̃``: held whole while it has at most
    :data:`GRAM_TILE` numbers (replicas included), else reduced over blocks of its rows (:func:`tiled_cosine_values`).
    """
    num_classes = unit.shape[-2]
    if num_classes * num_classes * max(1, unit[..., 0, 0].numel()) > GRAM_TILE:
        return tiled_cosine_values(unit)
    cosines = unit @ unit.transpose(-1, -2)
    identity = torch.eye(num_classes, dtype=torch.float64, device=cosines.device)
    simplex_gram = (num_classes * identity - 1) / (num_classes - 1)
    off_diagonal = cosines[..., identity == 0]
    return {
        "nc2_equiangle": off_diagonal.std(dim=-1, correction=0),
        "nc2_maxangle": (off_diagonal + 1 / (num_classes - 1)).abs().mean(dim=-1),
        "nc2_etf": (cosines - simplex_gram).norm(dim=(-1, -2)),
    }


def tiled_cosine_values(unit: Tensor) -> dict[str, Tensor]:
    """:func:`cosine_values` over blocks ``I`` of rows of ``M̃ᵀM̃``, tiles ``(..., b, C)`` of at most
    :data:`GRAM_TILE` numbers, without a ``C × C`` matrix.

    With ``a = 1/(C − 1)`` each tile's off-diagonal entries become ``t_ij = cos_ij + a`` and its diagonal entries
    ``cos_ii`` are set aside; over the ``C(C−1)`` off-diagonal entries, ``nc2_maxangle = mean |t_ij|``,
    ``nc2_etf² = Σ_{i≠j} t_ij² + Σ_i (cos_ii − 1)²`` (the simplex Gram matrix has ``1`` on its diagonal, ``−a`` off
    it) and ``nc2_equiangle = std cos_ij = std t_ij`` (population), from each tile's count ``n_t``, mean ``m_t`` and
    centred sum of squares ``M_t``, merged as in Chan, Golub & LeVeque (1979): ``δ = m_t − m``,
    ``m ← m + δ n_t/(n + n_t)``, ``M ← M + M_t + δ² n n_t/(n + n_t)``, ``n ← n + n_t``; the std is ``√(M/n)``.
    """
    num_classes = unit.shape[-2]
    shift = 1 / (num_classes - 1)
    rows = max(1, GRAM_TILE // (num_classes * max(1, unit[..., 0, 0].numel())))
    absolute, squares, count = 0, 0, 0
    mean, moment = (unit.new_zeros(unit.shape[:-2]) for _ in range(2))
    for start in range(0, num_classes, rows):
        tile = unit[..., start : start + rows, :] @ unit.transpose(-1, -2)  # (..., b, C)
        diagonal = tile.diagonal(start, -2, -1)
        squares = squares + (diagonal - 1).square().sum(dim=-1)
        diagonal.fill_(-shift)
        tile.add_(shift)  # t_ij off the diagonal, 0 on it
        absolute = absolute + tile.abs().sum(dim=(-2, -1))
        squares = squares + tile.square().sum(dim=(-2, -1))
        tile_count = tile.shape[-2] * (num_classes - 1)
        tile_mean = tile.sum(dim=(-2, -1)) / tile_count
        tile.sub_(tile_mean[..., None, None]).square_().diagonal(start, -2, -1).fill_(0)
        delta, total = tile_mean - mean, count + tile_count
        mean = mean + delta * (tile_count / total)
        moment = moment + tile.sum(dim=(-2, -1)) + delta.square() * (count * tile_count / total)
        count = total
    return {"nc2_equiangle": (moment / count).sqrt(), "nc2_maxangle": absolute / count, "nc2_etf": squares.sqrt()}


def scaled_classifier(weight: Tensor) -> Tensor:
    """``W/t`` with ``t`` the power-of-two scale of each replica's ``W`` (so that its rows square safely)."""
    return weight / divisor(matrix_scale(weight))[..., None, None]


def classifier_values(geometry: MeanGeometry, scaled_weight: Tensor) -> dict[str, Tensor]:
    """``nc2_equinorm_classifier`` and ``nc3`` (Papyan, Han & Donoho 2020; Mixon et al., NC3) of ``W/t``
    (:func:`scaled_classifier`), not yet masked."""
    unit = geometry.unit
    weight_norm = scaled_weight.norm(dim=(-1, -2))
    unit_norm = unit.norm(dim=(-1, -2))
    return {
        "nc2_equinorm_classifier": coefficient_of_variation(scaled_weight.norm(dim=-1)),
        "nc3": (
            scaled_weight / divisor(weight_norm)[..., None, None]
            - unit / divisor(unit_norm)[..., None, None]
        ).norm(dim=(-1, -2)),
    }


DIRECTION_METRICS = ("nc2_equiangle", "nc2_maxangle", "nc2_etf", "nc3", "gnc2", "unc3")
"""Metrics of the directions ``(μ_c − μ_G)/‖μ_c − μ_G‖``: undefined when a class mean equals ``μ_G``."""

WEIGHT_METRICS = ("nc2_equinorm_classifier", "nc3")
"""Metrics of the whole classifier ``W``: undefined when ``W = 0``."""


def empty_classes(statistics: ClassStatistics) -> list[int]:
    """The classes without samples."""
    return (statistics.counts == 0).nonzero().flatten().tolist()


def mask_degenerate(
    values: dict[str, Tensor], geometry: MeanGeometry, empty: list[int], scaled_weight: Tensor | None = None
) -> Tensor:
    """Set to NaN, in place and with one :class:`CollapseMetricWarning` per reason, the ``values`` that are undefined
    (module docstring): every metric of the means (all but ``nc2_equinorm_classifier``) when a class has no samples
    or the means coincide, every metric when the features are not finite, the :data:`DIRECTION_METRICS` when a class
    mean equals ``μ_G``, the :data:`WEIGHT_METRICS` when ``W = 0`` (``scaled_weight`` is ``W/t``). Returns where
    the class means are spread ``(...)`` (where they are not, or are not finite, every metric of the means is NaN)."""
    names = list(values)
    mean_names = [name for name in names if name != "nc2_equinorm_classifier"]
    finite, largest_mean = geometry.finite, geometry.largest_mean
    mask_undefined(
        values, mean_names, torch.tensor(not empty, device=finite.device), f"classes {empty} have no samples"
    )
    mask_undefined(values, names, finite, "the features are not finite")
    spread = geometry.centred_norms.amax(dim=-1) > SPREAD_TOLERANCE * largest_mean
    mask_undefined(values, mean_names, spread | ~finite, "the class means coincide (no between-class spread)")
    mask_undefined(
        values,
        [name for name in DIRECTION_METRICS if name in values],
        (geometry.centred_norms.amin(dim=-1) > SPREAD_TOLERANCE * largest_mean) | ~spread | ~finite,
        "a class mean equals the global mean μ_G, so its direction is undefined",
    )
    if scaled_weight is not None:
        weight_norm = scaled_weight.norm(dim=(-1, -2))
        mask_undefined(values, [name for name in WEIGHT_METRICS if name in values], weight_norm > 0, "W = 0")
    return spread


@torch.no_grad()
def nearest_center_mismatches(
    features: Tensor, weight: Tensor, bias: Tensor, class_means: Tensor
) -> Tensor:
    """Number of samples with ``argmax_c (Wh + b)_c ≠ argmin_c ‖h − μ_c‖`` (Mixon et al., NC4), shape ``(...)``.

    Features and means share a power-of-two scale ``s``, ``W`` its own ``t``; the classifier is evaluated
    as ``(W/t)(h/s) + b/(ts)``, which has the same argmax. Logits and ``hᵀ(μ_c − μ_G)`` come from one product
    of the features with ``[W/t; M̄]``, block by block of rows (no ``n × p`` float64 copy). Non-finite inputs
    give NaN.
    """
    weight = weight.to(torch.float64)
    bias = bias.to(torch.float64)
    class_means = class_means.to(torch.float64)
    feature_scale = divisor(
        power_of_two_scale(torch.maximum(largest_magnitude(features, 2), largest_magnitude(class_means, 2)))
    )[..., None, None]
    weight_scale = divisor(matrix_scale(weight))[..., None]
    scaled_means = class_means / feature_scale
    centre = scaled_means.mean(dim=-2, keepdim=True)
    centred_means = scaled_means - centre
    scaled_weight = weight / weight_scale[..., None]
    shape = torch.broadcast_shapes(scaled_weight.shape, centred_means.shape)
    directions = torch.cat([scaled_weight.expand(shape), centred_means.expand(shape)], dim=-2).mT
    num_classes = weight.shape[-2]
    scaled_bias = (bias / weight_scale / feature_scale[..., 0]).unsqueeze(-2)
    offsets = centred_means.square().sum(dim=-1).unsqueeze(-2) + 2 * centre @ centred_means.mT
    mismatches, finite = 0, True
    for block in row_blocks(features.shape[-2]):
        products = (features[..., block, :].to(torch.float64) / feature_scale) @ directions
        logits = products[..., :num_classes] + scaled_bias
        distance_offsets = offsets - 2 * products[..., num_classes:]
        mismatches = mismatches + (logits.argmax(dim=-1) != distance_offsets.argmin(dim=-1)).sum(dim=-1)
        finite = finite & torch.cat([logits, distance_offsets], dim=-1).isfinite().flatten(-2).all(dim=-1)
    return torch.where(finite, mismatches.to(torch.float64), torch.nan)


class DecisionTables(NamedTuple):
    """What NC4's per-sample decisions need besides the products of each row ``r_i = h_i/s − m_{y_i}`` (units of the
    feature scale ``s``, ``m`` the class means of the rows' centring) with ``directions``.

    ``directions`` ``(..., k + C [+ C], p)``: the rows ``[U; W/t]`` (``t`` the power-of-two scale of ``W``), followed
    by the centred centres ``c̄_c = c_c/s − m_G`` when the centres are not the means; ``class_scores`` ``(..., C, C)``:
    ``[y, c] = (w_c/t)·m_y + b_c/(ts)``; ``centre_offsets`` ``(..., C, C)``: ``[y, c] = ‖c̄_c‖² − 2 m̄_y·c̄_c``;
    ``coordinates`` ``(..., C, k)``: ``c̄_c·u_j`` when the centres are the means (which lie in ``span U``), None
    otherwise. Then ``argmax_c (Wh_i + b)_c = argmax_c ((w_c/t)·r_i + class_scores[y_i, c])`` and
    ``argmin_c ‖h_i − c_c‖ = argmin_c (centre_offsets[y_i, c] − 2 r_i·c̄_c)`` (``‖h_i/s − c_c/s‖²`` less terms that
    do not depend on ``c``).
    """

    directions: Tensor
    class_scores: Tensor
    centre_offsets: Tensor
    coordinates: Tensor | None


def decision_tables(
    geometry: MeanGeometry, weight: Tensor, bias: Tensor, scale: Tensor, centres: Tensor | None = None
) -> DecisionTables:
    """:class:`DecisionTables` of the linear classifier ``(W, b)`` against the nearest of ``centres`` ``(..., C, p)``
    (feature units; None: the class means themselves), for rows centred on the means of ``geometry`` (units of the
    feature scale ``scale``)."""
    means, centred = geometry.means, geometry.centred
    weight_scale = divisor(matrix_scale(weight))
    scaled_weight = weight / weight_scale[..., None, None]
    shape = torch.broadcast_shapes(scaled_weight.shape, means.shape)
    rows = [geometry.directions.expand(*shape[:-2], -1, -1), scaled_weight.expand(shape)]
    scaled_bias = bias / weight_scale[..., None] / divisor(scale)[..., None]
    class_scores = means @ scaled_weight.transpose(-1, -2) + scaled_bias.unsqueeze(-2)
    if centres is None:
        centre_gram = centred @ centred.transpose(-1, -2)
        centre_offsets = centre_gram.diagonal(dim1=-2, dim2=-1).unsqueeze(-2) - 2 * centre_gram
        return DecisionTables(torch.cat(rows, dim=-2), class_scores, centre_offsets, geometry.coordinates)
    centred_centres = centres.to(torch.float64) / divisor(scale)[..., None, None] - (means - centred)
    rows.append(centred_centres.expand(shape))
    centre_offsets = (
        centred_centres.square().sum(dim=-1).unsqueeze(-2) - 2 * centred @ centred_centres.transpose(-1, -2)
    )
    return DecisionTables(torch.cat(rows, dim=-2), class_scores, centre_offsets, None)


def count_decisions(products: Tensor, labels: Tensor, tables: DecisionTables, num_directions: int) -> tuple[
    Tensor, Tensor
]:  # fmt: skip
    """``(mismatches (...), predicted (..., b))`` of a block: the number of rows whose classifier's argmax differs from
    their nearest centre, and the classifier's argmax, from ``products = r @ tables.directionsᵀ`` ``(..., b, ·)``."""
    num_classes = tables.class_scores.shape[-1]
    scores = products[..., num_directions : num_directions + num_classes] + tables.class_scores.index_select(
        -2, labels
    )
    if tables.coordinates is None:
        centre_products = products[..., num_directions + num_classes :]
    else:
        centre_products = products[..., :num_directions] @ tables.coordinates.transpose(-1, -2)
    distances = tables.centre_offsets.index_select(-2, labels) - 2 * centre_products
    predicted = scores.argmax(dim=-1)
    return (predicted != distances.argmin(dim=-1)).sum(dim=-1), predicted


def tables_finite(tables: DecisionTables) -> Tensor:
    """Whether every table is finite, per replica (the rows' own finiteness is checked by their sums)."""
    finite = tables.directions.isfinite().flatten(-2).all(dim=-1)
    for table in (tables.class_scores, tables.centre_offsets):
        finite = finite & table.isfinite().flatten(-2).all(dim=-1)
    return finite


def within_projections_and_mismatches(
    rows: CenteredRows, geometry: MeanGeometry, weight: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor]:
    """``u_kᵀ S u_k`` ``(..., k)`` (NC1) and the NC4 mismatch count ``(...)`` (NaN if not finite) in one pass.

    Each block of centred rows ``r_i`` (units of the feature scale ``s``) is multiplied once by ``[U; W/t]``
    (``t`` the power-of-two scale of ``W``; ``U`` has ``k = min(C−1, p)`` rows). The squares ``(u_j·r_i)²`` sum
    to the quadratic forms. With ``h_i/s = r_i + μ_{y_i}`` the classifier's scores are
    ``(w_c/t)·r_i + (w_c/t)·μ_{y_i} + b_c/(ts)`` (the argmax of ``Wh_i + b``); with ``m̄_c = (μ_c − μ_G)/s``
    ``= Σ_j e_cj u_j``, the nearest-centre scores ``‖h_i − μ_c‖²/s²`` less terms that do not depend on ``c`` are
    ``‖m̄_c‖² − 2 m̄_{y_i}·m̄_c − 2 Σ_j (u_j·r_i) e_cj``.
    Cost O(npC) with ``k + C ≤ 2C − 1`` columns, no ``n × p`` copy (Papyan et al., NC1 and NC4).
    """
    num_directions = geometry.directions.shape[-2]
    tables = decision_tables(geometry, weight, bias, rows.scale)
    quadratic, mismatches = 0, 0
    for block, block_rows in rows.blocks():
        labels = rows.labels[block]
        products = block_rows @ tables.directions.transpose(-1, -2)
        quadratic = quadratic + products[..., :num_directions].square().sum(dim=-2)
        mismatches = mismatches + count_decisions(products, labels, tables, num_directions)[0]
    finite = quadratic.isfinite().all(dim=-1) & tables_finite(tables)  # a non-finite row reaches its projections
    return quadratic, torch.where(finite, mismatches.to(torch.float64), torch.nan)


@torch.no_grad()
def nc_metrics(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """Neural collapse metrics NC1–NC4 of ``features`` ``(..., n, p)`` (Papyan, Han & Donoho 2020, PNAS).

    Keys :data:`NC_METRIC_NAMES`; definitions in :func:`nc_metrics_from_statistics` and
    ``nc4 = (1/n) #{i : argmax(Wh_i + b) ≠ argmin_c ‖h_i − μ_c‖}``. Float64 ``(...)`` on the input's device.
    """
    return nc_metrics_with_statistics(class_statistics(features, labels, weight.shape[-2]), weight, bias)


@torch.no_grad()
def nc_metrics_with_statistics(statistics: ClassStatistics, weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """All of :data:`NC_METRIC_NAMES` from :func:`class_statistics` of whole feature tensors (their centred rows).

    NC1's projections and NC4's scores come from one pass over the features
    (:func:`within_projections_and_mismatches`).
    """
    weight = weight.to(torch.float64)
    if statistics.num_classes < 2:
        return undefined_for_one_class(list(NC_METRIC_NAMES), statistics, weight)
    geometry = mean_geometry(statistics)
    within_quadratic, mismatches = within_projections_and_mismatches(
        statistics.within_scatter, geometry, weight, bias.to(torch.float64)
    )
    values = nc1_to_nc3(statistics, geometry, weight, within_quadratic)
    values["nc4"] = mismatches / statistics.num_samples
    mask_decisions(values, ["nc4"], mismatches, empty_classes(statistics))
    return values


def mask_decisions(values: dict[str, Tensor], names: list[str], mismatches: Tensor, empty: list[int]) -> None:
    """NaN (with a warning) for the per-sample decision metrics ``names`` where the counts are NaN (non-finite inputs)
    or a class has no samples."""
    mask_undefined(values, names, mismatches.isfinite(), "the inputs are not finite")
    mask_undefined(values, names, torch.tensor(not empty, device=mismatches.device), f"classes {empty} have no samples")
