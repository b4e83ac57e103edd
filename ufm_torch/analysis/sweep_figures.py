"""Sweep-level views: final metrics against swept values and trajectories grouped by swept value (the HPARAMS
sessions are written by :mod:`ufm_torch.analysis.sweep_hparams`).

Inputs are the :class:`ufm_torch.analysis.sweep_table.SummaryTable` and the :class:`ufm_torch.run_folder.jobs.Job`
list read back from a sweep folder, so every view can be redrawn from saved files (``ufm-plot``). The varying keys
are the swept override keys, the per-replica hyperparameters whose values differ between replicas
(``module.classifier_decay``, …) and the init scale ε (``init_scale``) when replicas differ in it. A grid of many
values stays readable and quick to draw: a panel draws at most :data:`MAX_SERIES` series (evenly spread over the
others' values), and past :data:`MAX_TRAJECTORIES` replicas the trajectories are medians per value.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ufm_torch.analysis.figure_style import (
    UNKNOWN_LOSS,
    loss_handles,
    loss_name,
    loss_styles,
    outside_legend,
    panel_title,
    plot_values,
    set_title,
    value_scales,
)
from ufm_torch.analysis.records import HYPERPARAMETER_FIELDS, RECORD_FIELDS, as_float, spread
from ufm_torch.analysis.sweep_table import SummaryTable, as_number
from ufm_torch.metrics.tags import SNC_TAGS
from ufm_torch.run_folder.jobs import Job

PANEL_COLUMNS = 4
MAX_SERIES = 12
"""The most series (combinations of the other varying keys and loss) a panel of the final-metrics figure draws."""
MAX_TRAJECTORIES = 120
"""Past this many replicas the trajectories figure draws the median per value of its key (and loss)."""


def varying_keys(table: SummaryTable) -> list[str]:
    """Swept keys, the per-replica hyperparameters that differ between rows (one of those that vary together, as
    λ_W = λ_H does), plus ``init_scale`` when replicas differ in ε (replacing a swept ``model.init_scale``)."""
    keys = list(table.swept)
    for key in table.hyperparameters:
        column = [row[key] for row in table.rows]
        if len(set(column)) > 1 and all(column != [row[other] for row in table.rows] for other in keys):
            keys.append(key)
    scales = {row["init_scale"] for row in table.rows if row["init_scale"] is not None}
    if len(scales) > 1:
        return [key for key in keys if key != "model.init_scale"] + ["init_scale"]
    return keys


def is_numeric(values: Iterable[Any]) -> bool:
    """True when every present value reads as a number."""
    present = [value for value in values if value is not None]
    return bool(present) and all(as_number(value) is not None for value in present)


def spans_decades(values: Iterable[float]) -> bool:
    """True when all values are positive and the largest is at least ten times the smallest."""
    finite = [value for value in values if math.isfinite(value)]
    return bool(finite) and min(finite) > 0 and max(finite) >= 10 * min(finite)


def file_stem(key: str) -> str:
    """A key as a file-name part: anything but letters, digits, ``.``, ``_`` and ``-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", key)


def value_order(values: Iterable[Any]) -> list[Any]:
    """Distinct values, numerically sorted when all are numbers, else as text."""
    distinct = {value for value in values if value is not None}
    if is_numeric(distinct):
        return sorted(distinct, key=lambda value: as_number(value))
    return sorted(distinct, key=str)


def value_colours(values: list[Any], numeric: bool) -> dict[Any, Any]:
    """A colour per value: viridis along sorted numbers (short of its pale yellow end), tab10 for categories."""
    if numeric:
        palette = colormaps["viridis"]
        return {value: palette(0.85 * i / max(len(values) - 1, 1)) for i, value in enumerate(values)}
    palette = colormaps["tab10"]
    return {value: palette(i % 10) for i, value in enumerate(values)}


