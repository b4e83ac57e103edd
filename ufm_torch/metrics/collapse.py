"""All collapse metrics of one evaluation, from one pass of class statistics."""

from __future__ import annotations

import torch
from torch import Tensor

from ufm_torch.metrics.neural_collapse import nc_metrics_with_statistics
from ufm_torch.metrics.statistics import ClassStatistics, class_statistics
from ufm_torch.metrics.strong_collapse import snc_metrics_from_statistics


@torch.no_grad()
def collapse_metrics(features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """``nc_metrics | snc_metrics`` (Papyan, Han & Donoho 2020, NC1–NC4; Mixon et al., SNC1–SNC3 and dist_S).

    Same values as the two functions, with the class statistics computed once. Balanced labels are
    required (``ValueError`` otherwise); for unbalanced data use :func:`nc_metrics`.
    """
    return collapse_metrics_with_statistics(features, labels, weight, bias)[0]


@torch.no_grad()
def collapse_metrics_with_statistics(
    features: Tensor, labels: Tensor, weight: Tensor, bias: Tensor
) -> tuple[dict[str, Tensor], ClassStatistics]:
    """:func:`collapse_metrics` and the :class:`ClassStatistics` it was computed from (class means for plots)."""
    statistics = class_statistics(features, labels, weight.shape[-2])
    strong = snc_metrics_from_statistics(statistics, weight, bias)
    return nc_metrics_with_statistics(statistics, weight, bias) | strong, statistics
