"""Deep neural collapse DNC1–DNC3 and the numerical rank of every layer of a deep network, batched.

The deep UFM (Súkeník, Mondelli & Lampert 2023, "Deep neural collapse is provably optimal for the deep
unconstrained features model", NeurIPS; ``docs/deep_ufm_theory.md`` §0): ``H_1`` free, ``H_{l+1} = σ(W_l H_l)``
(l = 1..L−1, σ the identity or ReLU), logits ``W_L H_L``. Row convention as everywhere in :mod:`ufm_torch.metrics`:
``features`` ``(..., n, p)`` are ``H_lᵀ``, ``weight`` ``(..., d_out, d_in)`` is ``W_l`` as ``nn.Linear`` stores it,
``class_means`` ``(..., K, p)`` has row k ``μ_k = (1/n_k) Σ_{y_i = k} h_i`` (uncentred), leading ``...`` are replicas.
Deep neural collapse at layer l (the paper's DNC1–DNC3, measured as follows; ``docs/deep_ufm_theory.md``,
"Deep-collapse metrics"):

- ``dnc1``: NC1 ``tr(Σ_W Σ_B⁺)/K`` of ``H_l``, ``dnc1_preactivation`` the same of ``Z_l = W_l H_l``
  (:func:`dnc1`, the definition of :mod:`ufm_torch.metrics.neural_collapse`, not a second implementation);
- ``dnc2``: ``‖G/‖G‖_F − G*/‖G*‖_F‖_F`` of the class means' Gram G against a :class:`FrameGeometry` (:func:`dnc2`):
  an orthogonal frame after a ReLU, a simplex ETF for ``H_1`` and linear layers (:func:`dnc2_geometry`);
- ``dnc3``: the energy-weighted misalignment of the rows of ``W_l`` with the class means of ``H_l`` (:func:`dnc3`);
- ``rank`` of ``H_l``, ``class_mean_rank`` of ``[μ_1 … μ_K]``: singular values above
  :data:`RANK_TOLERANCE` ``· σ_max`` (:func:`numerical_rank`; the low-rank bias of Súkeník, Lampert & Mondelli
  2024, "Neural collapse versus low-rank bias: is deep neural collapse really optimal?", NeurIPS), and the
  ``stable_rank`` ``‖H_l‖_F²/‖H_l‖_2²`` (:func:`stable_rank`).

Entry points: :func:`deep_collapse_metrics` (the whole network from ``H_1`` and the weights), and
:func:`class_mean_metrics` (``dnc2``, ``class_mean_rank``, ``dnc3`` of one layer's class means, e.g. from the
streaming accumulators of :mod:`ufm_torch.metrics.two_pass`). Everything is float64; each replica is divided by a
power of two before squaring (exact), so features of any magnitude neither overflow nor underflow. Undefined values
are NaN with a :class:`~ufm_torch.metrics.statistics.CollapseMetricWarning`.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import torch
from torch import Tensor

from ufm_torch.metrics.neural_collapse import (
    SPREAD_TOLERANCE,
    empty_classes,
    mask_degenerate,
    mean_geometry,
    within_to_between_trace,
)
from ufm_torch.metrics.statistics import (
    ClassStatistics,
    class_statistics,
    divisor,
    mask_undefined,
    matrix_scale,
    warn_undefined,
)
from ufm_torch.metrics.variability import unit_rows
from ufm_torch.models import Activation

DEEP_COLLAPSE_METRIC_NAMES = (
    "dnc1",
    "dnc1_preactivation",
    "dnc2",
    "dnc3",
    "rank",
    "stable_rank",
    "class_mean_rank",
)
"""The metrics of one layer l of a deep network (:func:`deep_collapse_metrics`)."""

RANK_TOLERANCE = 1e-6
"""Relative tolerance of :func:`numerical_rank`: singular values ``σ_i ≤ 1e-6 · σ_max`` count as zero. About eight
float32 ulps (ε₃₂ ≈ 1.2e-7), so it does not depend on the dtype the statistics happen to be kept in: rounding a
rank-r float64 layer to float32 leaves its other singular values near ``1e-8 · σ_max`` (measured for n = 500–4000,
p = 64–512, r = 4–100), a hundred times below it, whereas numpy's ``matrix_rank`` default in float64,
``max(m, n) · ε₆₄ · σ_max`` (≈ 2e-13 at 1000 rows), would count that rounding as rank; and it lies far below the
singular values a trained layer keeps. Features of lower precision (bf16, ε ≈ 8e-3) need a larger tolerance."""


def scaled(matrix: Tensor) -> Tensor:
    """``matrix`` in float64 divided by its per-replica power-of-two scale (:func:`matrix_scale`; exact), so that it
    squares safely; a zero matrix stays zero."""
    matrix = matrix.detach().to(torch.float64)
    return matrix / divisor(matrix_scale(matrix))[..., None, None]


class FrameGeometry(Enum):
    """The configuration DNC2 compares class means with: its Gram ``G`` and unit-norm target ``G*/‖G*‖_F``.

    ``ORTHOGONAL_FRAME``: the uncentred Gram ``MMᵀ`` (rows ``μ_k``) against ``I_K/√K`` (equal-norm, mutually
    orthogonal means: post-ReLU layers of the bias-free deep UFM, Súkeník et al. 2023, DNC2). ``SIMPLEX_ETF``: the
    Gram of the centred means ``M̄M̄ᵀ`` (rows ``μ_k − μ_G``, ``μ_G`` the mean of the class means) against
    ``(I_K − 11ᵀ/K)/√(K − 1)`` (Papyan, Han & Donoho 2020, NC2). An equal-norm orthogonal frame, centred, is a
    simplex ETF, so ``SIMPLEX_ETF`` is 0 wherever ``ORTHOGONAL_FRAME`` is; not conversely.
    """

    ORTHOGONAL_FRAME = "orthogonal_frame"
    SIMPLEX_ETF = "simplex_etf"

    def vectors(self, class_means: Tensor) -> Tensor:
        """The rows whose Gram is compared: the class means ``(..., K, p)``, centred for the simplex ETF."""
        if self is FrameGeometry.SIMPLEX_ETF:
            return class_means - class_means.mean(dim=-2, keepdim=True)
        return class_means

    def target(self, num_classes: int, like: Tensor) -> Tensor:
        """``G*/‖G*‖_F`` ``(K, K)``: ``I/√K`` or ``(I − 11ᵀ/K)/√(K − 1)``, in ``like``'s dtype and on its device."""
        identity = torch.eye(num_classes, dtype=like.dtype, device=like.device)
        if self is FrameGeometry.SIMPLEX_ETF:
            return (identity - 1 / num_classes) / (num_classes - 1) ** 0.5
        return identity / num_classes**0.5