def _panel_grid(count: int) -> tuple[Figure, list[Any]]:
    """``count`` panels in rows of :data:`PANEL_COLUMNS`, with room on the right for the legend."""
    columns = min(PANEL_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.4 * columns + 2.8, 2.8 * rows + 0.9), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    flat = list(axes.flat)
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def _group_label(keys: list[str], values: tuple[Any, ...]) -> str:
    return ", ".join(f"{key}={value}" for key, value in zip(keys, values, strict=True)) or "all"


def _left_out_note(left_out: list[str], reason: str) -> str:
    """A line for the title naming the metrics without a panel, or nothing."""
    if not left_out:
        return ""
    return f"\nnot drawn ({reason}): {', '.join(panel_title(metric) for metric in left_out)}"


def final_metrics_figure(
    table: SummaryTable, key: str, metrics: list[str], title: str, losses: Mapping[str, str] | None = None
) -> Figure | None:
    """Final value of each metric against ``key``, one series per combination of the other varying keys and loss.

    Finished replicas only (diverged and failed ones are counted in the title); each replica is a small dot, the
    median a larger marker. Numeric keys are a numeric axis (log when spanning decades) with the medians joined,
    in the loss's line style; other keys are categories, drawn as points side by side, never joined. Each metric
    family shares one y-scale (:mod:`ufm_torch.analysis.figure_style`: errors on log axes, zeros at the floor). A
    metric defined at fewer than two values of ``key`` shows no dependence on it and gets no panel (the title names
    it), unless the finished replicas hold one value only (then a metric needs one value); None when no metric is
    left. ``losses`` maps job names to their loss.
    """
    rows = [row for row in table.rows if row["status"] == "finished" and row[key] is not None]
    omitted = sum(1 for row in table.rows if row["status"] != "finished")
    others = [other for other in varying_keys(table) if other != key]
    numeric = is_numeric(row[key] for row in rows)
    order = value_order(row[key] for row in rows)
    position = {value: (as_number(value) if numeric else float(i)) for i, value in enumerate(order)}
    log_x = numeric and spans_decades(position.values())
    groups = value_order(tuple(row[other] for other in others) for row in rows)
    numeric_groups = len(others) == 1 and is_numeric(group[0] for group in groups)
    if numeric_groups:
        groups = sorted(groups, key=lambda group: as_number(group[0]))
    colours = value_colours(groups, numeric=numeric_groups)
    loss_of = {id(row): (losses or {}).get(row["job"], UNKNOWN_LOSS) for row in rows}
    styles = loss_styles(loss_of.values())
    present = {(_row_group(row, others), loss_of[id(row)]) for row in rows}
    every_series = [(group, loss) for group in groups for loss in styles if (group, loss) in present]
    series = spread(every_series, MAX_SERIES)
    groups = [group for group in groups if any(one[0] == group for one in series)]
    members_of: dict[Any, list[dict[str, Any]]] = {one: [] for one in series}
    for row in rows:
        members_of.get((_row_group(row, others), loss_of[id(row)]), []).append(row)
    defined = {metric: {row[key] for row in rows if math.isfinite(as_float(row[metric]))} for metric in metrics}
    needed = min(2, len(order))
    drawn = [metric for metric in metrics if defined[metric] and len(defined[metric]) >= needed]
    if not drawn:
        return None
    scales = value_scales({metric: [as_float(row[metric]) for row in rows] for metric in drawn})
    note = f" ({omitted} unfinished replicas omitted)" if omitted else ""
    if len(series) < len(every_series):
        note += f"\n{len(series)} of {len(every_series)} series, evenly spread over {', '.join(others)}"
    left_out = [metric for metric in metrics if metric not in drawn]
    reason = f"defined at fewer than two values of {key}" if needed == 2 else "no value"
    figure, axes = _panel_grid(len(drawn))
    x_of = _dodged_positions(series, members_of, key, position, numeric)
    for axis, metric in zip(axes, drawn, strict=True):
        scale = scales[metric]
        for group, loss in series:
            members = members_of[(group, loss)]
            xs = [x_of[(group, loss)][row[key]] for row in members]
            ys = [as_float(row[metric]) for row in members]
            linestyle, marker = styles[loss]
            colour = colours[group]
            plot_values(axis, xs, ys, scale, linestyle="none", marker="o", color=colour, alpha=0.4, markersize=3)
            medians = [
                (x_of[(group, loss)][value], statistics.median(finite))
                for value in order
                if (finite := [as_float(row[metric]) for row in members
                               if row[key] == value and math.isfinite(as_float(row[metric]))])
            ]  # fmt: skip
            if medians:
                mx, my = zip(*medians, strict=True)
                plot_values(axis, mx, my, scale, color=colour, marker=marker, markersize=5,
                            linestyle=linestyle if numeric else "none")  # fmt: skip
        scale.apply(axis)
        if log_x:
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks([position[value] for value in order], [str(value) for value in order], rotation=30)
            axis.set_xlim(-0.5, len(order) - 0.5)
        axis.set_title(panel_title(metric))
        axis.set_xlabel(key)
        axis.grid(True, which="major", alpha=0.3)
    joined = "-" if numeric else "none"
    handles = [Line2D([], [], color=colours[group], marker="o", linestyle=joined, label=_group_label(others, group))
               for group in groups] if others else []  # fmt: skip
    handles += loss_handles(styles, lines=numeric)
    handles += [
        Line2D([], [], color="grey", marker="o", linestyle="none", markersize=3, alpha=0.4, label="each replica"),
        Line2D([], [], color="grey", marker="o", linestyle=joined, markersize=5, label="median over replicas"),
    ]
    set_title(figure, f"{title}{note}{_left_out_note(left_out, reason)}", outside_legend(figure, handles))
    return figure


