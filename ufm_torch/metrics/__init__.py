"""Collapse metrics: neural collapse NC1–NC4 (Papyan, Han & Donoho 2020) and strong neural collapse (Mixon et al.).

Pure functions take whole tensors in the row convention (``features`` ``(..., n, p)``, ``labels`` ``(n,)``,
``weight`` ``(..., C, p)``, ``bias`` ``(..., C)``; leading ``...`` are replicas) and return dicts of float64
tensors of shape ``...`` on the input's device:

- :func:`nc_metrics` (keys :data:`NC_METRIC_NAMES`), :func:`snc_metrics` (keys :data:`SNC_METRIC_NAMES`,
  balanced labels), :func:`collapse_metrics` (both), :func:`project_onto_S`.

Streaming (batches, devices): :class:`ClassStatisticsAccumulator` → :class:`ClassStatistics` →
:func:`nc_metrics_from_statistics` (all but ``nc4``) and :func:`snc_metrics_from_statistics`;
:class:`NearestCenterMismatch` gives ``nc4``. Undefined values are NaN with a :class:`CollapseMetricWarning`.
"""

from ufm_torch.metrics.accumulators import ClassStatisticsAccumulator, NearestCenterMismatch
from ufm_torch.metrics.collapse import collapse_metrics, collapse_metrics_with_statistics
from ufm_torch.metrics.neural_collapse import (
    NC_METRIC_NAMES,
    centred_mean_directions,
    nc_metrics,
    nc_metrics_from_statistics,
    nearest_center_mismatches,
)
from ufm_torch.metrics.statistics import ClassStatistics, CollapseMetricWarning, class_statistics
from ufm_torch.metrics.strong_collapse import (
    SNC_METRIC_NAMES,
    project_onto_S,
    samples_per_class,
    snc_metrics,
    snc_metrics_from_statistics,
)

__all__ = [
    "NC_METRIC_NAMES",
    "SNC_METRIC_NAMES",
    "ClassStatistics",
    "ClassStatisticsAccumulator",
    "CollapseMetricWarning",
    "NearestCenterMismatch",
    "centred_mean_directions",
    "class_statistics",
    "collapse_metrics",
    "collapse_metrics_with_statistics",
    "nc_metrics",
    "nc_metrics_from_statistics",
    "nearest_center_mismatches",
    "project_onto_S",
    "samples_per_class",
    "snc_metrics",
    "snc_metrics_from_statistics",
]
