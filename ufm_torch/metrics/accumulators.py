"""Streaming collapse statistics (torchmetrics ``Metric``) for features that arrive in batches, on many devices.

``ClassStatisticsAccumulator`` keeps class counts, class means and the pooled ``p × p`` within-class
scatter (memory independent of n) in float64 and returns :class:`ClassStatistics`; pass them to
``nc_metrics_from_statistics`` / ``snc_metrics_from_statistics``. NC4 needs the features a second time,
with the final class means: ``NearestCenterMismatch``. Usage::

    accumulator = ClassStatisticsAccumulator(num_classes, feature_dim).to(device)
    for features, labels in batches:
        accumulator.update(features, labels)
    statistics = accumulator.compute()
    values = nc_metrics_from_statistics(statistics, weight) | snc_metrics_from_statistics(statistics, weight, bias)
    mismatch = NearestCenterMismatch().to(device)
    for features, labels in batches:
        mismatch.update(features, weight, bias, statistics.means)
    values["nc4"] = mismatch.compute()

Batches are merged with the pairwise update of Chan, Golub & LeVeque (1979/1983): for each class,
``n = n_a + n_b``, ``δ = μ_b − μ_a``, ``μ = μ_a + (n_b/n)δ``, the pooled scatter gains
``Σ_c (n_a,c n_b,c / n_c) δ_c δ_cᵀ`` and each class's sum of squares ``Σ_{i∈c} ‖h_i − μ_c‖²`` (for CDNV) gains
``(n_a,c n_b,c / n_c) ‖δ_c‖²``. Means are stored as a per-class reference point (the first batch's
provisional mean) plus a small offset, so ``δ`` is computed from offsets and stays accurate when the
within-class spread is many orders of magnitude below the means (``Σ_W → 0``). All states are in units
of a running power-of-two scale (exact rescaling), as in :mod:`ufm_torch.metrics.statistics`.

States have ``dist_reduce_fx="cat"`` and one row per process (shape ``(1, …)``); after a sync or
``merge_state`` ``compute`` merges the rows pairwise, so multi-device results equal single-device ones.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torchmetrics import Metric

from ufm_torch.metrics.neural_collapse import nearest_center_mismatches
from ufm_torch.metrics.statistics import (
    ClassStatistics,
    ScatterMatrix,
    check_labels,
    corrected_two_pass_moments,
    divisor,
    matrix_scale,
)


class Moments(NamedTuple):
    """Class moments of features divided by ``scale``: ``counts`` ``(C,)``, ``scale`` ``(*R)``, per-class
    reference points ``shift`` and ``offset = mean − shift`` ``(*R, C, p)``, pooled ``scatter`` ``(*R, p, p)``,
    per-class sums of squares ``traces`` ``(*R, C)``."""

    counts: Tensor
    scale: Tensor
    shift: Tensor
    offset: Tensor
    scatter: Tensor
    traces: Tensor

    def rescaled(self, scale: Tensor) -> Moments:
        """The same moments in units of ``scale ≥ self.scale`` (powers of two: exact)."""
        ratio = (self.scale / divisor(scale))[..., None, None]
        squared = ratio.square()
        return Moments(
            self.counts, scale, self.shift * ratio, self.offset * ratio, self.scatter * squared,
            self.traces * squared[..., 0],
        )  # fmt: skip


def batch_moments(features: Tensor, labels: Tensor, num_classes: int) -> Moments:
    """Moments of one batch ``(*R, b, p)`` by the corrected two-pass algorithm."""
    check_labels(labels, features.shape[-2], num_classes)
    scale = matrix_scale(features)
    counts, rows = corrected_two_pass_moments(features, labels, num_classes, scale)
    return Moments(counts, scale, rows.provisional, rows.corrections, rows.scatter_matrix(), rows.class_traces)


def merge_moments(first: Moments, second: Moments) -> Moments:
    """Pairwise merge (Chan, Golub & LeVeque): ``μ = μ_a + (n_b/n)δ``, ``S = S_a + S_b + Σ_c (n_a n_b/n) δ_c δ_cᵀ``,
    ``T_c = T_a,c + T_b,c + (n_a n_b/n) ‖δ_c‖²``."""
    scale = torch.maximum(first.scale, second.scale)
    first, second = first.rescaled(scale), second.rescaled(scale)
    has_first = (first.counts > 0)[:, None]
    has_second = (second.counts > 0)[:, None]
    shift = torch.where(has_first, first.shift, second.shift)
    first_offset = torch.where(has_first, first.offset, 0.0)
    second_offset = torch.where(has_second, second.offset + (second.shift - shift), 0.0)
    delta = second_offset - first_offset
    counts = first.counts + second.counts
    share = second.counts / counts.clamp(min=1)
    coupling = (first.counts * share)[:, None]
    scatter = first.scatter + second.scatter + (coupling * delta).transpose(-1, -2) @ delta
    traces = first.traces + second.traces + coupling[:, 0] * delta.square().sum(dim=-1)
    return Moments(counts, scale, shift, first_offset + share[:, None] * delta, scatter, traces)


class ClassStatisticsAccumulator(Metric):
    """Class counts, means and pooled within-class scatter of batched features (Papyan, Han & Donoho 2020).

    ``update(features, labels)`` with ``features`` ``(*replica_shape, b, p)`` and labels ``(b,)`` in
    ``[0, C)``; ``compute()`` returns :class:`ClassStatistics` with a :class:`ScatterMatrix` and per-class sums of
    squares, equal (up to rounding) to ``class_statistics`` of the concatenated batches. Memory ``O(C p + p²)`` per
    replica; ``ufm_torch.metrics.two_pass`` needs ``O(C p + C²)`` and two passes over the data.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self, num_classes: int, feature_dim: int, replica_shape: tuple[int, ...] = (), **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.replica_shape = tuple(replica_shape)
        self.state_shapes = Moments(
            counts=(num_classes,),
            scale=self.replica_shape,
            shift=(*self.replica_shape, num_classes, feature_dim),
            offset=(*self.replica_shape, num_classes, feature_dim),
            scatter=(*self.replica_shape, feature_dim, feature_dim),
            traces=(*self.replica_shape, num_classes),
        )
        for name, shape in zip(Moments._fields, self.state_shapes, strict=True):
            self.add_state(name, torch.zeros(1, *shape, dtype=torch.float64), dist_reduce_fx="cat")

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Merge one batch of features ``(*replica_shape, b, p)`` with labels ``(b,)``."""
        expected = (*self.replica_shape, features.shape[-2], self.feature_dim)
        if tuple(features.shape) != expected:
            raise ValueError(f"features must have shape {expected}, got {tuple(features.shape)}")
        merged = merge_moments(self.merged_rows(), batch_moments(features, labels, self.num_classes))
        for name, value in zip(Moments._fields, merged, strict=True):
            setattr(self, name, value.unsqueeze(0))

    def merged_rows(self) -> Moments:
        """The per-process rows of every state (after a sync or ``merge_state``) merged pairwise."""
        rows = [
            getattr(self, name).to(torch.float64).reshape(-1, *shape)
            for name, shape in zip(Moments._fields, self.state_shapes, strict=True)
        ]
        merged = Moments(*(row[0] for row in rows))
        for index in range(1, rows[0].shape[0]):
            merged = merge_moments(merged, Moments(*(row[index] for row in rows)))
        return merged

    def compute(self) -> ClassStatistics:
        """Class statistics of all batches seen (on all processes)."""
        merged = self.merged_rows()
        return ClassStatistics(
            merged.counts, merged.shift + merged.offset, ScatterMatrix(merged.scatter), merged.scale, merged.traces
        )


class NearestCenterMismatch(Metric):
    """NC4: fraction of samples with ``argmax(Wh + b) ≠ argmin_c ‖h − μ_c‖`` (Papyan, Han & Donoho 2020).

    ``update(features, weight, bias, class_means)`` with the final class means (``ClassStatistics.means``)
    counts mismatches per replica; ``compute()`` returns their fraction, shape ``replica_shape``.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = False

    def __init__(self, replica_shape: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("mismatches", torch.zeros(replica_shape, dtype=torch.float64), "sum")
        self.add_state("samples", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, features: Tensor, weight: Tensor, bias: Tensor, class_means: Tensor) -> None:
        """Count the mismatches of one batch ``(*replica_shape, b, p)``."""
        self.mismatches = self.mismatches + nearest_center_mismatches(
            features, weight, bias, class_means
        )
        self.samples = self.samples + features.shape[-2]

    def compute(self) -> Tensor:
        """``mismatches / samples``."""
        return self.mismatches / self.samples