def dnc2_geometry(activation: Activation, layer: int) -> FrameGeometry:
    """DNC2's geometry for ``H_l`` of a deep network with hidden activation σ: an orthogonal frame for a post-ReLU
    layer (l ≥ 2), a simplex ETF for the free ``H_1`` and every layer of a linear network (Súkeník et al. 2023,
    DNC2)."""
    if activation is Activation.RELU and layer >= 2:
        return FrameGeometry.ORTHOGONAL_FRAME
    return FrameGeometry.SIMPLEX_ETF


def undefined(name: str, shape: torch.Size, like: Tensor, reason: str) -> Tensor:
    """NaN of ``shape`` (float64, on ``like``'s device) with a warning that ``name`` is undefined for ``reason``."""
    warn_undefined([name], torch.tensor(False), reason)
    return like.new_full(shape, torch.nan, dtype=torch.float64)


@torch.no_grad()
def dnc1(statistics: ClassStatistics) -> Tensor:
    """DNC1 ``tr(Σ_W Σ_B⁺)/K`` (Súkeník et al. 2023, DNC1; Papyan, Han & Donoho 2020, NC1) of the tensor whose
    :func:`~ufm_torch.metrics.statistics.class_statistics` (or two-pass accumulator statistics) are given: ``H_l``
    for ``dnc1``, the pre-activations ``Z_l = W_l H_l`` for ``dnc1_preactivation``.

    ``Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ``, ``Σ_B = M̄M̄ᵀ/K`` (``M̄`` the centred means): NC1 of
    :mod:`ufm_torch.metrics.neural_collapse` itself (its SVD of the means, :func:`within_to_between_trace` and its
    masking), so ``dnc1`` of a layer equals that layer's ``collapse/nc1``. Float64 ``(...)``; NaN with a warning
    where the means coincide, a class is empty, the features are not finite or K < 2.
    """
    if statistics.num_classes < 2:
        reason = f"it needs K ≥ 2 classes, got K = {statistics.num_classes}"
        return undefined("dnc1", statistics.scale.shape, statistics.scale, reason)
    geometry = mean_geometry(statistics)
    within_quadratic = statistics.within_scatter.quadratic_form(geometry.directions)
    values = {"dnc1": within_to_between_trace(geometry, within_quadratic, statistics.num_samples)}
    mask_degenerate(values, geometry, empty_classes(statistics))
    return values["dnc1"]


