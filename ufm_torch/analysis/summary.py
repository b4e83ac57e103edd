"""Per-ε summary of a sweep: final value of every metric, its spread over seeds, and its log-log slope in ε.

The final value of a replica is its record at the largest step. For each init scale ε and metric the
summary gives the mean, standard deviation (``ddof = 1``; 0 for a single replica), minimum and maximum
over the replicas of that ε (finite values only; ``count`` says how many). The slope of a metric is
the least-squares fit of ``log10(final value)`` on ``log10 ε`` over every replica of every ε, skipping
non-positive and non-finite values: an error that scales like ``ε^a`` has slope ``a``. Near the
origin the off-``S`` part of the initialisation scales like ε (Mixon et al., Theorem 2), so errors
that are linear in it have slope 1 and squared (variance-like) errors slope 2.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ufm_torch.analysis.records import as_float, final_records
from ufm_torch.metrics.tags import COLLAPSE, LOSS_TAG, STRONG_COLLAPSE

METRIC_PREFIXES = (f"{STRONG_COLLAPSE}/", f"{COLLAPSE}/")
TRAINING_METRICS = (LOSS_TAG,)


@dataclass(frozen=True)
class MetricSummary:
    """Final values of one metric at one init scale ε over its replicas, and the metric's slope in ε."""

    metric: str
    init_scale: float
    final_step: int
    count: int
    mean: float
    std: float
    min: float
    max: float
    loglog_slope: float


def metric_names(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric keys present in ``records``: strong collapse (SNC, dist_S), then collapse (NC), then the loss."""
    present = {key for record in records for key in record}
    collapse = [name for prefix in METRIC_PREFIXES for name in sorted(present) if name.startswith(prefix)]
    return collapse + [name for name in TRAINING_METRICS if name in present]


def loglog_fit(init_scales: Sequence[float], values: Sequence[float]) -> tuple[float, float]:
    """Least squares ``log10 value ≈ a log10 ε + c`` over pairs with value > 0 (both finite): ``(a, c)``.

    ``(NaN, NaN)`` unless at least two distinct ε remain after skipping non-positive and non-finite values.
    """
    scales = np.asarray(init_scales, dtype=np.float64)
    errors = np.asarray(values, dtype=np.float64)
    keep = np.isfinite(errors) & (errors > 0) & np.isfinite(scales) & (scales > 0)
    log_scales, log_errors = np.log10(scales[keep]), np.log10(errors[keep])
    if np.unique(log_scales).size < 2:
        return math.nan, math.nan
    centred = log_scales - log_scales.mean()
    slope = float(centred @ (log_errors - log_errors.mean()) / (centred @ centred))
    return slope, float(log_errors.mean() - slope * log_scales.mean())


def loglog_slope(init_scales: Sequence[float], values: Sequence[float]) -> float:
    """The slope ``a`` of :func:`loglog_fit`: a final error that scales like ``ε^a`` has slope ``a``."""
    return loglog_fit(init_scales, values)[0]


def _spread(values: np.ndarray) -> tuple[int, float, float, float, float]:
    """``(count, mean, std, min, max)`` of the finite entries of ``values`` (NaN statistics when none)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0, math.nan, math.nan, math.nan, math.nan
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return int(finite.size), float(finite.mean()), std, float(finite.min()), float(finite.max())


def summarize(records: Iterable[Mapping[str, Any]]) -> list[MetricSummary]:
    """One :class:`MetricSummary` per metric and init scale (ε largest first) from the final records."""
    finals = final_records(records)
    summaries = []
    for metric in metric_names(finals):
        scales = np.array([float(record["init_scale"]) for record in finals])
        values = np.array([as_float(record.get(metric)) for record in finals])
        slope = loglog_slope(scales, values)
        for scale in sorted(set(scales.tolist()), reverse=True):
            chosen = scales == scale
            final_step = max(int(record["step"]) for record, keep in zip(finals, chosen, strict=True) if keep)
            summaries.append(MetricSummary(metric, scale, final_step, *_spread(values[chosen]), slope))
    return summaries


def write_summary_csv(summaries: Sequence[MetricSummary], path: str | Path) -> Path:
    """Write ``summaries`` to ``path`` as CSV, one row per metric and ε (columns: the dataclass fields)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[field.name for field in fields(MetricSummary)])
        writer.writeheader()
        writer.writerows(asdict(summary) for summary in summaries)
    return path


def read_summary_csv(path: str | Path) -> list[MetricSummary]:
    """The rows of a ``summary.csv`` written by :func:`write_summary_csv`."""
    with Path(path).open(newline="") as handle:
        return [
            MetricSummary(
                row["metric"], float(row["init_scale"]), int(row["final_step"]), int(row["count"]),
                *(float(row[name]) for name in ("mean", "std", "min", "max", "loglog_slope")),
            )
            for row in csv.DictReader(handle)
        ]


def format_summary(summaries: Sequence[MetricSummary]) -> str:
    """A fixed-width table: one row per metric, ``mean ± std`` of the final value per ε, then the slope."""
    scales = sorted({summary.init_scale for summary in summaries}, reverse=True)
    by_key = {(summary.metric, summary.init_scale): summary for summary in summaries}
    metrics = list(dict.fromkeys(summary.metric for summary in summaries))
    name_width = max([len("metric"), *map(len, metrics)])
    cell_width = 19
    header = f"{'metric':<{name_width}}" + "".join(f"{f'ε={scale:g}':>{cell_width}}" for scale in scales)
    lines = [header + f"{'slope':>9}"]
    for metric in metrics:
        cells = []
        for scale in scales:
            summary = by_key.get((metric, scale))
            cell = f"{summary.mean:.2e}±{summary.std:.1e}" if summary else "—"
            cells.append(f"{cell:>{cell_width}}")
        slope = next(summary.loglog_slope for summary in summaries if summary.metric == metric)
        lines.append(f"{metric:<{name_width}}" + "".join(cells) + f"{slope:>9.3f}")
    steps = sorted({summary.final_step for summary in summaries})
    lines.append(
        f"final value at step {', '.join(map(str, steps))}: mean ± std over replicas; slope = least-squares "
        "d log10(final value) / d log10 ε over all replicas (non-positive values skipped)"
    )
    return "\n".join(lines)


def write_summary(records: Iterable[Mapping[str, Any]], path: str | Path) -> str:
    """Summarise ``records`` (:func:`summarize`), write the CSV to ``path`` and return the printable table."""
    summaries = summarize(records)
    write_summary_csv(summaries, path)
    return format_summary(summaries)