def _row_group(row: Mapping[str, Any], others: list[str]) -> tuple[Any, ...]:
    return tuple(row[other] for other in others)


def _dodged_positions(
    series: list[Any],
    members_of: Mapping[Any, list[dict[str, Any]]],
    key: str,
    position: Mapping[Any, float],
    numeric: bool,
) -> dict[Any, dict[Any, float]]:
    """The x of each series at each value of ``key``: the value's position on a numeric axis; on a categorical axis
    the series present at a category side by side around its tick, so no two share a spot."""
    x_of: dict[Any, dict[Any, float]] = {one: dict(position) for one in series}
    if numeric:
        return x_of
    width = 0.6 / max(len(series), 1)
    for value, at in position.items():
        present = [one for one in series if any(row[key] == value for row in members_of[one])]
        for index, one in enumerate(present):
            x_of[one][value] = at + (index - (len(present) - 1) / 2) * width
    return x_of


def replica_value(job: Job, record: Mapping[str, Any], key: str) -> Any:
    """A replica's value of a varying key: its record's (ε, a per-replica hyperparameter), else the job's
    override."""
    if key == "init_scale" or (key in HYPERPARAMETER_FIELDS and key in record):
        return record[key]
    return job.overrides.get(key)


def median_trajectories(
    trajectories: list[tuple[Any, str, list[Mapping[str, Any]]]], metrics: list[str]
) -> list[tuple[Any, str, list[Mapping[str, Any]]]]:
    """One trajectory per value and loss: at each step the median of each metric over the replicas with a finite
    value (NaN where none has)."""
    grouped: dict[tuple[Any, str], dict[int, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for value, loss, records in trajectories:
        for record in records:
            grouped[(value, loss)][record["step"]].append(record)
    medians = []
    for (value, loss), by_step in grouped.items():
        records = []
        for step in sorted(by_step):
            finite = {metric: [x for r in by_step[step] if math.isfinite(x := as_float(r.get(metric)))]
                      for metric in metrics}  # fmt: skip
            records.append({"step": step} | {m: statistics.median(v) if v else math.nan for m, v in finite.items()})
        medians.append((value, loss, records))
    return medians


def trajectories_figure(jobs: list[Job], key: str, metrics: list[str]) -> Figure | None:
    """Every replica's metric trajectories against the step, coloured by its value of ``key``, in the line style of
    its loss (past :data:`MAX_TRAJECTORIES` replicas the median trajectory of each value and loss); each metric
    family shares one y-scale (errors on log axes, zeros at the floor). A metric without a value gets no panel (the
    title names it); None when no metric has one."""
    trajectories = []
    for job in jobs:
        loss = loss_name(job.config, job.records)
        by_replica: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
        for record in job.records:
            by_replica[int(record["replica"])].append(record)
        for _, records in sorted(by_replica.items()):
            records.sort(key=lambda record: record["step"])
            trajectories.append((replica_value(job, records[-1], key), loss, records))
    title = f"Trajectories of every replica, coloured by {key}"
    if len(trajectories) > MAX_TRAJECTORIES:
        title = f"Median trajectory of the replicas of each value of {key} ({len(trajectories)} replicas)"
        trajectories = median_trajectories(trajectories, metrics)
    order = value_order(value for value, _, _ in trajectories)
    numeric = is_numeric(order)
    colours = value_colours(order, numeric)
    styles = loss_styles(loss for _, loss, _ in trajectories)
    values = {metric: [as_float(record.get(metric)) for _, _, records in trajectories for record in records]
              for metric in metrics}  # fmt: skip
    drawn = [metric for metric in metrics if any(math.isfinite(value) for value in values[metric])]
    if not drawn:
        return None
    scales = value_scales({metric: values[metric] for metric in drawn})
    left_out = _left_out_note([metric for metric in metrics if metric not in drawn], "no value")
    figure, axes = _panel_grid(len(drawn))
    for axis, metric in zip(axes, drawn, strict=True):
        for value, loss, records in trajectories:
            steps = [record["step"] for record in records]
            plot_values(axis, steps, [as_float(record.get(metric)) for record in records], scales[metric],
                        color=colours.get(value, "grey"), linestyle=styles[loss][0], alpha=0.6,
                        linewidth=1.0)  # fmt: skip
        axis.set_xscale("symlog", linthresh=1.0)
        scales[metric].apply(axis)
        axis.set_title(panel_title(metric))
        axis.set_xlabel("step")
        axis.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=colours[value], label=f"{key}={value}") for value in order]
    legend = outside_legend(figure, handles + loss_handles(styles, markers=False))
    set_title(figure, title + (", line style by loss" if len(styles) > 1 else "") + left_out, legend)
    return figure


