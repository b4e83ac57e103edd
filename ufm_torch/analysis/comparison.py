"""The collapse figure: every collapse metric of one or more runs against the fraction of training done.

One column per run (a single run, or the backbone and the UFM of a comparison such as ``experiment=compare_digits``),
one row per metric group (Papyan, Han & Donoho 2020, NC1–NC4; Mixon et al., SNC1–SNC3 and Figure 2; accuracy).
A run with several replicas is drawn as the median over the replicas of its smallest init scale ε (the copies of one
ε differ only in their random directions; the paper's figures show every ε).
"""

from __future__ import annotations

import statistics
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ufm_torch.analysis.records import as_float
from ufm_torch.metrics.tags import (
    ACCURACY_TAGS,
    NC_TAGS,
    OPTIMUM_TAGS,
    SNC_TAGS,
    TRAIN_ACCURACY_TAG,
    is_collapse_tag,
    short_name,
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
"""Rows of the collapse figure, top to bottom; a row whose tags no record holds a number for is left out (SNC on
unbalanced classes, the optimum without weight decay)."""


def drawn_panels(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, tuple[str, ...]]:
    """The rows of :data:`PANELS` that some record of ``histories`` has a value for (accuracy always)."""
    def has_values(tags: Sequence[str]) -> bool:
        return any(record.get(tag) is not None for records in histories.values() for record in records for tag in tags)

    return {name: tags for name, tags in PANELS.items() if name == "Accuracy" or has_values(tags)}


def curve_label(tag: str) -> str:
    """Legend entry of a metric: ``nc1`` for ``collapse/nc1``, the whole tag otherwise."""
    return short_name(tag) if is_collapse_tag(tag) else tag


def median_history(records: Sequence[Mapping[str, Any]], tag: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)``: at each evaluated step, the median of ``tag`` over the replicas with a finite value."""
    by_step: dict[int, list[float]] = defaultdict(list)
    for record in records:
        value = as_float(record.get(tag))
        if np.isfinite(value):
            by_step[int(record["step"])].append(value)
    steps = sorted(by_step)
    return np.array(steps), np.array([statistics.median(by_step[step]) for step in steps], dtype=np.float64)


def smallest_scale_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records of the replicas with the smallest init scale ε (all records of a backbone, which has none)."""
    scales = {record.get("init_scale") for record in records} - {None}
    if not scales:
        return list(records)
    smallest = min(scales)
    return [record for record in records if record.get("init_scale") == smallest]


def column_title(name: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The run's title, with the ε and the number of replicas a median is taken over."""
    title = RUN_TITLES.get(name, name)
    scale = records[0].get("init_scale") if records else None
    replicas = len({record["replica"] for record in records})
    details = ([f"ε = {scale:g}"] if scale is not None else []) + ([f"median of {replicas}"] if replicas > 1 else [])
    return f"{title} ({', '.join(details)})" if details else title


def first_interpolating_fraction(records: Sequence[Mapping[str, Any]], max_steps: int) -> float | None:
    """Fraction of training at the first evaluation where every replica has 100% training accuracy (the terminal
    phase of training starts, Papyan, Han & Donoho 2020); None if it never does."""
    accuracy_by_step: dict[int, list[float]] = defaultdict(list)
    for record in records:
        accuracy_by_step[int(record["step"])].append(as_float(record.get(TRAIN_ACCURACY_TAG)))
    steps = [step for step, values in accuracy_by_step.items() if all(value == 1.0 for value in values)]
    return min(steps) / max_steps if steps else None


def collapse_figure(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], max_steps: Mapping[str, int], title: str
) -> Figure:
    """One column per run, one row per metric group, rows sharing their y-axis.

    x: fraction of training ``step / max_steps`` on a log axis (step 0, the initialisation, is left out);
    collapse errors on log axes (zeros left out). A dotted line marks the first evaluation with 100%
    training accuracy, where the terminal phase of training begins.
    """
    panels = drawn_panels(histories)
    figure = Figure(figsize=(5.5 * len(histories) + 0.5, 2.6 * len(panels) + 2.2), layout="constrained")
    grid = figure.subplots(len(panels), len(histories), sharex=True, sharey="row", squeeze=False)
    for column, (name, records) in enumerate(histories.items()):
        records = smallest_scale_records(records)
        trained = [record for record in records if record["step"] > 0]
        onset = first_interpolating_fraction(trained, max_steps[name])
        for row, (panel, tags) in enumerate(panels.items()):
            axes = grid[row][column]
            for tag in tags:
                steps, values = median_history(trained, tag)
                if values.size:
                    axes.plot(steps / max_steps[name], values, label=curve_label(tag), linewidth=1.4)
            if panel != "Accuracy":
                axes.set_yscale("log", nonpositive="mask")
            axes.set_xscale("log")
            if onset is not None:
                axes.axvline(onset, color="grey", linestyle=":", linewidth=1)
            axes.grid(True, which="major", alpha=0.3)
            if row == 0:
                axes.set_title(column_title(name, records), fontsize="medium")
            if column == 0:
                axes.set_ylabel(panel)
            if row == len(panels) - 1:
                axes.set_xlabel("fraction of training (step / max_steps)")
            if any(not line.get_label().startswith("_") for line in axes.lines):
                axes.legend(fontsize=8, loc="best")
    grid[-1][0].set_ylim(-0.02, 1.02)
    note = "dotted: first evaluation with 100% training accuracy; zeros (e.g. NC4 = 0) are not drawn on log axes"
    figure.suptitle(f"Collapse during training ({title})\n" + textwrap.fill(note, 60 * len(histories)), fontsize=11)
    return figure
