"""The collapse figure: every collapse metric of one or more runs against the fraction of training done.

One row per metric family (Papyan, Han & Donoho 2020, NC1–NC4; Mixon et al., SNC1–SNC3 and dist_S; the distances to
the global optimum; accuracy), one panel per metric with a value, and one line per series: each init scale ε of each
run (the median over the replicas of that ε, which differ only in their random directions), or the run itself when
it has no ε (a backbone); a run whose replicas differ in their hyperparameters (:mod:`ufm_torch.hyperparameters`)
draws one line per replica group, at most :data:`MAX_GROUPS` of them, evenly spread. A single run's ε are coloured
as in the paper figures; the runs of a comparison (``experiment=compare_digits``) get a colour each, and each loss its
own line style. The panels of a row share one
y-scale (:mod:`ufm_torch.analysis.figure_style`: errors on log axes with zeros marked at the floor, accuracy on
[0, 1]).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ufm_torch.analysis.figure_style import (
    UNKNOWN_LOSS,
    loss_handles,
    loss_styles,
    outside_legend,
    panel_title,
    plot_values,
    set_title,
    value_scales,
)
from ufm_torch.analysis.paper_figures import scale_colours, scale_label
from ufm_torch.analysis.records import (
    as_float,
    group_label,
    records_by_group,
    replica_setting,
    spread,
    varying_entries,
)
from ufm_torch.metrics.tags import (
    ACCURACY_TAGS,
    NC_TAGS,
    OPTIMUM_TAGS,
    SNC_TAGS,
    TRAIN_ACCURACY_TAG,
)

RUN_TITLES = {
    "backbone": "Backbone",
    "ufm": "Unconstrained features model",
    "ufm_regularized": "Regularised UFM (the backbone's λ)",
}
PANELS = {
    "Neural collapse": NC_TAGS,
    "Strong neural collapse": SNC_TAGS,
    "Distance to the global optimum": OPTIMUM_TAGS,
    "Accuracy": ACCURACY_TAGS,
}
"""Rows of the collapse figure, top to bottom, each with its metrics; a metric no record holds a number for has no
panel, and a row without panels is left out (SNC on unbalanced classes, the optimum without weight decay)."""
MAX_GROUPS = 12
"""The most replica groups (per-replica hyperparameters and ε) a run's figure draws, evenly spread over them."""
ONSET_GID = "onset"
"""The ``gid`` of the dotted lines at the first evaluation with 100% training accuracy."""
ROW_SUBJECTS = {
    "Neural collapse": "NC1–NC4",
    "Strong neural collapse": "SNC1–SNC3, dist_S",
    "Distance to the global optimum": "the distances to the global optimum",
    "Accuracy": "accuracy",
}


def drawn_panels(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, tuple[str, ...]]:
    """The rows of :data:`PANELS` with the metrics that some record of ``histories`` has a value for; a row without
    any is left out."""

    def has_values(tag: str) -> bool:
        return any(np.isfinite(as_float(record.get(tag))) for records in histories.values() for record in records)

    rows = {name: tuple(tag for tag in tags if has_values(tag)) for name, tags in PANELS.items()}
    return {name: tags for name, tags in rows.items() if tags}


def median_history(records: Sequence[Mapping[str, Any]], tag: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)``: at each evaluated step, the median of ``tag`` over the replicas with a finite value."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for record in records:
        value = as_float(record.get(tag))
        if np.isfinite(value):
            by_step[int(record["step"])].append(value)
    steps = sorted(by_step)
    return np.array(steps), np.array([statistics.median(by_step[step]) for step in steps], dtype=np.float64)


