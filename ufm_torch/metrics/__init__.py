"""Collapse metrics: neural collapse NC1–NC4 (Papyan, Han & Donoho 2020), the field's later measures (CDNV, GNC2,
UNC3, nearest-centre agreement) and strong neural collapse (Mixon et al.).

Pure functions take whole tensors in the row convention (``features`` ``(..., n, p)``, ``labels`` ``(n,)``,
``weight`` ``(..., C, p)``, ``bias`` ``(..., C)``; leading ``...`` are replicas) and return dicts of float64
tensors of shape ``...`` on the input's device:

- :func:`layer_metrics` (keys :data:`LAYER_METRIC_NAMES`, with a classifier also :data:`CLASSIFIER_METRIC_NAMES`),
  :func:`nc_metrics` (keys :data:`NC_METRIC_NAMES`), :func:`snc_metrics` (keys :data:`SNC_METRIC_NAMES`, balanced
  labels), :func:`collapse_metrics` (NC and SNC), :func:`project_onto_S`; :func:`cdnv`, :func:`gnc2`, :func:`unc3`
  of class means.

Deep neural collapse per layer (Súkeník et al. 2023): :func:`deep_collapse_metrics` (keys
:data:`DEEP_COLLAPSE_METRIC_NAMES`), :func:`class_mean_metrics` of class means. Any number of classes against p
(Jiang et al. 2024; Liu et al. 2023): :func:`gnc1`, :func:`gnc3`, :func:`softmax_code_margin` (exact hull distances,
:func:`hull_distances`), :func:`max_pairwise_cosine`, :func:`min_pairwise_angle`, :func:`hyperspherical_energy`,
:func:`log_hyperspherical_energy`, tiled so that no C×C matrix is held whole.

Streaming (batches, devices): two passes, O(C·p + C²) numbers per replica: :class:`ClassMeansAccumulator` →
:class:`ClassMeans` → :class:`CentredMomentsAccumulator` → :class:`ClassStatistics` →
:func:`layer_metrics_from_statistics`; or one pass with a p×p scatter: :class:`ClassStatisticsAccumulator` →
:func:`nc_metrics_from_statistics` (all but ``nc4``) and :func:`snc_metrics_from_statistics`, with
:class:`NearestCenterMismatch` for ``nc4``. Undefined values are NaN with a :class:`CollapseMetricWarning`.
"""

from ufm_torch.metrics.accumulators import ClassStatisticsAccumulator, NearestCenterMismatch
from ufm_torch.metrics.collapse import collapse_metrics, collapse_metrics_with_statistics
from ufm_torch.metrics.convex_hull import HullDistances, hull_distances
from ufm_torch.metrics.deep_collapse import (
    DEEP_COLLAPSE_METRIC_NAMES,
    RANK_TOLERANCE,
    FrameGeometry,
    class_mean_metrics,
    deep_collapse_metrics,
    dnc1,
    dnc2,
    dnc2_geometry,
    dnc3,
    numerical_rank,
    stable_rank,
)
from ufm_torch.metrics.hyperspherical import (
    MarginBounds,
    gnc1,
    gnc3,
    hyperspherical_energy,
    log_hyperspherical_energy,
    max_pairwise_cosine,
    min_pairwise_angle,
    softmax_code_margin,
    softmax_code_margin_bounds,
)
from ufm_torch.metrics.neural_collapse import (
    NC_METRIC_NAMES,
    centred_mean_directions,
    nc_metrics,
    nc_metrics_from_statistics,
    nearest_center_mismatches,
)
from ufm_torch.metrics.statistics import (
    ClassifierDecisions,
    ClassStatistics,
    CollapseMetricWarning,
    ProjectedScatter,
    class_statistics,
)
from ufm_torch.metrics.strong_collapse import (
    SNC_METRIC_NAMES,
    project_onto_S,
    samples_per_class,
    snc_metrics,
    snc_metrics_from_statistics,
)
from ufm_torch.metrics.two_pass import CentredMomentsAccumulator, ClassMeans, ClassMeansAccumulator
from ufm_torch.metrics.variability import (
    CLASSIFIER_METRIC_NAMES,
    LAYER_METRIC_NAMES,
    cdnv,
    gnc2,
    layer_metrics,
    layer_metrics_from_statistics,
    layer_metrics_with_statistics,
    unc3,
)

__all__ = [
    "CLASSIFIER_METRIC_NAMES",
    "DEEP_COLLAPSE_METRIC_NAMES",
    "LAYER_METRIC_NAMES",
    "NC_METRIC_NAMES",
    "RANK_TOLERANCE",
    "SNC_METRIC_NAMES",
    "CentredMomentsAccumulator",
    "ClassMeans",
    "ClassMeansAccumulator",
    "ClassStatistics",
    "ClassStatisticsAccumulator",
    "ClassifierDecisions",
    "CollapseMetricWarning",
    "FrameGeometry",
    "HullDistances",
    "MarginBounds",
    "NearestCenterMismatch",
    "ProjectedScatter",
    "cdnv",
    "centred_mean_directions",
    "class_mean_metrics",
    "class_statistics",
    "collapse_metrics",
    "collapse_metrics_with_statistics",
    "deep_collapse_metrics",
    "dnc1",
    "dnc2",
    "dnc2_geometry",
    "dnc3",
    "gnc1",
    "gnc2",
    "gnc3",
    "hull_distances",
    "hyperspherical_energy",
    "layer_metrics",
    "layer_metrics_from_statistics",
    "layer_metrics_with_statistics",
    "log_hyperspherical_energy",
    "max_pairwise_cosine",
    "min_pairwise_angle",
    "nc_metrics",
    "nc_metrics_from_statistics",
    "nearest_center_mismatches",
    "numerical_rank",
    "project_onto_S",
    "samples_per_class",
    "snc_metrics",
    "snc_metrics_from_statistics",
    "softmax_code_margin",
    "softmax_code_margin_bounds",
    "stable_rank",
    "unc3",
]
