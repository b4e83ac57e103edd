"""Class statistics of features (counts, class means, pooled within-class scatter), the input of every metric.

All collapse metrics are functions of these statistics plus ``(W, b)``, so the pure functions (whole
feature tensors) and the streaming accumulators (batches, devices) share one implementation.

Conventions: ``features`` has shape ``(..., n, p)``, ``labels`` ``(n,)`` with values in ``[0, C)``, shared
by all replicas ``...``. Everything is float64. Before any squaring the features are divided by a power
of two ``scale`` (exact, so nothing is rounded) with ``max |h_ij| / scale ∈ [1, 2)``, so that features of
magnitude 1e-150 or 1e150 neither underflow nor overflow.

Class means use the corrected two-pass algorithm (Chan, Golub & LeVeque 1983): a first pass gives a
provisional mean ``m̃_c``, a second pass the exact correction ``d_c = mean_{i∈c}(h_i − m̃_c)``, and the
centred rows are ``(h_i − m̃_c) − d_c``. They stay accurate to machine precision *relative to the
within-class spread*, however small it is compared with the means. Every pass reads the features in blocks of
:data:`ROW_CHUNK` rows converted into one reused float64 buffer, so no ``n × p`` float64 copy is ever made.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor


class CollapseMetricWarning(UserWarning):
    """A collapse metric is undefined for the given input and was set to NaN."""


def warn_undefined(names: list[str], defined: Tensor, reason: str) -> None:
    """Warn that ``names`` are NaN where ``defined`` (a bool tensor over replicas) is false."""
    undefined = int((~defined).sum())
    where = "" if defined.ndim == 0 else f" for {undefined} of {defined.numel()} replicas"
    warnings.warn(
        f"{', '.join(names)} set to NaN{where}: {reason}", CollapseMetricWarning, stacklevel=4
    )


def mask_undefined(
    values: dict[str, Tensor], names: list[str], defined: Tensor, reason: str
) -> None:
    """Set ``values[name]`` to NaN where ``defined`` is false (with one warning), in place; nothing without names."""
    if not names or bool(defined.all()):
        return
    warn_undefined(names, defined, reason)
    for name in names:
        values[name] = torch.where(defined, values[name], torch.nan)


def power_of_two_scale(max_abs: Tensor) -> Tensor:
    """``2^(e−1)`` where ``max_abs = m·2^e`` with ``m ∈ [0.5, 1)``, so ``max_abs / scale ∈ [1, 2)``; 0 for 0."""
    _, exponent = torch.frexp(max_abs)
    return torch.where(max_abs > 0, torch.ldexp(torch.ones_like(max_abs), exponent - 1), 0.0)


def largest_magnitude(tensor: Tensor, dims: int) -> Tensor:
    """``max |x|`` over the last ``dims`` dimensions (NaN if any entry is NaN); one pass, no temporary copy."""
    flat = tensor.flatten(start_dim=tensor.ndim - dims) if dims else tensor.unsqueeze(-1)
    if flat.shape[-1] == 0:
        return flat.new_zeros(flat.shape[:-1])
    return torch.maximum(-flat.amin(dim=-1), flat.amax(dim=-1))


ROW_CHUNK = 1024
"""Rows per block of a pass over the features: 1024 rows of p = 512 float64 values (4 MiB) stay in cache while a
block is converted, centred and multiplied; 512 and 1024 measured fastest, 128 and 2048 about 20% slower
(``bench_metrics.py`` at n = 100 000)."""


def row_blocks(num_rows: int) -> list[slice]:
    """Consecutive slices of at most :data:`ROW_CHUNK` rows covering ``range(num_rows)``."""
    return [slice(start, min(start + ROW_CHUNK, num_rows)) for start in range(0, num_rows, ROW_CHUNK)]


def divisor(scale: Tensor) -> Tensor:
    """``scale`` with zeros replaced by 1, to divide by (zero data stays zero)."""
    return torch.where(scale > 0, scale, 1.0)


def check_labels(labels: Tensor, num_samples: int, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``labels`` is an integer tensor ``(n,)`` with values in ``[0, C)``."""
    if labels.ndim != 1 or labels.shape[0] != num_samples:
        raise ValueError(f"labels must have shape ({num_samples},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if num_samples == 0:
        raise ValueError("collapse metrics need at least one sample")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )


@torch.no_grad()
def shifted_row_blocks(
    features: Tensor, labels: Tensor, scale: Tensor, offsets: tuple[Tensor, ...], workspace: list[Tensor] | None = None
) -> Iterator[tuple[slice, Tensor]]:
    """Consecutive blocks of rows ``(h_i / s) − o¹_{y_i} − o²_{y_i} − …`` in float64, ``(..., b, p)``.

    ``scale`` ``(...)``: the power of two ``s`` (0 for all-zero features, which stay 0); ``offsets`` per-class rows
    ``(..., C, p)`` in units of ``s``. At most :data:`ROW_CHUNK` rows per block, written into one reused buffer:
    a block is valid until the next one is produced. The features are read, never copied whole. ``workspace``: a
    list that keeps the buffers between calls (a streaming accumulator's batches of one size allocate them once:
    fresh pages of a large p cost more than the arithmetic).
    """
    num_rows = features.shape[-2]
    block_shape = (*features.shape[:-2], min(ROW_CHUNK, num_rows), features.shape[-1])
    if workspace and workspace[0].shape == block_shape and workspace[0].device == features.device:
        rows_buffer, gathered_buffer = workspace
    else:
        rows_buffer = torch.empty(block_shape, dtype=torch.float64, device=features.device)
        gathered_buffer = torch.empty_like(rows_buffer) if offsets or workspace is not None else rows_buffer
        if workspace is not None:
            workspace[:] = [rows_buffer, gathered_buffer]
    scale = divisor(scale)[..., None, None]
    for block in row_blocks(num_rows):
        size = block.stop - block.start
        full = size == rows_buffer.shape[-2]
        rows = rows_buffer if full else torch.empty_like(rows_buffer[..., :size, :])
        gathered = gathered_buffer if full else torch.empty_like(rows)
        torch.div(features[..., block, :], scale, out=rows)
        for offset in offsets:
            rows.sub_(torch.index_select(offset, -2, labels[block], out=gathered))
        yield block, rows


class CenteredRows:
    """Within-class scatter ``S = Σ_i r_i r_iᵀ`` of whole feature tensors, kept implicitly.

    The centred rows ``r_i = (h_i/s − m̃_{y_i}) − d_{y_i}`` (provisional means ``m̃`` and corrections ``d`` of the
    corrected two-pass algorithm, in units of the power of two ``s``) are regenerated block by block from the
    features whenever they are needed: O(np) time per use and O(ROW_CHUNK · p) memory; the features are never
    copied. The object refers to ``features``: it describes them as long as they are not modified.
    ``class_traces`` ``(..., C)``: ``Σ_{i∈c} ‖r_i‖²``, whose sum is ``tr S``.
    """

    def __init__(
        self, features: Tensor, labels: Tensor, scale: Tensor, provisional: Tensor, corrections: Tensor,
        class_traces: Tensor,
    ) -> None:
        self.features = features
        self.labels = labels
        self.scale = scale
        self.provisional = provisional
        self.corrections = corrections
        self.class_traces = class_traces
        self.squared_norm = class_traces.sum(dim=-1)

    def blocks(self) -> Iterator[tuple[slice, Tensor]]:
        """``(rows slice, r_i for those rows (..., b, p))``, one block at a time (:func:`shifted_row_blocks`)."""
        return shifted_row_blocks(self.features, self.labels, self.scale, (self.provisional, self.corrections))

    def trace(self) -> Tensor:
        """``tr S = Σ_i ‖r_i‖²``, shape ``(...)``."""
        return self.squared_norm

    def quadratic_form(self, directions: Tensor) -> Tensor:
        """``u_kᵀ S u_k = Σ_i (u_kᵀ r_i)²`` for the rows ``u_k`` of ``directions`` ``(..., k, p)``: ``(..., k)``."""
        total = 0
        for _, rows in self.blocks():
            total = total + (rows @ directions.transpose(-1, -2)).square().sum(dim=-2)
        return total

    def scatter_matrix(self) -> Tensor:
        """``S = Σ_i r_i r_iᵀ`` as a ``p × p`` matrix, ``(..., p, p)``."""
        total = 0
        for _, rows in self.blocks():
            total = total + rows.transpose(-1, -2) @ rows
        return total