@torch.no_grad()
def dnc2(class_means: Tensor, geometry: FrameGeometry) -> Tensor:
    """DNC2 ``‖G/‖G‖_F − G*/‖G*‖_F‖_F`` of class means ``(..., K, p)`` against ``geometry`` (Súkeník et al. 2023,
    DNC2): ``‖MMᵀ/‖MMᵀ‖_F − I_K/√K‖_F`` for the orthogonal frame, ``‖G/‖G‖_F − (I_K − 11ᵀ/K)/√(K − 1)‖_F`` with
    ``G = M̄M̄ᵀ`` the Gram of the centred means for the simplex ETF.

    Invariant to the scale of the means and to any rotation ``μ_k → Qμ_k``; in ``[0, 2]``. Not ``collapse/nc2_etf``
    ``‖C − T‖_F`` (C the cosines of the centred means, ``T = (KI − 11ᵀ)/(K − 1)``), which ignores the norms
    ``‖μ_k − μ_G‖``; this one weighs them. Both are 0 exactly at a simplex ETF (the centred means sum to 0, so ETF
    cosines force equal norms); for equal norms ``G ∝ C`` and this one is ``√(2 − 2⟨C, T⟩/(‖C‖_F‖T‖_F))``.
    Float64 ``(...)``; NaN with a warning where the compared vectors are all (close to) 0 (for the simplex ETF: the
    means coincide) or, for the simplex ETF, K < 2.
    """
    num_classes = class_means.shape[-2]
    if geometry is FrameGeometry.SIMPLEX_ETF and num_classes < 2:
        reason = f"a simplex ETF needs K ≥ 2 classes, got K = {num_classes}"
        return undefined("dnc2", class_means.shape[:-2], class_means, reason)
    means = scaled(class_means)
    vectors = geometry.vectors(means)
    gram = vectors @ vectors.transpose(-1, -2)
    normalised = gram / divisor(gram.norm(dim=(-1, -2)))[..., None, None]
    values = {"dnc2": (normalised - geometry.target(num_classes, gram)).norm(dim=(-1, -2))}
    collapsed = vectors.norm(dim=-1).amax(dim=-1) <= SPREAD_TOLERANCE * means.norm(dim=-1).amax(dim=-1)
    mask_undefined(values, ["dnc2"], ~collapsed, f"the Gram compared with the {geometry.value} is 0")
    return values["dnc2"]