def draw_sweep_figures(jobs: list[Job], table: SummaryTable, figures_dir: Path) -> list[Path]:
    """All sweep figures into ``figures_dir``; returns the paths written.

    Per varying key: ``final_vs_<key>.png`` (every metric), ``final_strong_collapse_vs_<key>.png`` (SNC1–SNC3
    and dist_S, the paper's Figures 1 and 2 at the last step) and ``trajectories_by_<key>.png``. A figure with no
    panel to draw is not written (and a copy left by an earlier report is removed).
    """
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    metrics = [metric for metric in table.metrics if metric not in RECORD_FIELDS]
    strong = [metric for metric in SNC_TAGS if metric in metrics]
    losses = {job.name: loss_name(job.config, job.records) for job in jobs}
    paths: list[Path] = []
    if not metrics:
        return paths
    for key in varying_keys(table):
        stem = file_stem(key)
        paths += _save(final_metrics_figure(table, key, metrics, f"Last step vs {key}", losses),
                       figures_dir / f"final_vs_{stem}.png")  # fmt: skip
        if strong:
            title = f"Strong neural collapse at the last step vs {key}"
            paths += _save(final_metrics_figure(table, key, strong, title, losses),
                           figures_dir / f"final_strong_collapse_vs_{stem}.png")  # fmt: skip
        paths += _save(trajectories_figure(jobs, key, metrics), figures_dir / f"trajectories_by_{stem}.png")
    return paths


def _save(figure: Figure | None, path: Path) -> list[Path]:
    """``[path]`` after writing ``figure`` there; without a figure ``[]``, and a copy an earlier report left at
    ``path`` is removed."""
    if figure is None:
        path.unlink(missing_ok=True)
        return []
    figure.savefig(path, dpi=110)
    return [path]
