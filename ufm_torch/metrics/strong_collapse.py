"""Strong neural collapse errors SNC1–SNC3 and the distance from the invariant subspace S (Mixon et al.).

Balanced classes only: ``N`` is read from the labels (every class must have ``N ≥ 1`` samples), otherwise
``ValueError``. Sample order is irrelevant: ``(W ⊗ 1_N)ᵀ`` means "row i is ``w_{y_i}``".

Projection onto ``S = {(H, W, b) : H = (1/√N)(W ⊗ 1_N)ᵀ, 1ᵀW = 0, b ∈ span 1}`` (Mixon et al., Section 3).
An element of S is ``(h_i = v_{y_i}/√N, W = V, b = β1)`` with ``Σ_c v_c = 0``. Its squared ``‖·‖_E`` distance
from ``Z = (H, W, b)`` is ``Σ_c [Σ_{i∈c} ‖h_i − v_c/√N‖² + ‖w_c − v_c‖²] + ‖b − β1‖²`` and
``Σ_{i∈c} ‖h_i − v_c/√N‖² = Σ_{i∈c} ‖h_i − μ_c‖² + ‖√N μ_c − v_c‖²``, so the ``v_c`` minimise
``Σ_c ‖√N μ_c − v_c‖² + ‖w_c − v_c‖² = Σ_c 2‖u_c − v_c‖² + const`` with ``u_c = (w_c + √N μ_c)/2``
subject to ``Σ_c v_c = 0``: ``v_c = u_c − (1/C) Σ_c' u_c'``; and ``β = mean(b)``. The distance is then
``dist² = Σ_i ‖h_i − μ_{y_i}‖² + Σ_c (‖√N μ_c − v_c‖² + ‖w_c − v_c‖²) + ‖b − mean(b)1‖²``, accurate
as ``Σ_W → 0`` because the within-class part comes from the centred statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ufm_torch.metrics.statistics import (
    ClassStatistics,
    class_statistics,
    divisor,
    largest_magnitude,
    mask_undefined,
    power_of_two_scale,
)

SNC_METRIC_NAMES = ("snc1", "snc2", "snc3", "dist_S")


def samples_per_class(counts: Tensor) -> int:
    """``N`` for balanced class counts ``(C,)``; ``ValueError`` if the classes are unbalanced or empty."""
    smallest, largest = int(counts.min()), int(counts.max())
    if smallest != largest or smallest == 0:
        raise ValueError(
            "strong collapse metrics need balanced classes (N ≥ 1 samples in every class), "
            f"got between {smallest} and {largest} samples per class"
        )
    return smallest


def projected_classifier(class_means: Tensor, weight: Tensor, samples: int) -> Tensor:
    """``V`` of ``Π_S Z``: ``v_c = u_c − mean_c u_c`` with ``u_c = (w_c + √N μ_c)/2``, shape ``(..., C, p)``."""
    combined = weight / 2 + (samples**0.5 / 2) * class_means
    return combined - combined.mean(dim=-2, keepdim=True)


def snc2_error(statistics: ClassStatistics, weight: Tensor, samples: int, weight_magnitude: Tensor) -> Tensor:
    """``‖H − (1/√N)(W ⊗ 1_N)ᵀ‖_F / ‖H‖_F`` from statistics (Mixon et al., eq. SNC2 and Figure 1).

    Numerator² ``= Σ_i ‖h_i − μ_{y_i}‖² + N Σ_c ‖μ_c − w_c/√N‖²``,
    denominator² ``= Σ_i ‖h_i − μ_{y_i}‖² + N Σ_c ‖μ_c‖²``. The numerator is formed in units of
    ``t = max(s, max|W|/√N)`` (powers of two), the denominator in units of the feature scale ``s``, and the
    ratio carries ``t/s``. ``weight_magnitude``: ``max |W|`` per replica.
    """
    root = samples**0.5
    feature_scale = statistics.scale
    within = statistics.within_scatter.trace()
    pair_scale = torch.maximum(feature_scale, power_of_two_scale(weight_magnitude / root))
    ratio = (feature_scale / divisor(pair_scale))[..., None, None]
    mismatch = ratio[..., 0, 0] ** 2 * within + samples * (
        ratio * statistics.scaled_means - weight / divisor(pair_scale)[..., None, None] / root
    ).square().sum(dim=(-1, -2))
    feature_norm = (within + samples * statistics.scaled_means.square().sum(dim=(-1, -2))).sqrt()
    return mismatch.sqrt() / feature_norm * (pair_scale / divisor(feature_scale))


def relative_distance_from_S(
    statistics: ClassStatistics, weight: Tensor, bias: Tensor, samples: int, largest: Tensor
) -> Tensor:
    """``‖Z − Π_S Z‖_E / ‖Z‖_E`` from statistics (Mixon et al., Figure 2), in units of the largest magnitude
    (``largest``: ``max(max |W|, max |b|)`` per replica).

    ``dist² = Σ_i ‖h_i − μ_{y_i}‖² + Σ_c (‖√N μ_c − v_c‖² + ‖w_c − v_c‖²) + ‖b − mean(b)1‖²`` and
    ``‖Z‖²_E = Σ_i ‖h_i − μ_{y_i}‖² + N Σ_c ‖μ_c‖² + ‖W‖²_F + ‖b‖²`` (module docstring).
    """
    total_scale = torch.maximum(statistics.scale, power_of_two_scale(largest))
    ratio = (statistics.scale / divisor(total_scale))[..., None, None]
    weight = weight / divisor(total_scale)[..., None, None]
    bias = bias / divisor(total_scale)[..., None]
    means = ratio * statistics.scaled_means
    within = ratio[..., 0, 0] ** 2 * statistics.within_scatter.trace()
    projected = projected_classifier(means, weight, samples)
    distance = (
        within
        + (samples**0.5 * means - projected).square().sum(dim=(-1, -2))
        + (weight - projected).square().sum(dim=(-1, -2))
        + (bias - bias.mean(dim=-1, keepdim=True)).square().sum(dim=-1)
    )
    norm = (
        within
        + samples * means.square().sum(dim=(-1, -2))
        + weight.square().sum(dim=(-1, -2))
        + bias.square().sum(dim=-1)
    )
    return (distance / norm).sqrt()


@torch.no_grad()
def snc_metrics_from_statistics(
    statistics: ClassStatistics, weight: Tensor, bias: Tensor, samples: int | None = None
) -> dict[str, Tensor]:
    """SNC errors and ``dist_S`` from class statistics (Mixon et al., Figure 1 and Figure 2 captions).

    - ``snc1 = ‖WWᵀ − √N(I − 11ᵀ/C)‖_F`` (eq. SNC1);
    - ``snc2 = ‖H − (1/√N)(W ⊗ 1_N)ᵀ‖_F / ‖H‖_F`` (eq. SNC2);
    - ``snc3 = ‖b − (1/C)1‖₂`` (eq. SNC3);
    - ``dist_S = ‖Z − Π_S Z‖_E / ‖Z‖_E`` with ``‖(H, W, b)‖²_E = ‖H‖²_F + ‖W‖²_F + ‖b‖²₂`` (Figure 2).

    ``‖H‖ = 0`` makes ``snc2`` NaN and ``Z = 0`` makes ``dist_S`` NaN, with a warning. The relative errors
    are formed in power-of-two units of the largest magnitude involved, so they neither overflow nor underflow.
    ``samples``: N when already known (:class:`~ufm_torch.metrics.statistics.ClassLabels`), else read from the counts.
    """
    samples = samples_per_class(statistics.counts) if samples is None else samples
    weight = weight.to(torch.float64)
    bias = bias.to(torch.float64)
    num_classes = weight.shape[-2]
    centring = torch.eye(num_classes, dtype=torch.float64, device=weight.device) - 1 / num_classes
    weight_magnitude = largest_magnitude(weight, 2)
    largest = torch.maximum(weight_magnitude, largest_magnitude(bias, 1))
    values = {
        "snc1": (weight @ weight.transpose(-1, -2) - samples**0.5 * centring).norm(dim=(-1, -2)),
        "snc2": snc2_error(statistics, weight, samples, weight_magnitude),
        "snc3": (bias - 1 / num_classes).norm(dim=-1),
        "dist_S": relative_distance_from_S(statistics, weight, bias, samples, largest),
    }
    nonzero_features = statistics.scale > 0
    nonzero_point = nonzero_features | (largest > 0)
    mask_undefined(values, ["snc2"], nonzero_features, "the features are all zero (‖H‖_F = 0)")
    mask_undefined(values, ["dist_S"], nonzero_point, "Z = (H, W, b) = 0")
    return values


@torch.no_grad()
def snc_metrics(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Strong neural collapse errors of ``(H, W, b)`` (Mixon et al., eqs. SNC1–SNC3, Figures 1 and 2).

    Keys :data:`SNC_METRIC_NAMES`, definitions in :func:`snc_metrics_from_statistics`. ``features``
    ``(..., n, p)``, ``weight`` ``(..., C, p)``, ``bias`` ``(..., C)``; float64 ``(...)`` on the input's device.
    """
    return snc_metrics_from_statistics(
        class_statistics(features, labels, weight.shape[-2]), weight, bias
    )


@torch.no_grad()
def project_onto_S(
    features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Orthogonal projection ``Π_S(H, W, b)`` onto S (Mixon et al., Section 3), in the row convention.

    ``W_S = V`` with ``v_c = u_c − mean_c u_c``, ``u_c = (w_c + √N μ_c)/2``; ``h_i^S = v_{y_i}/√N``;
    ``b_S = mean(b)·1`` (derivation in the module docstring). Float64, shapes of the inputs.
    """
    statistics = class_statistics(features, labels, weight.shape[-2])
    samples = samples_per_class(statistics.counts)
    weight = weight.to(torch.float64)
    bias = bias.to(torch.float64)
    projected = projected_classifier(statistics.means, weight, samples)
    return (
        projected[..., labels, :] / samples**0.5,
        projected,
        bias.mean(dim=-1, keepdim=True).expand_as(bias).contiguous(),
    )
