"""Streaming class statistics in two passes over batches (torchmetrics ``Metric``): O(C·p + C²) numbers per replica.

The first pass (:class:`ClassMeansAccumulator`) sums each class's features; the second
(:class:`CentredMomentsAccumulator`) reads the same samples again and accumulates, from the rows
``r_i = h_i/s − m_{y_i}/s`` centred on the first pass's means ``m`` (``s`` the power-of-two scale of the largest
``|h_ij|``, so that magnitudes of 1e±150 square safely), per class ``Σ r`` (the correction ``d`` of the corrected
two-pass algorithm, Chan, Golub & LeVeque 1983) and ``Σ ‖r‖²`` (CDNV's variances), the ``k × k`` second moment of the
projections ``U r`` onto an orthonormal basis ``U`` of the span of the first pass's centred means
(``k = min(C − 1, p)``), and, given a classifier ``(W, b)``, the NC4 mismatches ``argmax(Wh + b) ≠ argmin_c ‖h −
centre_c‖`` and the correct decisions ``argmax(Wh + b) = y``. One product of each block of rows with ``[U; W]``
gives all of them (O(b·p·(k + C)) per batch). No ``p × p`` matrix is ever formed: NC1 needs the within-class scatter
only along the directions of the means (:class:`~ufm_torch.metrics.statistics.ProjectedScatter`), and ``tr Σ_W``
comes from the per-class sums of squares.

States are float64 sums (``dist_reduce_fx="sum"``; the largest magnitude ``"max"``), so the results after a DDP
sync equal those of one process; features may arrive in any float dtype (each batch is converted to float64 in
blocks of rows). Both passes must read the same samples (checked by their class counts). ``forward`` is not
supported (use ``update`` and ``compute``). Usage::

    means = ClassMeansAccumulator(num_classes, feature_dim).to(device)
    for features, labels in batches():
        means.update(features, labels)
    moments = CentredMomentsAccumulator(means.compute(), weight, bias).to(device)
    for features, labels in batches():
        moments.update(features, labels)
    values = layer_metrics_from_statistics(moments.compute(), weight, bias)  # NC1–NC4, CDNV, GNC2, UNC3, accuracy

Held-out data: the first pass reads the held-out samples; ``centres=train_statistics.means`` makes the second pass's
NC4 compare the classifier with the nearest *training* class mean.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric

from ufm_torch.metrics.neural_collapse import (
    DecisionTables,
    count_decisions,
    decision_tables,
    geometry_of_means,
    tables_finite,
)
from ufm_torch.metrics.statistics import (
    ClassifierDecisions,
    ClassStatistics,
    ProjectedScatter,
    check_labels,
    divisor,
    largest_magnitude,
    power_of_two_scale,
    shifted_row_blocks,
)


class ClassMeans:
    """The first pass's result: ``counts`` ``(C,)`` (float64), class ``means`` ``(*R, C, p)`` in the features' units
    (NaN rows for classes without samples) and ``scale`` ``(*R)``, the power of two ``s`` with
    ``max |h_ij| / s ∈ [1, 2)`` (0 for all-zero features).

    A plain class: ``torchmetrics`` squeezes one-element tensors inside the tuples and dataclasses that ``compute``
    returns (replica shape ``(1,)``, C = 1).
    """

    def __init__(self, counts: Tensor, means: Tensor, scale: Tensor) -> None:
        self.counts = counts
        self.means = means
        self.scale = scale

    def __repr__(self) -> str:
        return f"ClassMeans(counts={self.counts.tolist()}, means of shape {tuple(self.means.shape)})"

    @property
    def scaled_means(self) -> Tensor:
        """``μ_c / s`` ``(*R, C, p)``, 0 for classes without samples."""
        scaled = self.means / divisor(self.scale)[..., None, None]
        return torch.where((self.counts > 0)[:, None], scaled, 0.0)


def check_batch(
    features: Tensor, labels: Tensor, replica_shape: tuple[int, ...], num_classes: int, feature_dim: int
) -> bool:
    """``ValueError`` unless ``features`` is ``(*replica_shape, b, p)`` with labels ``(b,)`` in ``[0, C)``; whether
    the batch has rows."""
    expected = (*replica_shape, features.shape[-2] if features.ndim >= 2 else 0, feature_dim)
    if tuple(features.shape) != expected:
        raise ValueError(f"features must have shape {expected} (*replica_shape, b, p), got {tuple(features.shape)}")
    if features.shape[-2] == 0:
        return False
    check_labels(labels, features.shape[-2], num_classes)
    return True


class ClassMeansAccumulator(Metric):
    """Pass 1: class counts, float64 class sums and the largest ``|h_ij|`` of batched features.

    ``update(features (*replica_shape, b, p), labels (b,))``; ``compute()`` returns :class:`ClassMeans`. States:
    ``counts`` ``(C,)``, ``sums`` ``(*R, C, p)``, ``largest`` ``(*R)``: O(C·p) per replica.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_classes: int, feature_dim: int, replica_shape: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.replica_shape = tuple(replica_shape)
        self.add_state("counts", torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        sums = torch.zeros(*self.replica_shape, num_classes, feature_dim, dtype=torch.float64)
        self.add_state("sums", sums, dist_reduce_fx="sum")
        self.add_state("largest", torch.zeros(self.replica_shape, dtype=torch.float64), dist_reduce_fx="max")
        self.workspace: list[Tensor] = []

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add one batch."""
        if not check_batch(features, labels, self.replica_shape, self.num_classes, self.feature_dim):
            return
        self.counts += torch.bincount(labels, minlength=self.num_classes)
        self.largest = torch.maximum(self.largest, largest_magnitude(features, 2).to(torch.float64))
        unit = self.largest.new_ones(self.replica_shape)
        for block, rows in shifted_row_blocks(features, labels, unit, (), self.workspace):
            self.sums.index_add_(-2, labels[block], rows)

    def compute(self) -> ClassMeans:
        """Class means of all batches seen (on all processes)."""
        means = self.sums / self.counts.clamp(min=1)[:, None]
        means = torch.where((self.counts > 0)[:, None], means, torch.nan)
        return ClassMeans(self.counts.clone(), means, power_of_two_scale(self.largest))


class CentredMomentsAccumulator(Metric):
    """Pass 2: per-class centred sums and sums of squares, the projected within-class second moment and (with a
    classifier) the NC4 mismatches and correct decisions, of the same samples as pass 1 (module docstring).

    ``reference``: pass 1's :class:`ClassMeans`. ``weight`` ``(*R, C, p)`` and ``bias`` ``(*R, C)`` (None: zero):
    the classifier whose decisions are counted. ``centres`` ``(*R, C, p)`` in feature units: the class centres of the
    nearest-centre rule (default: the reference means; the training means for held-out data). ``compute()`` returns
    :class:`ClassStatistics` with a :class:`ProjectedScatter`, per-class ``class_traces`` and, with a classifier,
    ``decisions`` (:class:`ClassifierDecisions`): the input of
    :func:`~ufm_torch.metrics.variability.layer_metrics_from_statistics`. States: ``counts`` ``(C,)``,
    ``residual_sums`` ``(*R, C, p)``, ``residual_squares`` ``(*R, C)``, ``projected_moment`` ``(*R, k, k)`` and
    ``mismatches``, ``correct`` ``(*R)``: O(C·p + C²) per replica.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(
        self, reference: ClassMeans, weight: Tensor | None = None, bias: Tensor | None = None,
        centres: Tensor | None = None, **kwargs,
    ) -> None:  # fmt: skip
        super().__init__(**kwargs)
        counts, means = reference.counts.to(torch.float64), reference.means
        self.num_classes, self.feature_dim = means.shape[-2], means.shape[-1]
        self.replica_shape = tuple(means.shape[:-2])
        self.classified = weight is not None
        scale = reference.scale.to(torch.float64)
        geometry = geometry_of_means(reference.scaled_means.to(torch.float64))
        self.num_directions = geometry.directions.shape[-2]
        self.register_buffer("reference_counts", counts.clone(), persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.register_buffer("offsets", reference.scaled_means.to(torch.float64), persistent=False)
        self.register_buffer("basis", geometry.directions, persistent=False)
        product_rows = geometry.directions
        if self.classified:
            weight = weight.detach().to(torch.float64).expand(*self.replica_shape, self.num_classes, self.feature_dim)
            bias = weight.new_zeros(weight.shape[:-1]) if bias is None else bias.detach().to(torch.float64)
            tables = decision_tables(geometry, weight, bias, scale, None if centres is None else centres.detach())
            product_rows = tables.directions
            classifier_finite = (
                weight.isfinite().flatten(-2).all(dim=-1) & bias.isfinite().all(dim=-1) & scale.isfinite()
            )
            defined = tables_finite(tables) & classifier_finite
            if centres is None:  # the nearest-centre rule needs every class's mean
                defined = defined & bool((counts > 0).all())
            self.register_buffer("class_scores", tables.class_scores, persistent=False)
            self.register_buffer("centre_offsets", tables.centre_offsets, persistent=False)
            self.register_buffer("coordinates", tables.coordinates, persistent=False)
            self.register_buffer("decisions_defined", defined, persistent=False)
            self.register_buffer("classifier_finite", classifier_finite, persistent=False)
            self.add_state("mismatches", torch.zeros(self.replica_shape, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state("correct", torch.zeros(self.replica_shape, dtype=torch.float64), dist_reduce_fx="sum")
        self.register_buffer("product_rows", product_rows, persistent=False)
        shape, k = self.replica_shape, self.num_directions
        self.add_state("counts", torch.zeros(self.num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state(
            "residual_sums", torch.zeros(*shape, self.num_classes, self.feature_dim, dtype=torch.float64), "sum"
        )
        self.add_state("residual_squares", torch.zeros(*shape, self.num_classes, dtype=torch.float64), "sum")
        self.add_state("projected_moment", torch.zeros(*shape, k, k, dtype=torch.float64), dist_reduce_fx="sum")
        self.workspace: list[Tensor] = []

    def tables(self) -> DecisionTables:
        """The :class:`~ufm_torch.metrics.neural_collapse.DecisionTables` (on the metric's device)."""
        return DecisionTables(self.product_rows, self.class_scores, self.centre_offsets, self.coordinates)

    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add one batch of the samples of pass 1."""
        if not check_batch(features, labels, self.replica_shape, self.num_classes, self.feature_dim):
            return
        self.counts += torch.bincount(labels, minlength=self.num_classes)
        tables = self.tables() if self.classified else None
        for block, rows in shifted_row_blocks(features, labels, self.scale, (self.offsets,), self.workspace):
            block_labels = labels[block]
            self.residual_sums.index_add_(-2, block_labels, rows)
            self.residual_squares.index_add_(-1, block_labels, torch.linalg.vector_norm(rows, dim=-1).square_())
            products = rows @ self.product_rows.transpose(-1, -2)
            projections = products[..., : self.num_directions]
            self.projected_moment += projections.transpose(-1, -2) @ projections
            if tables is not None:
                mismatches, predicted = count_decisions(products, block_labels, tables, self.num_directions)
                self.mismatches += mismatches
                self.correct += (predicted == block_labels).sum(dim=-1)

    def compute(self) -> ClassStatistics:
        """Class statistics of all batches seen (on all processes), with the correction ``d`` applied: means
        ``m/s + d``, class sums of squares ``Σ ‖r‖² − n_c‖d_c‖²``, projected scatter
        ``Σ (Ur)(Ur)ᵀ − Σ_c n_c (Ud_c)(Ud_c)ᵀ``; ``ValueError`` if pass 2 read other class counts than pass 1."""
        counts = self.counts
        if not torch.equal(counts, self.reference_counts):
            raise ValueError(
                "the second pass must read the samples of the first: class counts "
                f"{counts.tolist()} in pass 2, {self.reference_counts.tolist()} in pass 1"
            )
        corrections = self.residual_sums / counts.clamp(min=1)[:, None]
        class_traces = (self.residual_squares - counts * corrections.square().sum(dim=-1)).clamp(min=0)
        projected = corrections @ self.basis.transpose(-1, -2)
        compressed = self.projected_moment - (counts[:, None] * projected).transpose(-1, -2) @ projected
        scatter = ProjectedScatter(self.basis, compressed, class_traces.sum(dim=-1))
        decisions = None
        if self.classified:
            finite = self.residual_squares.isfinite().all(dim=-1)
            decisions = ClassifierDecisions(
                torch.where(finite & self.decisions_defined, self.mismatches, torch.nan),
                torch.where(finite & self.classifier_finite, self.correct, torch.nan),
            )
        return ClassStatistics(counts.clone(), self.offsets + corrections, scatter, self.scale, class_traces, decisions)
