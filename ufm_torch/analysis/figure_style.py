"""What the collapse and sweep figures draw alike: one y-scale per metric family, log axes for errors with zeros
marked at the axis floor, a line style per loss, and legends outside the data.

A figure first gathers every value it will draw per metric (:func:`value_scales`), so all panels of one family
(NC, strong collapse, distances to the optimum, losses, accuracies) share one scale and one range, then draws each
series with :func:`plot_values`, which on a log axis puts the values that are zero (or below it by round-off, such as
a loss gap of −1e-16) as hollow ▽ at the floor instead of leaving them out or falling back to a linear axis.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.textpath import TextToPath

from ufm_torch.metrics.tags import COLLAPSE, OPTIMUM, STRONG_COLLAPSE
from ufm_torch.models import BACKBONE_DEFAULT_LOSS, UFM_DEFAULT_LOSS

ACCURACY = "accuracy"
LOSS = "loss"
LOG_FAMILIES = (COLLAPSE, STRONG_COLLAPSE, OPTIMUM, LOSS)
"""Families of non-negative errors: always on a log axis, whatever their values."""
ACCURACY_LIMITS = (-0.02, 1.02)
MIN_DECADES = 1.0
"""The least span of a log axis: a few percent of change never fills a panel."""
ZEROS_GID = "zeros"
"""The ``gid`` of the markers of zero values (at the axis floor), for tests and readers of the figure."""
ZERO_MARKER = "v"
ZERO_LABEL = "zero (or below, by round-off): at the axis floor"
LOSS_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))
"""(line style, marker) of each loss, in sorted order of the loss names."""
UNKNOWN_LOSS = ""
TITLE_SIZE = 11.0
LEGEND_HANDLE_EMS = 3.0
"""Handle length, pad between handle and text, and border pad of a legend, in font sizes."""
LEGEND_PAD_INCHES = 0.25
TEXT_PATHS = TextToPath()
WORDS = re.compile(r"(?:[^\s$]*\$[^$]*\$)+[^\s$]*|\S+")
"""A title's words: a mathtext span ``$…$`` with what touches it is one word."""


def metric_family(tag: str) -> str:
    """The family whose y-scale ``tag`` shares: ``accuracy`` and ``loss`` by name (``train/accuracy``,
    ``heldout/accuracy``, ``train/loss``), the group of a collapse, strong collapse or optimum tag, else the tag."""
    group, _, name = tag.rpartition("/")
    if name in (ACCURACY, LOSS):
        return name
    return group if group in (COLLAPSE, STRONG_COLLAPSE, OPTIMUM) else tag


@dataclass(frozen=True)
class ValueScale:
    """A y-axis: log (zero and negative values drawn at ``floor``, the bottom limit) or linear, with its limits."""

    log: bool
    limits: tuple[float, float]

    @property
    def floor(self) -> float:
        """The bottom of the axis, where a log axis marks its zeros."""
        return self.limits[0]

    def apply(self, axes: Axes) -> None:
        """Set this scale and these limits on ``axes``."""
        axes.set_yscale("log" if self.log else "linear")
        axes.set_ylim(*self.limits)


def value_scale(family: str, values: Iterable[float]) -> ValueScale:
    """The scale of a family from all its values: accuracies linear on [0, 1]; errors (and any family without
    negative values) log over the positive values, at least :data:`MIN_DECADES` wide, with room below for the zero
    markers; a family with negative values (none of the package's) linear."""
    finite = np.array([value for value in values if math.isfinite(value)], dtype=np.float64)
    if family == ACCURACY:
        return ValueScale(False, ACCURACY_LIMITS)
    if family in LOG_FAMILIES or finite.size == 0 or finite.min() >= 0:
        positive = finite[finite > 0]
        low, high = (math.log10(positive.min()), math.log10(positive.max())) if positive.size else (-1.0, 0.0)
        if high - low < MIN_DECADES:
            centre = (low + high) / 2
            low, high = centre - MIN_DECADES / 2, centre + MIN_DECADES / 2
        pad = max(0.05 * (high - low), 0.1)
        zeros_room = pad if bool((finite <= 0).any()) else 0.0
        return ValueScale(True, (10 ** (low - pad - zeros_room), 10 ** (high + pad)))
    low, high = float(finite.min()), float(finite.max())
    pad = 0.05 * (high - low) if high > low else max(abs(high), 1.0) * 0.05
    return ValueScale(False, (low - pad, high + pad))


def value_scales(values_by_metric: Mapping[str, Iterable[float]]) -> dict[str, ValueScale]:
    """The scale of each metric: one per family (:func:`metric_family`), decided by the values of all its metrics."""
    pooled: dict[str, list[float]] = defaultdict(list)
    for tag, values in values_by_metric.items():
        pooled[metric_family(tag)].extend(values)
    scales = {family: value_scale(family, values) for family, values in pooled.items()}
    return {tag: scales[metric_family(tag)] for tag in values_by_metric}


