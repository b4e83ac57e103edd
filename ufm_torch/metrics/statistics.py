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
within-class spread*, however small it is compared with the means.
"""

from __future__ import annotations

import warnings
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
"""Rows per block when a per-sample pass would otherwise allocate an ``n × p`` temporary (small enough for the
allocator to reuse memory instead of faulting in fresh pages: about 8× faster than one large temporary)."""


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


class CenteredRows:
    """Within-class scatter ``S = Σ_i r_i r_iᵀ`` kept as the centred rows ``r_i = h_i − μ_{y_i}``, ``(..., n, p)``."""

    def __init__(self, rows: Tensor) -> None:
        self.rows = rows
        self.squared_norm = torch.linalg.vector_norm(rows, dim=(-1, -2)).square()

    def trace(self) -> Tensor:
        """``tr S = Σ_i ‖r_i‖²``, shape ``(...)``."""
        return self.squared_norm

    def quadratic_form(self, directions: Tensor) -> Tensor:
        """``u_kᵀ S u_k = Σ_i (u_kᵀ r_i)²`` for the rows ``u_k`` of ``directions`` ``(..., k, p)``: ``(..., k)``."""
        return (self.rows @ directions.transpose(-1, -2)).square().sum(dim=-2)


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


def scale_features(features: Tensor) -> tuple[Tensor, Tensor]:
    """``(features / scale, scale)`` in float64 with ``scale`` the per-replica power of two of ``max |h_ij|``.

    One float64 copy of the features is made and divided in place (the input is never modified).
    """
    scaled = features.to(torch.float64, copy=True)
    scale = power_of_two_scale(largest_magnitude(scaled, dims=2))
    return scaled.div_(divisor(scale)[..., None, None]), scale


def class_sums(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """``Σ_{i∈c} h_i`` for every class, ``(..., C, p)``: one scatter-add pass over the rows, O(np)."""
    sums = features.new_zeros(*features.shape[:-2], num_classes, features.shape[-1])
    return sums.index_add_(-2, labels, features)


def centred_class_moments(
    features: Tensor, labels: Tensor, num_classes: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Corrected two-pass class moments ``(counts, provisional means m̃, corrections d, centred rows)``.

    ``m̃_c = Σ_{i∈c} h_i / n_c``, ``d_c = Σ_{i∈c} (h_i − m̃_c) / n_c``, rows ``(h_i − m̃_{y_i}) − d_{y_i}``;
    the class means are ``m̃_c + d_c`` (Chan, Golub & LeVeque 1983). Classes without samples get 0. Each pass
    is a scatter-add, O(np). ``features`` (float64, already a private copy) is overwritten by the centred rows.
    """
    counts = torch.bincount(labels, minlength=num_classes).to(features.dtype)
    per_class = counts.clamp(min=1)[:, None]
    provisional = class_sums(features, labels, num_classes) / per_class
    subtract_class_rows(features, provisional, labels)
    corrections = class_sums(features, labels, num_classes) / per_class
    return counts, provisional, corrections, subtract_class_rows(features, corrections, labels)


def subtract_class_rows(rows: Tensor, per_class: Tensor, labels: Tensor) -> Tensor:
    """``rows[..., i, :] −= per_class[..., labels[i], :]`` in place, block by block (no ``n × p`` temporary)."""
    for block in row_blocks(rows.shape[-2]):
        rows[..., block, :].sub_(per_class.index_select(-2, labels[block]))
    return rows


@torch.no_grad()
def class_statistics(features: Tensor, labels: Tensor, num_classes: int) -> ClassStatistics:
    """Class statistics of whole feature tensors ``(..., n, p)``, scatter kept as centred rows (O(np) memory).

    ``μ_c`` class means, ``Σ_W = (1/n) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ`` (Papyan, Han & Donoho 2020).
    """
    check_labels(labels, features.shape[-2], num_classes)
    scaled, scale = scale_features(features)
    counts, provisional, corrections, rows = centred_class_moments(scaled, labels, num_classes)
    return ClassStatistics(counts, provisional + corrections, CenteredRows(rows), scale)
