"""Paper figures from ``metrics.jsonl`` records: Figure 1 (SNC1–SNC3), Figure 2 (distance to S), scaling.

Pure functions: they take the collapse monitor's records (one dict per evaluation and replica, see
:mod:`ufm_torch.run_folder.metrics_log`) and return figures; nothing here touches a trainer or pyplot's global
state. Figures are plain :class:`~matplotlib.figure.Figure` objects rendered by the Agg canvas when
saved, so they work under any backend. One colour per init scale ε, one thin line per replica
(seed/copy), log-scaled errors against the iteration count on a symmetric-log axis (linear on
[0, 1], so the initialisation, step 0, is shown).
Reference: D. G. Mixon, H. Parshall, J. Pi, "Neural collapse with unconstrained features",
Figures 1 and 2.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ufm_torch.analysis.records import as_float, final_records
from ufm_torch.analysis.summary import loglog_fit
from ufm_torch.metrics.tags import SNC_TAGS
from ufm_torch.theory import gradient_descent_snc3_error, theorem2_snc3_error

SNC1, SNC2, SNC3, DIST_S = SNC_TAGS

PANEL_TEXT = {
    SNC1: ("(SNC1) error", r"$\|WW^\top - \sqrt{N}\,(I_C - \frac{1}{C}1_C1_C^\top)\|_F$"),
    SNC2: ("(SNC2) relative error", r"$\|H - \frac{1}{\sqrt{N}}(W \otimes 1_N)^\top\|_F \,/\, \|H\|_F$"),
    SNC3: ("(SNC3) error", r"$\|b - \frac{1}{C}1_C\|_2$"),
    DIST_S: ("Relative distance to $S$", r"$\|Z - \Pi_S Z\|_E \,/\, \|Z\|_E$"),
}
ITERATION_LABEL = "gradient descent iteration $k$"
INIT_SCALE = r"init scale $\|H_0\|_F = \|W_0\|_F$"


@dataclass(frozen=True)
class RunSetup:
    """The run's constants shown in titles and used by theory overlays: C, N, p and the step size η."""

    num_classes: int
    samples_per_class: int
    feature_dim: int
    lr: float

    def describe(self) -> str:
        """``C = 3, N = 3, p = 15, η = 0.05`` for figure titles."""
        return (
            f"$C = {self.num_classes}$, $N = {self.samples_per_class}$, "
            f"$p = {self.feature_dim}$, $\\eta = {self.lr:g}$"
        )


@dataclass(frozen=True)
class TheoryCurve:
    """A predicted curve ``values`` at iterations ``steps``, drawn dashed over the panel of ``metric``."""

    metric: str
    label: str
    steps: np.ndarray
    values: np.ndarray
    linestyle: str = "--"
    color: str = "black"


