"""The law of data separation layer by layer (He & Su, PNAS 2023): log10 NC1 and log10 CDNV against depth.

He & Su measure the separation fuzziness D_l = Tr(Σ_W^l (Σ_B^l)⁺) of the features of layer l and find that a well
trained deep network separates the classes at a constant geometric rate, log D_l ≈ −ρ·l + c. The monitor's
``collapse/nc1`` is D_l / C, so log10 NC1 against l is a line whose slope is the law's −ρ/ln 10 in log10 units per
layer (the 1/C only moves the intercept). ``collapse/cdnv`` (Galanti, György & Hutter 2022) is drawn beside it.

The layers of a run are the ``layer`` fields of its every-layer records (``metrics.jsonl``), in the order the
monitor writes them: the classifier's input (the main layer, the first record's) comes first there and is put last
here, as l = L; the others keep the order of ``callbacks.collapse_monitor.layers``, which should list them by depth.

- :func:`data_separation_fit`: the least-squares line of log10 values against layer indices, with R².
- :func:`layerwise_figure`: two panels, one line per chosen step (:func:`chosen_steps`, a sequential colormap), the
  fit at the last step dashed, the held-out split dotted in the NC1 panel.
- :func:`layerwise_fits` and :func:`write_layerwise_table`: the slope, intercept, ρ and R² at every evaluation
  (``figures/layerwise.csv``), and the printed table of the figure's steps.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ufm_torch.analysis.records import as_float
from ufm_torch.metrics.tags import metric_tag

NC1_TAG = metric_tag("nc1")
CDNV_TAG = metric_tag("cdnv")
PANELS = ((NC1_TAG, r"$\log_{10}$ NC1 $= \log_{10}(D_l / C)$"), (CDNV_TAG, r"$\log_{10}$ CDNV"))
TRAIN, HELDOUT = "train", "heldout"
PLOTTED_STEPS = 5
"""How many training steps the figure draws: step 0, the last, and some between, spread over log(step)."""
FIT_GID = "data_separation_fit"
"""The ``gid`` of the dashed fitted lines, for tests and readers of the figure."""
COLORMAP = "viridis"
CSV_COLUMNS = ("step", "split", "metric", "layers", "slope", "intercept", "rho", "r2")
LAYERWISE_CSV = "layerwise.csv"


def data_separation_fit(layer_indices: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit ``log10 value ≈ slope · l + intercept`` over the layers ``l`` with a positive finite value,
    and its coefficient of determination R² = 1 − SS_res / SS_tot (He & Su 2023, log D_l ≈ −ρ·l + c, so ρ =
    −slope · ln 10).

    ``(slope, intercept, r2)``; NaN for all three with fewer than two usable layers, R² = 1 when the usable values
    are all equal (the line fits them exactly).
    """
    pairs = [(float(l), math.log10(v)) for l, v in zip(layer_indices, values, strict=True)
             if v is not None and math.isfinite(v) and v > 0]  # fmt: skip
    if len({l for l, _ in pairs}) < 2:
        return math.nan, math.nan, math.nan
    x, y = np.array(pairs).T
    slope, intercept = np.polyfit(x, y, 1)
    residual = float(np.sum((y - (slope * x + intercept)) ** 2))
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 if total == 0 else 1.0 - residual / total
    return float(slope), float(intercept), r2


