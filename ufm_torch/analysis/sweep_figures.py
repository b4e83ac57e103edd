"""Sweep-level views: final metrics against swept values and trajectories grouped by swept value (the HPARAMS
sessions are written by :mod:`ufm_torch.analysis.sweep_hparams`).

Inputs are the :class:`ufm_torch.analysis.sweep_table.SummaryTable` and the :class:`ufm_torch.run_folder.jobs.Job`
list read back from a sweep folder, so every view can be redrawn from saved files (``ufm-plot``). The varying keys
are the swept override keys plus the per-replica init scale ε (``init_scale``) when replicas differ in it.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ufm_torch.analysis.records import as_float, final_records
from ufm_torch.analysis.sweep_table import SummaryTable, as_number
from ufm_torch.metrics.tags import SNC_TAGS, short_name
from ufm_torch.run_folder.jobs import Job

PANEL_COLUMNS = 4


def varying_keys(table: SummaryTable) -> list[str]:
    """Swept keys, plus ``init_scale`` when replicas differ in ε (replacing a swept ``model.init_scale``)."""
    scales = {row["init_scale"] for row in table.rows if row["init_scale"] is not None}
    if len(scales) > 1:
        return [key for key in table.swept if key != "model.init_scale"] + ["init_scale"]
    return list(table.swept)


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
    """A colour per value: viridis along sorted numbers, tab10 for categories."""
    if numeric:
        palette = colormaps["viridis"]
        return {value: palette(i / max(len(values) - 1, 1)) for i, value in enumerate(values)}
    palette = colormaps["tab10"]
    return {value: palette(i % 10) for i, value in enumerate(values)}


def _panel_grid(count: int, title: str) -> tuple[Figure, list[Any]]:
    columns = min(PANEL_COLUMNS, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(3.4 * columns, 2.8 * rows + 0.6))
    axes = figure.subplots(rows, columns, squeeze=False)
    figure.suptitle(title)
    flat = list(axes.flat)
    for axis in flat[count:]:
        axis.set_visible(False)
    return figure, flat[:count]


def _set_value_scale(axis: Any, values: list[float]) -> None:
    """Log y for positive values spanning a decade or more, else linear."""
    if spans_decades(values):
        axis.set_yscale("log")


def _group_label(keys: list[str], values: tuple[Any, ...]) -> str:
    return ", ".join(f"{key}={value}" for key, value in zip(keys, values, strict=True)) or "all"


def draw_final_metrics(table: SummaryTable, key: str, metrics: list[str], path: Path, title: str) -> Path:
    """Final value of each metric against ``key``, one line per combination of the other varying keys.

    Finished replicas only (diverged and failed ones are counted in the title); each replica is a point,
    the line joins the medians. Numeric keys spanning decades get a log x axis, metrics spanning decades a log
    y axis (log-log when both do); other keys are categories.
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
    note = f" ({omitted} unfinished replicas omitted)" if omitted else ""
    figure, axes = _panel_grid(len(metrics), f"{title}{note}")
    for axis, metric in zip(axes, metrics, strict=True):
        plotted: list[float] = []
        for group in groups:
            members = [row for row in rows if tuple(row[other] for other in others) == group]
            xs = [position[row[key]] for row in members]
            ys = [as_float(row[metric]) for row in members]
            axis.plot(xs, ys, "o", color=colours[group], alpha=0.45, markersize=3.5)
            medians = []
            for value in order:
                at_value = [y for x, y in zip(xs, ys, strict=True) if x == position[value] and math.isfinite(y)]
                if at_value:
                    medians.append((position[value], statistics.median(at_value)))
            if medians:
                axis.plot(*zip(*medians, strict=True), "-", color=colours[group], label=_group_label(others, group))
            plotted.extend(ys)
        if log_x:
            axis.set_xscale("log")
        if not numeric:
            axis.set_xticks([position[value] for value in order], [str(value) for value in order], rotation=30)
        _set_value_scale(axis, plotted)
        axis.set_title(short_name(metric))
        axis.set_xlabel(key)
        axis.grid(True, which="major", alpha=0.3)
    if others:
        axes[0].legend(fontsize="small")
    return _save(figure, path)


def draw_trajectories(jobs: list[Job], key: str, metrics: list[str], path: Path) -> Path:
    """Every replica's metric trajectories against the step, coloured by its value of ``key``."""
    trajectories = []
    for job in jobs:
        for final in final_records(job.records):
            replica = final["replica"]
            records = sorted((r for r in job.records if r["replica"] == replica), key=lambda r: r["step"])
            value = final["init_scale"] if key == "init_scale" else job.overrides.get(key)
            trajectories.append((value, records))
    order = value_order(value for value, _ in trajectories)
    numeric = is_numeric(order)
    colours = value_colours(order, numeric)
    figure, axes = _panel_grid(len(metrics), f"Trajectories of every replica, coloured by {key}")
    for axis, metric in zip(axes, metrics, strict=True):
        plotted: list[float] = []
        for value, records in trajectories:
            steps = [record["step"] for record in records]
            values = [as_float(record.get(metric)) for record in records]
            axis.plot(steps, values, color=colours.get(value, "grey"), alpha=0.6, linewidth=1.0)
            plotted.extend(values)
        axis.set_xscale("symlog", linthresh=1.0)
        _set_value_scale(axis, plotted)
        axis.set_title(short_name(metric))
        axis.set_xlabel("step")
        axis.grid(True, which="major", alpha=0.3)
    handles = [Line2D([], [], color=colours[value], label=f"{key}={value}") for value in order]
    axes[0].legend(handles=handles, fontsize="small")
    return _save(figure, path)


def draw_sweep_figures(jobs: list[Job], table: SummaryTable, figures_dir: Path) -> list[Path]:
    """All sweep figures into ``figures_dir``; returns their paths.

    Per varying key: ``final_vs_<key>.png`` (every metric), ``final_strong_collapse_vs_<key>.png`` (SNC1–SNC3
    and dist_S, the paper's Figures 1 and 2 at the last step) and ``trajectories_by_<key>.png``.
    """
    figures_dir = Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    strong = [metric for metric in SNC_TAGS if metric in table.metrics]
    paths = []
    if not table.metrics:
        return paths
    for key in varying_keys(table):
        stem = file_stem(key)
        paths.append(
            draw_final_metrics(table, key, table.metrics, figures_dir / f"final_vs_{stem}.png", f"Last step vs {key}")
        )
        if strong:
            paths.append(
                draw_final_metrics(
                    table,
                    key,
                    strong,
                    figures_dir / f"final_strong_collapse_vs_{stem}.png",
                    f"Strong neural collapse at the last step vs {key}",
                )
            )
        paths.append(draw_trajectories(jobs, key, table.metrics, figures_dir / f"trajectories_by_{stem}.png"))
    return paths


def _save(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