def replica_histories(
    records: Iterable[Mapping[str, Any]], metric: str
) -> dict[float, list[tuple[np.ndarray, np.ndarray]]]:
    """Per init scale ε (largest first): one ``(steps, values)`` pair per replica, sorted by step.

    Replicas are told apart by the record's ``replica`` index; missing or ``None`` values become NaN.
    """
    series: dict[tuple[float, int], list[tuple[int, float]]] = defaultdict(list)
    for record in records:
        series[(float(record["init_scale"]), int(record["replica"]))].append(
            (int(record["step"]), as_float(record.get(metric)))
        )
    histories: dict[float, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for (scale, _), points in sorted(series.items(), key=lambda item: (-item[0][0], item[0][1])):
        points.sort()
        histories[scale].append(
            (np.array([s for s, _ in points]), np.array([v for _, v in points], dtype=np.float64))
        )
    return dict(histories)


def scale_label(init_scale: float) -> str:
    """Legend text for an init scale: ``ε = 10^{-3}`` for powers of ten, ``ε = 0.5`` otherwise."""
    exponent = math.log10(init_scale)
    if math.isclose(exponent, round(exponent), abs_tol=1e-9):
        return rf"$\varepsilon = 10^{{{round(exponent)}}}$"
    return rf"$\varepsilon = {init_scale:g}$"


def scale_colours(init_scales: Sequence[float]) -> dict[float, Any]:
    """One colour per init scale, from dark (largest ε) to light (smallest ε) along ``plasma``."""
    ordered = sorted(set(init_scales), reverse=True)
    positions = np.linspace(0.0, 0.85, len(ordered)) if len(ordered) > 1 else np.zeros(1)
    return {scale: colormaps["plasma"](float(x)) for scale, x in zip(ordered, positions, strict=True)}


def snc3_theory_curves(setup: RunSetup, max_step: int) -> list[TheoryCurve]:
    """SNC3 predictions near the origin for iterations ``0 … max_step`` (Mixon et al., Theorem 2).

    Gradient descent on the linearised system: ``|1 − ηCN|^k/√C``
    (:func:`ufm_torch.theory.gradient_descent_snc3_error`); gradient flow at time ``t = ηk``:
    ``e^{−CNηk}/√C`` (:func:`ufm_torch.theory.theorem2_snc3_error`). Both are exact on ``S`` and
    ignore the drift ``WH1_{CN}`` of the bias gradient off ``S``.
    """
    early = np.arange(min(max_step, 100) + 1)
    steps = np.unique(np.concatenate([early, np.geomspace(1, max(max_step, 1), 400).round()]))
    C, N, lr = setup.num_classes, setup.samples_per_class, setup.lr
    descent = gradient_descent_snc3_error(steps, lr, C, N).numpy()
    flow = theorem2_snc3_error(lr * steps, C, N).numpy()
    return [
        TheoryCurve(SNC3, r"GD near origin (Thm 2): $|1 - \eta CN|^k/\sqrt{C}$", steps, descent, "--"),
        TheoryCurve(SNC3, r"gradient flow (Thm 2): $e^{-CN\eta k}/\sqrt{C}$", steps, flow, ":", "dimgray"),
    ]


def _positive(values: np.ndarray) -> np.ndarray:
    """``values`` with non-positive and non-finite entries replaced by NaN (gaps on a log axis)."""
    return np.where(np.isfinite(values) & (values > 0), values, np.nan)


def _positive_mean(values: np.ndarray) -> float:
    """Mean of the positive finite entries of ``values``; NaN when there are none."""
    kept = values[np.isfinite(values) & (values > 0)]
    return float(kept.mean()) if kept.size else math.nan


def _data_limits(histories: Mapping[float, list[tuple[np.ndarray, np.ndarray]]]) -> tuple[float, float] | None:
    """Log-axis limits with a margin around every positive measured value, or None if there are none."""
    values = np.concatenate([_positive(v) for runs in histories.values() for _, v in runs] or [np.array([])])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = float(values.min()), float(values.max())
    return low / 3.0, high * 3.0


def _style_axes(axes: Axes, title: str, ylabel: str) -> None:
    """Log y, symmetric-log iterations (step 0 visible), grid and labels."""
    axes.set_yscale("log")
    axes.set_xscale("symlog", linthresh=1.0, linscale=0.4)
    axes.set_xlim(left=0)
    axes.set_title(title)
    axes.set_xlabel(ITERATION_LABEL)
    axes.set_ylabel(ylabel)
    axes.grid(True, which="major", alpha=0.3)
    axes.grid(True, which="minor", axis="y", alpha=0.1)


def draw_metric_panel(
    axes: Axes,
    records: Sequence[Mapping[str, Any]],
    metric: str,
    colours: Mapping[float, Any],
    theory: Sequence[TheoryCurve] = (),
) -> list[Line2D]:
    """Draw ``metric`` against iteration on ``axes``: thin lines per replica, dashed theory overlays.

    The y-range follows the measurements, so a theory curve that falls far below them leaves the
    panel rather than squashing the data. Returns the theory lines (for a legend).
    """
    histories = replica_histories(records, metric)
    for scale, runs in histories.items():
        for steps, values in runs:
            axes.plot(steps, _positive(values), color=colours[scale], linewidth=0.8, alpha=0.75)
    theory_lines = []
    for curve in theory:
        if curve.metric == metric:
            (line,) = axes.plot(
                curve.steps, _positive(np.asarray(curve.values, dtype=np.float64)),
                linestyle=curve.linestyle, color=curve.color, linewidth=1.6, label=curve.label,
            )
            theory_lines.append(line)
    title, ylabel = PANEL_TEXT.get(metric, (metric, metric))
    _style_axes(axes, title, ylabel)
    limits = _data_limits(histories)
    if limits is not None:
        axes.set_ylim(*limits)
    return theory_lines


def _scale_handles(colours: Mapping[float, Any]) -> list[Line2D]:
    """Legend entries, one per init scale, largest first."""
    return [Line2D([], [], color=colour, linewidth=2.0, label=scale_label(scale)) for scale, colour in colours.items()]


def figure1(
    records: Sequence[Mapping[str, Any]],
    setup: RunSetup | None = None,
    theory: Sequence[TheoryCurve] = (),
) -> Figure:
    """Figure 1 of Mixon et al.: (SNC1) error, (SNC2) relative error and (SNC3) error against iteration.

    Left ``‖WWᵀ − √N(I_C − 1_C1_Cᵀ/C)‖_F``, middle ``‖H − (1/√N)(W ⊗ 1_N)ᵀ‖_F/‖H‖_F``, right
    ``‖b − 1_C/C‖₂``; one colour per ε, one thin line per replica, ``theory`` curves dashed on the
    panel of their metric. ``setup`` (C, N, p, η) goes into the title.
    """
    records = list(records)
    colours = scale_colours([float(record["init_scale"]) for record in records])
    figure = Figure(figsize=(15.5, 4.6), layout="constrained")
    axes = figure.subplots(1, 3)
    theory_lines: list[Line2D] = []
    for panel, metric in zip(axes, (SNC1, SNC2, SNC3), strict=True):
        theory_lines += draw_metric_panel(panel, records, metric, colours, theory)
    figure.legend(
        handles=_scale_handles(colours) + theory_lines, loc="outside right center", frameon=False,
        title=INIT_SCALE, fontsize="small",
    )
    details = f" ({setup.describe()})" if setup else ""
    figure.suptitle(f"Emergence of strong neural collapse under gradient descent{details}")
    return figure


def figure2(records: Sequence[Mapping[str, Any]], setup: RunSetup | None = None) -> Figure:
    """Figure 2 of Mixon et al.: relative distance ``‖Z − Π_S Z‖_E/‖Z‖_E`` to ``S`` against iteration.

    ``‖(H, W, b)‖²_E = ‖H‖²_F + ‖W‖²_F + ‖b‖²₂``; one colour per ε, one thin line per replica.
    """
    records = list(records)
    colours = scale_colours([float(record["init_scale"]) for record in records])
    figure = Figure(figsize=(8.5, 4.6), layout="constrained")
    axes = figure.subplots()
    draw_metric_panel(axes, records, DIST_S, colours)
    details = f" ({setup.describe()})" if setup else ""
    axes.set_title(f"Relative distance to the invariant subspace $S${details}", fontsize="medium")
    figure.legend(
        handles=_scale_handles(colours), loc="outside right center", frameon=False, fontsize="small", title=INIT_SCALE
    )
    figure.suptitle("Gradient descent stays close to the invariant subspace $S$")
    return figure


def save_figure(figure: Figure, path: str | Path, dpi: int = 150) -> Path:
    """Write ``figure`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    return path


SCALING_STYLE = {
    SNC1: ("SNC1 error", "o", "tab:blue"),
    SNC2: ("SNC2 relative error", "s", "tab:orange"),
    SNC3: ("SNC3 error", "^", "tab:green"),
    DIST_S: ("relative distance to $S$", "D", "tab:red"),
}


def scaling_figure(records: Sequence[Mapping[str, Any]], setup: RunSetup | None = None) -> Figure:
    """Final SNC errors and distance to ``S`` against the init scale ε, log-log, with fitted power laws.

    One marker per replica at its last step, the mean per ε joined by a line, and the least-squares line
    ``log10 error ≈ a log10 ε + c`` (:func:`ufm_torch.analysis.summary.loglog_fit`) dashed, its slope ``a`` in the
    legend: the paper's claim that the limit point approaches strong collapse as ε → 0 (Figure 1), made
    quantitative.
    """
    finals = final_records(records)
    figure = Figure(figsize=(7.5, 5.0), layout="constrained")
    axes = figure.subplots()
    for metric, (label, marker, colour) in SCALING_STYLE.items():
        scales = np.array([float(record["init_scale"]) for record in finals])
        values = np.array([as_float(record.get(metric)) for record in finals])
        slope, intercept = loglog_fit(scales, values)
        if math.isnan(slope):
            continue
        levels = sorted(set(scales.tolist()))
        means = [_positive_mean(values[scales == level]) for level in levels]
        axes.scatter(scales, _positive(values), marker=marker, color=colour, s=14, alpha=0.45, linewidths=0)
        power_law = f"{label} $\\propto \\varepsilon^{{{slope:.2f}}}$"
        axes.plot(levels, means, marker=marker, color=colour, linewidth=1.2, label=power_law)
        axes.plot(levels, 10 ** (intercept + slope * np.log10(levels)), "--", color=colour, linewidth=0.9)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(r"init scale $\varepsilon = \|H_0\|_F = \|W_0\|_F$")
    axes.set_ylabel("error at the last iteration")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(fontsize="small", title="mean over seeds (dots: each seed), dashed: fit", title_fontsize="small")
    details = f"\n{setup.describe()}" if setup else ""
    figure.suptitle(f"Final distance from strong neural collapse against the init scale{details}")
    return figure