@torch.no_grad()
def dnc3(class_means: Tensor, weight: Tensor, rows_are_classes: bool = False) -> Tensor:
    """DNC3 ``Σ_j ‖w_j‖² (1 − c_j) / Σ_j ‖w_j‖²``: how far the rows ``w_j`` of ``W_l`` ``(..., d_out, p)`` are from
    being aligned with the class means ``μ_k`` ``(..., K, p)`` of the layer ``H_l`` they read (Súkeník et al. 2023,
    DNC3: every row of ``W_l`` is 0 or aligned with a class mean of ``H_l``; the cosine is signed, so a row along
    ``−μ_k`` is misaligned).

    ``c_j = max_k cos(w_j, μ_k)`` (each row against its best-aligned class mean: a hidden layer has ``d_out ≠ K``
    rows, some of them 0); with ``rows_are_classes`` (the classifier ``W_L``, row k scoring class k, ``d_out = K``)
    ``c_k = cos(w_k, μ_k)``, NC3 for uncentred means. Zero if and only if every non-zero row points along a class
    mean (its own class's with ``rows_are_classes``); rows weigh by their energy, so zero rows do not count and, for
    small angles θ_j, the value is ``Σ_j ‖w_j‖² θ_j²/2 / ‖W‖_F²``. Invariant to the scale of W and of the means, to
    ``(μ_k, w_j) → (Qμ_k, Qw_j)`` (Q orthogonal) and to permuting the rows; in ``[0, 2]``. A zero class mean counts
    as orthogonal to every row. Float64 ``(...)``; NaN with a warning where ``W = 0`` or every class mean is 0.
    """
    num_classes, rows = class_means.shape[-2], weight.shape[-2]
    if class_means.shape[-1] != weight.shape[-1]:
        raise ValueError(f"weight reads {weight.shape[-1]} features but the class means have {class_means.shape[-1]}")
    if rows_are_classes and rows != num_classes:
        raise ValueError(f"rows_are_classes needs one row per class, got {rows} rows and K = {num_classes}")
    means, scaled_weight = scaled(class_means), scaled(weight)
    row_energy = scaled_weight.square().sum(dim=-1)
    cosines = unit_rows(scaled_weight) @ unit_rows(means).transpose(-1, -2)
    best = cosines.diagonal(dim1=-2, dim2=-1) if rows_are_classes else cosines.amax(dim=-1)
    total = row_energy.sum(dim=-1)
    values = {"dnc3": (row_energy * (1 - best)).sum(dim=-1) / divisor(total)}
    mask_undefined(values, ["dnc3"], total != 0, "W = 0")
    mask_undefined(values, ["dnc3"], means.abs().amax(dim=(-1, -2)) != 0, "every class mean is 0")
    return values["dnc3"]


def singular_values(matrix: Tensor, name: str) -> Tensor:
    """Singular values ``(..., min(m, n))`` (descending) of each replica's ``matrix`` ``(..., m, n)`` divided by its
    power-of-two scale, float64; NaN, with a warning naming the metric ``name``, for a replica with non-finite
    entries."""
    matrix = scaled(matrix)
    finite = matrix.isfinite().all(dim=-1).all(dim=-1)
    values = {name: torch.linalg.svdvals(torch.where(finite[..., None, None], matrix, 0.0))}
    mask_undefined(values, [name], finite[..., None], "the matrix is not finite")
    return values[name]


@torch.no_grad()
def numerical_rank(matrix: Tensor, relative_tolerance: float = RANK_TOLERANCE) -> Tensor:
    """Numerical rank ``#{i : σ_i > relative_tolerance · σ_max}`` of ``matrix`` ``(..., m, n)`` (Golub & Van Loan,
    "Matrix computations", §5.4.1; the quantity of the low-rank bias of Súkeník, Lampert & Mondelli 2024), 0 for a
    zero matrix. :data:`RANK_TOLERANCE` explains the default. Float64 ``(...)``, NaN where not finite."""
    values = singular_values(matrix, "rank")
    largest = values[..., :1]
    rank = (values > relative_tolerance * largest).sum(dim=-1).to(torch.float64)
    return torch.where(largest[..., 0].isnan(), torch.nan, rank)