def has_replica_groups(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the records carry per-replica hyperparameters (:mod:`ufm_torch.hyperparameters`): their lines are
    then replica groups (hyperparameters and ε), not init scales."""
    return bool(records) and bool(replica_setting(records[0]))


def records_by_scale(records: Sequence[Mapping[str, Any]]) -> dict[float | None, list[Mapping[str, Any]]]:
    """The records of each init scale ε, largest first; a run without ε (a backbone) is one group under None."""
    groups: dict[float | None, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        scale = record.get("init_scale")
        groups[None if scale is None else float(scale)].append(record)
    return dict(sorted(groups.items(), key=lambda item: -item[0] if item[0] is not None else 0.0))


def first_interpolating_fraction(records: Sequence[Mapping[str, Any]], max_steps: int) -> float | None:
    """Fraction of training at the first evaluation where every replica has 100% training accuracy (the terminal
    phase of training starts, Papyan, Han & Donoho 2020); None if it never does."""
    accuracy_by_step: dict[int, list[float]] = defaultdict(list)
    for record in records:
        accuracy_by_step[int(record["step"])].append(as_float(record.get(TRAIN_ACCURACY_TAG)))
    steps = [step for step, values in accuracy_by_step.items() if all(value == 1.0 for value in values)]
    return min(steps) / max_steps if steps else None


def run_title(name: str) -> str:
    """The title of a comparison's run (``ufm`` → ``Unconstrained features model``), else its name."""
    return RUN_TITLES.get(name, name)


def collapse_figure(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    max_steps: Mapping[str, int],
    title: str,
    losses: Mapping[str, str] | None = None,
) -> Figure:
    """One row per metric family, one panel per metric, one line per run and ε (module docstring).

    x: fraction of training ``step / max_steps`` on a log axis (step 0, the initialisation, is left out). A dotted
    line in a series' colour marks its first evaluation with 100% training accuracy, where the terminal phase of
    training begins. ``title`` describes the setting (``C = 3, N = 3, p = 15``); ``losses`` maps run names to their
    loss, each drawn in its own line style.
    """
    panels = drawn_panels(histories)
    single = len(histories) == 1
    grouped = single and has_replica_groups(next(iter(histories.values())))
    series = []
    for name, records in histories.items():
        trained = [record for record in records if record["step"] > 0]
        if grouped:
            groups = records_by_group(trained)
            varying = varying_entries(list(groups))
            series += [(name, None, group_label(key, varying), groups[key]) for key in spread(list(groups), MAX_GROUPS)]
            continue
        for scale, group in records_by_scale(trained).items():
            label = scale_label(scale) if single and scale is not None else run_title(name)
            if not single and scale is not None:
                label += f", {scale_label(scale)}"
            series.append((name, scale, label, group))
    scales_of_run = [scale for _, scale, _, _ in series if scale is not None]
    if grouped:
        colours = [colormaps["viridis"](0.85 * i / max(len(series) - 1, 1)) for i in range(len(series))]
    elif single and scales_of_run:
        by_scale = scale_colours(scales_of_run)
        colours = [by_scale.get(scale, "black") for _, scale, _, _ in series]
    else:
        colours = [colormaps["tab10"](i % 10) for i in range(len(series))]
    styles = loss_styles((losses or {}).get(name, UNKNOWN_LOSS) for name in histories)
    medians = {(i, tag): median_history(group, tag) for i, (_, _, _, group) in enumerate(series)
               for tags in panels.values() for tag in tags}  # fmt: skip
    scales = value_scales({tag: list(values) for (_, tag), (_, values) in medians.items()})
    onsets = [first_interpolating_fraction(group, max_steps[name]) for name, _, _, group in series]
    columns = max(len(tags) for tags in panels.values())
    figure = Figure(figsize=(3.6 * columns + 3.0, 2.7 * len(panels) + 1.4), layout="constrained")
    grid = figure.subplots(len(panels), columns, squeeze=False, sharex=True)
    for row, (panel, tags) in enumerate(panels.items()):
        for column in range(len(tags), columns):
            grid[row][column].set_visible(False)
        for column, tag in enumerate(tags):
            axes = grid[row][column]
            for i, (name, _, _, _) in enumerate(series):
                steps, values = medians[(i, tag)]
                if not values.size:
                    continue
                linestyle = styles[(losses or {}).get(name, UNKNOWN_LOSS)][0]
                plot_values(axes, steps / max_steps[name], values, scales[tag], color=colours[i],
                            linestyle=linestyle, linewidth=1.4)  # fmt: skip
                if onsets[i] is not None:
                    axes.axvline(onsets[i], color=colours[i], linestyle=":", linewidth=0.9, gid=ONSET_GID)
            scales[tag].apply(axes)
            axes.set_xscale("log")
            axes.grid(True, which="major", alpha=0.3)
            axes.set_title(panel_title(tag), fontsize="medium")
            if column == 0:
                axes.set_ylabel(panel)
            if row == len(panels) - 1 or column >= len(panels[list(panels)[row + 1]]):
                axes.set_xlabel("fraction of training")
                axes.xaxis.set_tick_params(labelbottom=True)
    handles = [Line2D([], [], color=colour, linewidth=1.4, label=label)
               for colour, (_, _, label, _) in zip(colours, series, strict=True)]  # fmt: skip
    handles += loss_handles(styles, markers=False)
    if any(line.get_gid() == ONSET_GID for axes in figure.axes for line in axes.lines):
        handles.append(Line2D([], [], color="grey", linestyle=":", linewidth=0.9, label="first 100% training accuracy"))
    legend_title = "replica group" if grouped else "init scale ε" if single and scales_of_run else None
    legend = outside_legend(figure, handles, legend_title)
    known = sorted(set(losses.values()) - {UNKNOWN_LOSS}) if losses else []
    setting = f"{title}, {known[0]} loss" if len(known) == 1 else title
    set_title(figure, describe(histories, panels, setting), legend)
    return figure


def describe(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], panels: Mapping[str, Sequence[str]], title: str
) -> str:
    """The figure's title: what is drawn, against what, of which runs, and what a line is."""
    subjects = [ROW_SUBJECTS.get(panel, panel) for panel in panels]
    what = ", ".join(subjects[:-1]) + (" and " if len(subjects) > 1 else "") + subjects[-1]
    runs = "" if len(histories) == 1 else f" of {', '.join(run_title(name) for name in histories)}"
    (first,) = histories.values() if len(histories) == 1 else ([],)
    if has_replica_groups(first):
        return f"{what[0].upper()}{what[1:]} against the fraction of training\n({describe_groups(first)}; {title})"
    groups = [group for records in histories.values() for group in records_by_scale(records).items()]
    has_scales = any(scale is not None for scale, _ in groups)
    copies = max((len({record["replica"] for record in records}) for _, records in groups), default=1)
    if copies > 1:
        line = f"median over the {copies} replicas of each {'ε' if has_scales else 'run'}; "
    elif len(histories) > 1:
        line = "one line per run; " if len(groups) == len(histories) else "one line per run and ε; "
    else:
        line = "one line per ε; " if len(groups) > 1 else ""
    return f"{what[0].upper()}{what[1:]} against the fraction of training{runs}\n({line}{title})"


def describe_groups(records: Sequence[Mapping[str, Any]]) -> str:
    """What a line of a run with replica groups is: one group (the median over its copies), and how many of the
    groups are drawn."""
    groups = records_by_group(records)
    copies = max(len({record["replica"] for record in members}) for members in groups.values())
    line = "one line per replica group" + (f", the median over its {copies} copies" if copies > 1 else "")
    if len(groups) > MAX_GROUPS:
        line = f"{MAX_GROUPS} of {len(groups)} replica groups, evenly spread: " + line
    return line