def layer_order(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The measured layers by depth: the order of first appearance, with the main layer (the first record's, the
    classifier's input) moved last."""
    names = list(dict.fromkeys(str(record.get("layer")) for record in records))
    return names[1:] + names[:1]


def layer_values(records: Sequence[Mapping[str, Any]], tag: str, split: str) -> dict[int, dict[str, float]]:
    """``{step: {layer: value}}`` of ``tag`` on ``split``, the median over replicas (NaN for undefined values)."""
    gathered: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if (record.get("split") or TRAIN) == split:
            gathered[int(record["step"])][str(record.get("layer"))].append(as_float(record.get(tag)))
    return {step: {layer: float(np.nanmedian(values)) if not all(map(math.isnan, values)) else math.nan
                   for layer, values in layers.items()}
            for step, layers in sorted(gathered.items())}  # fmt: skip


def chosen_steps(steps: Sequence[int], count: int = PLOTTED_STEPS) -> list[int]:
    """About ``count`` of ``steps``: the first, the last, and between them the steps nearest to points spread evenly
    over log(step) (the monitor evaluates on a geometric schedule)."""
    steps = sorted(set(steps))
    if len(steps) <= count:
        return steps
    positive = [step for step in steps if step > 0]
    between = count - 1 - (steps[0] == 0)
    targets = np.geomspace(positive[0], positive[-1], between + 2)[1:-1]
    picked = {steps[0], steps[-1]} | {min(positive, key=lambda s: abs(math.log(s / t))) for t in targets}
    return sorted(picked)


@dataclass(frozen=True)
class LayerwiseFit:
    """The fit of :func:`data_separation_fit` to one metric of one split at one step."""

    step: int
    split: str
    metric: str
    layers: int
    slope: float
    intercept: float
    r2: float

    @property
    def rho(self) -> float:
        """He & Su's ρ in log D_l ≈ −ρ·l + c (natural log): −slope · ln 10."""
        return -self.slope * math.log(10)


def fits_of(records: Sequence[Mapping[str, Any]], tag: str, split: str) -> list[LayerwiseFit]:
    """The fit of ``tag`` on ``split`` against the layer index l = 1 … L at every evaluation step."""
    order = layer_order(records)
    fits = []
    for step, by_layer in layer_values(records, tag, split).items():
        indices = [index for index, layer in enumerate(order, 1) if layer in by_layer]
        values = [by_layer[order[index - 1]] for index in indices]
        fits.append(LayerwiseFit(step, split, tag, len(indices), *data_separation_fit(indices, values)))
    return fits


def layerwise_fits(records: Sequence[Mapping[str, Any]]) -> list[LayerwiseFit]:
    """Every fit the figure's data hold: NC1 and CDNV on the training split, NC1 on the held-out split when
    measured, at every evaluation step."""
    fits = fits_of(records, NC1_TAG, TRAIN) + fits_of(records, CDNV_TAG, TRAIN) + fits_of(records, NC1_TAG, HELDOUT)
    return sorted(fits, key=lambda fit: fit.step)


def format_fits_csv(fits: Sequence[LayerwiseFit]) -> str:
    """``figures/layerwise.csv``: one row per step, split and metric (:data:`CSV_COLUMNS`; NaN as an empty cell)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for fit in fits:
        numbers = (fit.slope, fit.intercept, fit.rho, fit.r2)
        writer.writerow([fit.step, fit.split, fit.metric, fit.layers, *("" if math.isnan(v) else f"{v:.6g}"
                                                                         for v in numbers)])  # fmt: skip
    return buffer.getvalue()


def format_fits_table(fits: Sequence[LayerwiseFit], steps: Sequence[int]) -> str:
    """The fits of the training split at ``steps`` as aligned text, for the printed report."""
    rows = [("step", "NC1 slope", "NC1 R²", "CDNV slope", "CDNV R²")]
    by_key = {(fit.step, fit.metric): fit for fit in fits if fit.split == TRAIN}
    for step in steps:
        cells = [str(step)]
        for tag in (NC1_TAG, CDNV_TAG):
            fit = by_key.get((step, tag))
            cells += [f"{fit.slope:+.3f}", f"{fit.r2:.3f}"] if fit else ["", ""]
        rows.append(tuple(cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)


def write_layerwise_table(records: Sequence[Mapping[str, Any]], path: Path) -> str:
    """Write every fit (:func:`layerwise_fits`) to ``path`` as CSV (parent folders created); returns the printed
    table of the training split at the figure's steps (:func:`format_fits_table`)."""
    fits = layerwise_fits(records)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_fits_csv(fits))
    return format_fits_table(fits, chosen_steps([fit.step for fit in fits]))


def fit_label(fit: LayerwiseFit) -> str:
    """The legend entry of a fitted line: its step, slope per layer and R²."""
    return f"fit at step {fit.step}: slope {fit.slope:+.3f} per layer, $R^2$ = {fit.r2:.3f}"


def layerwise_figure(records: Sequence[Mapping[str, Any]], setting: str = "") -> Figure:
    """log10 NC1 and log10 CDNV against the layer index l = 1 … L (module docstring) from every-layer records
    (:func:`ufm_torch.run_folder.metrics_log.read_records` with ``every_layer=True``).

    One solid line per chosen step (:func:`chosen_steps`), coloured by step; the held-out split's NC1 dotted in the
    same colours; the least-squares fit at the last step dashed, its slope and R² in each panel's legend, below it.
    """
    order = layer_order(records)
    indices = np.arange(1, len(order) + 1)
    train = {tag: layer_values(records, tag, TRAIN) for tag, _ in PANELS}
    heldout = layer_values(records, NC1_TAG, HELDOUT)
    steps = chosen_steps(list(train[NC1_TAG]))
    colours = colormaps[COLORMAP](np.linspace(0.0, 0.85, max(len(steps), 2)))
    figure = Figure(figsize=(11.0, 5.2), layout="constrained")
    for axes, (tag, title) in zip(figure.subplots(1, len(PANELS)), PANELS, strict=True):
        for step, colour in zip(steps, colours, strict=False):
            values = [train[tag][step].get(layer, math.nan) for layer in order]
            axes.plot(indices, log10_values(values), "o-", color=colour, markersize=4, label=f"step {step}")
            if tag == NC1_TAG and step in heldout:
                held = [heldout[step].get(layer, math.nan) for layer in order]
                axes.plot(indices, log10_values(held), ":", color=colour, linewidth=1.2)
        if tag == NC1_TAG and heldout:
            axes.plot([], [], ":", color="grey", label="held-out split (same colours)")
        final = fits_of(records, tag, TRAIN)[-1] if train[tag] else None
        if final is not None and not math.isnan(final.slope):
            axes.plot(indices, final.slope * indices + final.intercept, "--", color="black", linewidth=1.2,
                      gid=FIT_GID, label=fit_label(final))  # fmt: skip
        axes.set_title(title)
        axes.set_xlabel(f"layer $l$ (the classifier's input is $l = {len(order)}$)")
        axes.set_ylabel(title)
        axes.set_xticks(indices)
        axes.grid(alpha=0.3)
        axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize="small", frameon=False, ncols=2)
    law = r"Law of data separation (He & Su 2023): $\log D_l \approx -\rho\, l + c$"
    figure.suptitle(law + (f", {setting}" if setting else ""))
    return figure


def log10_values(values: Sequence[float]) -> np.ndarray:
    """log10 of each value; NaN where it is undefined or not positive (a gap in the line)."""
    array = np.asarray(values, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(array > 0, np.log10(np.where(array > 0, array, 1.0)), math.nan)