@torch.no_grad()
def stable_rank(matrix: Tensor) -> Tensor:
    """Stable rank ``‖A‖_F²/‖A‖_2² = Σ_i σ_i²/σ_max²`` of ``matrix`` ``(..., m, n)`` (Rudelson & Vershynin 2007,
    "Sampling from large matrices: an approach through geometric functional analysis"): a continuous lower bound of
    the rank, free of a tolerance; 0 for a zero matrix. Float64 ``(...)``, NaN where not finite."""
    values = singular_values(matrix, "stable_rank")
    return (values / divisor(values[..., :1])).square().sum(dim=-1)


@torch.no_grad()
def class_mean_metrics(
    class_means: Tensor, geometry: FrameGeometry, weight: Tensor | None = None, rows_are_classes: bool = False
) -> dict[str, Tensor]:
    """What one layer's class means ``(..., K, p)`` give: ``dnc2`` against ``geometry`` (:func:`dnc2`),
    ``class_mean_rank`` (:func:`numerical_rank` of ``[μ_1 … μ_K]``, uncentred) and, with the ``weight``
    ``(..., d_out, p)`` of the layer that reads them, ``dnc3`` (:func:`dnc3`). Class means of any source: whole
    tensors or the streaming accumulators (``ClassStatistics.means``). Float64 ``(...)``."""
    values = {"dnc2": dnc2(class_means, geometry), "class_mean_rank": numerical_rank(class_means)}
    if weight is not None:
        values["dnc3"] = dnc3(class_means, weight, rows_are_classes)
    return values


@torch.no_grad()
def deep_collapse_metrics(
    features: Tensor, labels: Tensor, weights: Sequence[Tensor], activation: Activation
) -> list[dict[str, Tensor]]:
    """:data:`DEEP_COLLAPSE_METRIC_NAMES` of every layer l = 1..L of a deep network from its first layer's
    ``features`` ``(..., n, p)`` (``H_1ᵀ``, e.g. a deep UFM's free features), ``labels`` ``(n,)`` and ``weights``
    ``W_1, …, W_L`` ``(..., d_out, d_in)`` (no bias; ``W_L`` has one row per class, K = its rows).

    Entry l − 1 holds, for ``H_l`` (``H_{l+1} = σ(W_l H_l)``, ``Z_l = W_l H_l``): ``dnc1`` and ``dnc1_preactivation``
    (:func:`dnc1` of ``H_l`` and of ``Z_l``; ``Z_L`` are the logits), ``dnc2`` against ``dnc2_geometry(activation, l)``,
    ``dnc3`` of ``W_l`` against the class means of ``H_l`` (``rows_are_classes`` for ``W_L``), ``rank`` and
    ``stable_rank`` of ``H_l`` and ``class_mean_rank``. ``Z_l`` is computed in the promoted dtype of ``H_l`` and
    ``W_l``, as the network computes it; the metrics are float64 ``(...)``.
    """
    num_classes = weights[-1].shape[-2]
    layers = []
    rows = features
    for layer, weight in enumerate(weights, start=1):
        dtype = torch.promote_types(rows.dtype, weight.dtype)
        preactivation = rows.to(dtype) @ weight.to(dtype).transpose(-1, -2)
        statistics = class_statistics(rows, labels, num_classes)
        values = {
            "dnc1": dnc1(statistics),
            "dnc1_preactivation": dnc1(class_statistics(preactivation, labels, num_classes)),
            **class_mean_metrics(statistics.means, dnc2_geometry(activation, layer), weight, layer == len(weights)),
            "rank": numerical_rank(rows),
            "stable_rank": stable_rank(rows),
        }
        layers.append({name: values[name] for name in DEEP_COLLAPSE_METRIC_NAMES})
        rows = activation.apply(preactivation)
    return layers
