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
from dataclasses import dataclass

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
    """Set ``values[name]`` to NaN where ``defined`` is false (with one warning), in place."""
    if bool(defined.all()):
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
    features: Tensor, labels: Tensor, scale: Tensor, offsets: tuple[Tensor, ...]
) -> Iterator[tuple[slice, Tensor]]:
    """Consecutive blocks of rows ``(h_i / s) − o¹_{y_i} − o²_{y_i} − …`` in float64, ``(..., b, p)``.

    ``scale`` ``(...)``: the power of two ``s`` (0 for all-zero features, which stay 0); ``offsets`` per-class rows
    ``(..., C, p)`` in units of ``s``. At most :data:`ROW_CHUNK` rows per block, written into one reused buffer:
    a block is valid until the next one is produced. The features are read, never copied whole.
    """
    num_rows = features.shape[-2]
    block_shape = (*features.shape[:-2], min(ROW_CHUNK, num_rows), features.shape[-1])
    rows_buffer = torch.empty(block_shape, dtype=torch.float64, device=features.device)
    gathered_buffer = torch.empty_like(rows_buffer) if offsets else rows_buffer
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
    """

    def __init__(
        self, features: Tensor, labels: Tensor, scale: Tensor, provisional: Tensor, corrections: Tensor,
        squared_norm: Tensor,
    ) -> None:
        self.features = features
        self.labels = labels
        self.scale = scale
        self.provisional = provisional
        self.corrections = corrections
        self.squared_norm = squared_norm

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


@dataclass
class ClassStatistics:
    """Counts, class means and pooled within-class scatter of the features divided by ``scale``.

    ``counts`` ``(C,)``: samples per class (float64); ``scaled_means`` ``(..., C, p)``: ``μ_c / scale``;
    ``within_scatter``: ``Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ / scale²`` as :class:`CenteredRows` or
    :class:`ScatterMatrix` (so ``Σ_W = scale² · S / n``); ``scale`` ``(...)``: a power of two, 0 when
    all features are 0.
    """

    counts: Tensor
    scaled_means: Tensor
    within_scatter: CenteredRows | ScatterMatrix
    scale: Tensor

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


def corrected_two_pass_moments(
    features: Tensor, labels: Tensor, num_classes: int, scale: Tensor
) -> tuple[Tensor, CenteredRows]:
    """Class counts and the centred rows of ``h/s`` by the corrected two-pass algorithm (Chan, Golub & LeVeque).

    ``m̃_c = Σ_{i∈c} (h_i/s) / n_c``, ``d_c = Σ_{i∈c} (h_i/s − m̃_c) / n_c`` (class means ``m̃_c + d_c``) and
    ``Σ_i ‖r_i‖² = Σ_i ‖h_i/s − m̃_{y_i}‖² − Σ_c n_c ‖d_c‖²``; classes without samples get 0. Two reads of the
    features, block by block.
    """
    counts = torch.bincount(labels, minlength=num_classes).to(torch.float64)
    per_class = counts.clamp(min=1)[:, None]
    provisional = class_sums(shifted_row_blocks(features, labels, scale, ()), labels, features, num_classes)
    provisional = provisional / per_class
    corrections = features.new_zeros(provisional.shape, dtype=torch.float64)
    squared = 0
    for block, rows in shifted_row_blocks(features, labels, scale, (provisional,)):
        corrections.index_add_(-2, labels[block], rows)
        squared = squared + torch.linalg.vector_norm(rows, dim=(-1, -2)).square()
    corrections = corrections / per_class
    squared_norm = (squared - (counts[:, None] * corrections.square()).sum(dim=(-1, -2))).clamp(min=0)
    return counts, CenteredRows(features, labels, scale, provisional, corrections, squared_norm)


@torch.no_grad()
def class_statistics(features: Tensor, labels: Tensor, num_classes: int) -> ClassStatistics:
    """Class statistics of whole feature tensors ``(..., n, p)``, scatter kept as centred rows (no copy of them).

    ``μ_c`` class means, ``Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` (Papyan, Han & Donoho 2020).
    """
    check_labels(labels, features.shape[-2], num_classes)
    scale = matrix_scale(features)
    counts, rows = corrected_two_pass_moments(features, labels, num_classes, scale)
    return ClassStatistics(counts, rows.provisional + rows.corrections, rows, scale)