class ScatterMatrix:
    """Within-class scatter ``S = Σ_i r_i r_iᵀ`` kept as the ``p × p`` matrix, ``(..., p, p)``."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix

    def trace(self) -> Tensor:
        """``tr S``, shape ``(...)``."""
        return self.matrix.diagonal(dim1=-2, dim2=-1).sum(dim=-1)

    def quadratic_form(self, directions: Tensor) -> Tensor:
        """``u_kᵀ S u_k`` for the rows ``u_k`` of ``directions`` ``(..., k, p)``: ``(..., k)``."""
        return ((directions @ self.matrix) * directions).sum(dim=-1)


class ProjectedScatter:
    """Within-class scatter ``S`` kept as its trace and its compression ``U S Uᵀ`` ``(..., k, k)`` onto the rows of an
    orthonormal ``basis`` ``U`` ``(..., k, p)``: O(k²) numbers instead of p².

    ``quadratic_form`` is exact for directions in ``span(U)`` and sees only their component in ``span(U)`` otherwise.
    The two-pass accumulator takes ``U`` spanning the centred class means of its first pass; NC1's directions (the
    SVD directions of the final, corrected centred means) lie in that span up to the correction of the corrected
    two-pass algorithm, a rounding-level term.
    """

    def __init__(self, basis: Tensor, compressed: Tensor, trace: Tensor) -> None:
        self.basis = basis
        self.compressed = compressed
        self.total = trace

    def trace(self) -> Tensor:
        """``tr S``, shape ``(...)``."""
        return self.total

    def quadratic_form(self, directions: Tensor) -> Tensor:
        """``v_kᵀ S v_k`` for the rows ``v_k`` of ``directions`` ``(..., k', p)``, which must lie in ``span(U)``:
        ``(..., k')``, from their coordinates ``a = vUᵀ`` as ``a (USUᵀ) aᵀ``."""
        coordinates = directions @ self.basis.transpose(-1, -2)
        return ((coordinates @ self.compressed) * coordinates).sum(dim=-1)


class ClassifierDecisions(NamedTuple):
    """Counts ``(...)`` over a pass of the samples of a linear classifier's decisions: ``mismatches``, samples with
    ``argmax_c (Wh + b)_c ≠ argmin_c ‖h − centre_c‖`` (NC4), and ``correct``, samples with ``argmax_c (Wh + b)_c = y``.
    Float64; NaN where the inputs were not finite."""

    mismatches: Tensor
    correct: Tensor


class ClassStatistics:
    """Counts, class means and pooled within-class scatter of the features divided by ``scale``.

    ``counts`` ``(C,)``: samples per class (float64); ``scaled_means`` ``(..., C, p)``: ``μ_c / scale``;
    ``within_scatter``: ``Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ / scale²`` as :class:`CenteredRows`,
    :class:`ScatterMatrix` or :class:`ProjectedScatter` (so ``Σ_W = scale² · S / n``); ``scale`` ``(...)``: a
    power of two, 0 when all features are 0; ``class_traces`` ``(..., C)``: ``Σ_{i∈c} ‖h_i − μ_c‖² / scale²``
    (their sum is ``tr S``); ``decisions``: :class:`ClassifierDecisions` counted over the same samples, or None.

    A plain class rather than a dataclass: ``torchmetrics`` squeezes every one-element tensor inside the dataclasses
    and tuples that a ``Metric.compute`` returns (a replica shape ``(1,)``, C = 1), and leaves other objects as they
    are.
    """

    def __init__(
        self, counts: Tensor, scaled_means: Tensor, within_scatter: CenteredRows | ScatterMatrix | ProjectedScatter,
        scale: Tensor, class_traces: Tensor, decisions: ClassifierDecisions | None = None,
    ) -> None:
        self.counts = counts
        self.scaled_means = scaled_means
        self.within_scatter = within_scatter
        self.scale = scale
        self.class_traces = class_traces
        self.decisions = decisions

    def __repr__(self) -> str:
        scatter = type(self.within_scatter).__name__
        return (
            f"ClassStatistics(counts={self.counts.tolist()}, means of shape {tuple(self.scaled_means.shape)}, "
            f"within_scatter={scatter}, decisions={'counted' if self.decisions is not None else None})"
        )

    @property
    def num_classes(self) -> int:
        """``C``."""
        return self.counts.shape[-1]

    @property
    def num_samples(self) -> Tensor:
        """``n = Σ_c n_c``, a float64 scalar."""
        return self.counts.sum(dim=-1)

    @property
    def means(self) -> Tensor:
        """Class means ``μ_c`` ``(..., C, p)`` in the features' units; NaN rows for classes without samples."""
        means = self.scaled_means * self.scale[..., None, None]
        return torch.where((self.counts > 0)[..., :, None], means, torch.nan)

    @property
    def class_variances(self) -> Tensor:
        """``σ_c² = (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²`` ``(..., C)`` in the features' units squared (Galanti, György &
        Hutter 2022); NaN for classes without samples. May overflow where ``scale²`` does: metrics use
        ``class_traces`` in units of ``scale²``."""
        variances = self.class_traces / self.counts.clamp(min=1) * self.scale[..., None].square()
        return torch.where(self.counts > 0, variances, torch.nan)


def matrix_scale(matrix: Tensor) -> Tensor:
    """The per-replica power of two ``s`` with ``max |x_ij| / s ∈ [1, 2)`` over the last two dimensions (0 for a zero
    matrix), float64: the unit in which features or weights are squared without overflow or underflow."""
    return power_of_two_scale(largest_magnitude(matrix, dims=2).to(torch.float64))


def class_sums(rows: Iterator[tuple[slice, Tensor]], labels: Tensor, like: Tensor, num_classes: int) -> Tensor:
    """``Σ_{i∈c} r_i`` for every class over the blocks ``rows``, ``(..., C, p)`` (scatter-adds, O(np))."""
    sums = like.new_zeros(*like.shape[:-2], num_classes, like.shape[-1], dtype=torch.float64)
    for block, block_rows in rows:
        sums.index_add_(-2, labels[block], block_rows)
    return sums


class ClassLabels(NamedTuple):
    """Labels ``(n,)`` checked once, with what depends on them alone: ``counts`` ``(C,)`` (float64) and
    ``balanced_size``, the N of every class when all have the same N ≥ 1 (None otherwise).

    The UFM's labels never change during a run, so its monitor builds this once (:func:`class_labels`) and every
    evaluation skips the checks and the counting: at the paper's size an evaluation is bound by its number of small
    operations.
    """

    labels: Tensor
    counts: Tensor
    balanced_size: int | None


def class_labels(labels: Tensor, num_samples: int, num_classes: int) -> ClassLabels:
    """:class:`ClassLabels` of ``labels`` after :func:`check_labels`."""
    check_labels(labels, num_samples, num_classes)
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    smallest, largest = int(counts.min()), int(counts.max())
    return ClassLabels(labels, counts, smallest if smallest == largest > 0 else None)


def corrected_two_pass_moments(
    features: Tensor, labels: Tensor, num_classes: int, scale: Tensor, counts: Tensor | None = None
) -> tuple[Tensor, CenteredRows]:
    """Class counts and the centred rows of ``h/s`` by the corrected two-pass algorithm (Chan, Golub & LeVeque).

    ``m̃_c = Σ_{i∈c} (h_i/s) / n_c``, ``d_c = Σ_{i∈c} (h_i/s − m̃_c) / n_c`` (class means ``m̃_c + d_c``) and, per
    class, ``Σ_{i∈c} ‖r_i‖² = Σ_{i∈c} ‖h_i/s − m̃_c‖² − n_c ‖d_c‖²`` (the rows' squares summed in the second pass,
    no third); classes without samples get 0. Two reads of the features, block by block. ``counts``: the labels'
    class counts (float64) when already known.
    """
    if counts is None:
        counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    per_class = counts.clamp(min=1)[:, None]
    provisional = class_sums(shifted_row_blocks(features, labels, scale, ()), labels, features, num_classes)
    provisional = provisional / per_class
    corrections = features.new_zeros(provisional.shape, dtype=torch.float64)
    squares = features.new_zeros(provisional.shape[:-1], dtype=torch.float64)
    for block, rows in shifted_row_blocks(features, labels, scale, (provisional,)):
        block_labels = labels[block]
        corrections.index_add_(-2, block_labels, rows)
        squares.index_add_(-1, block_labels, torch.linalg.vector_norm(rows, dim=-1).square_())
    corrections = corrections / per_class
    class_traces = (squares - counts * corrections.square().sum(dim=-1)).clamp(min=0)
    return counts, CenteredRows(features, labels, scale, provisional, corrections, class_traces)


@torch.no_grad()
def class_statistics(features: Tensor, labels: Tensor | ClassLabels, num_classes: int) -> ClassStatistics:
    """Class statistics of whole feature tensors ``(..., n, p)``, scatter kept as centred rows (no copy of them).

    ``μ_c`` class means, ``Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` (Papyan, Han & Donoho 2020).
    ``labels``: a tensor ``(n,)`` (checked here) or :class:`ClassLabels` checked and counted before.
    """
    if isinstance(labels, ClassLabels):
        labels, counts = labels.labels, labels.counts
        if labels.shape[0] != features.shape[-2]:
            raise ValueError(f"labels must have shape ({features.shape[-2]},), got {tuple(labels.shape)}")
    else:
        check_labels(labels, features.shape[-2], num_classes)
        counts = None
    scale = matrix_scale(features)
    counts, rows = corrected_two_pass_moments(features, labels, num_classes, scale, counts)
    return ClassStatistics(counts, rows.provisional + rows.corrections, rows, scale, rows.class_traces)