def plot_values(axes: Axes, xs: Sequence[float], ys: Sequence[float], scale: ValueScale, **style: Any) -> None:
    """``ys`` against ``xs`` with ``style`` (``Axes.plot`` keywords); on a log scale the values ≤ 0 leave a gap in
    the line and are marked as hollow ▽ at the floor (``gid`` :data:`ZEROS_GID`), in the series' colour."""
    xs_array, ys_array = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if scale.log:
        below = np.isfinite(ys_array) & (ys_array <= 0)
        if below.any():
            axes.plot(
                xs_array[below], np.full(int(below.sum()), scale.floor), linestyle="none", marker=ZERO_MARKER,
                markerfacecolor="none", color=style.get("color"), markersize=5, clip_on=False, zorder=3,
                gid=ZEROS_GID,
            )  # fmt: skip
        ys_array = np.where(below, np.nan, ys_array)
    axes.plot(xs_array, ys_array, **style)


def zero_handle() -> Line2D:
    """The legend entry of the zero markers."""
    return Line2D([], [], linestyle="none", marker=ZERO_MARKER, markerfacecolor="none", color="black",
                  label=ZERO_LABEL)  # fmt: skip


def draws_zeros(figure: Figure) -> bool:
    """Whether some panel of ``figure`` marks zeros at its floor."""
    return any(line.get_gid() == ZEROS_GID for axes in figure.axes for line in axes.lines)


def outside_legend(figure: Figure, handles: Sequence[Any], title: str | None = None) -> Legend | None:
    """A legend right of every panel (the figure needs ``layout="constrained"``), with the zero marker's entry when
    the figure has zeros; None without entries."""
    handles = list(handles) + ([zero_handle()] if draws_zeros(figure) else [])
    if not handles:
        return None
    return figure.legend(handles=handles, loc="outside right upper", fontsize="small", frameon=False, title=title,
                         title_fontsize="small")  # fmt: skip


def panel_title(tag: str) -> str:
    """A panel's title: ``nc1`` for ``collapse/nc1`` (collapse, strong collapse and optimum tags), the whole tag for
    the others (``train/accuracy`` and ``heldout/accuracy`` stay apart)."""
    group, _, name = tag.rpartition("/")
    return name if group in (COLLAPSE, STRONG_COLLAPSE, OPTIMUM) else tag


def text_width(text: str, size: float) -> float:
    """The width in inches of ``text`` at ``size`` points (mathtext when it holds ``$``), measured without drawing."""
    properties = FontProperties(size=size)
    has_math = text.count("$") >= 2 and text.count("$") % 2 == 0
    return TEXT_PATHS.get_text_width_height_descent(text, properties, ismath=has_math)[0] / 72


def wrapped(text: str, width: float, size: float) -> str:
    """``text`` with each line broken between words (never inside ``$…$``) so that no line is wider than ``width``
    inches, or holds one word."""
    lines = []
    for paragraph in text.splitlines():
        line = ""
        for word in WORDS.findall(paragraph):
            candidate = f"{line} {word}" if line else word
            if line and text_width(candidate, size) > width:
                lines.append(line)
                candidate = word
            line = candidate
        lines.append(line)
    return "\n".join(lines)


def legend_width(legend: Legend | None) -> float:
    """The width in inches of a legend of :func:`outside_legend` (its widest entry or title, handle and padding)."""
    if legend is None:
        return 0.0
    size = legend.get_texts()[0].get_fontsize() if legend.get_texts() else 10.0
    entries = [text_width(entry.get_text(), size) + LEGEND_HANDLE_EMS * size / 72 for entry in legend.get_texts()]
    title = legend.get_title().get_text()
    return max([*entries, text_width(title, size) if title else 0.0]) + LEGEND_PAD_INCHES


def set_title(figure: Figure, text: str, legend: Legend | None) -> None:
    """``text`` as the figure's title, centred over the panels and wrapped to end left of ``legend`` (in the right
    margin), so the legend never covers it."""
    width = figure.get_figwidth() - legend_width(legend) - LEGEND_PAD_INCHES
    figure.suptitle(wrapped(text, width, TITLE_SIZE), x=width / 2 / figure.get_figwidth(), fontsize=TITLE_SIZE)


def loss_styles(losses: Iterable[str]) -> dict[str, tuple[str, str]]:
    """A (line style, marker) per loss: solid ○, dashed □, dotted △, dash-dot ◇ in sorted order of the names."""
    return {loss: LOSS_STYLES[i % len(LOSS_STYLES)] for i, loss in enumerate(sorted(set(losses)))}


def loss_handles(styles: Mapping[str, tuple[str, str]], lines: bool = True, markers: bool = True) -> list[Line2D]:
    """Legend entries of the losses (black), when there is more than one: line style and marker, or one of them."""
    if len(styles) < 2:
        return []
    return [
        Line2D([], [], color="black", linestyle=linestyle if lines else "none", marker=marker if markers else None,
               markersize=5, label=f"loss: {loss or 'unknown'}")
        for loss, (linestyle, marker) in styles.items()
    ]  # fmt: skip


def loss_name(config: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """The loss a run trained with: its ``module.loss``, or when null the network's default
    (:data:`~ufm_torch.models.UFM_DEFAULT_LOSS` for a UFM, told by its records' init scales;
    :data:`~ufm_torch.models.BACKBONE_DEFAULT_LOSS` for a backbone)."""
    loss = (config.get("module") or {}).get("loss")
    if isinstance(loss, str) and loss and not loss.startswith("${"):
        return loss
    if loss is None and records:
        ufm = all(record.get("init_scale") is not None for record in records)
        return UFM_DEFAULT_LOSS if ufm else BACKBONE_DEFAULT_LOSS
    return UNKNOWN_LOSS
