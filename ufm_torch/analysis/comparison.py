"""Backbone against UFM: train both with the same C, N and p, then draw their collapse metrics side by side.

A comparison config (``experiment=compare_digits``) is an ordinary backbone config plus a
``comparison.ufm`` node holding the UFM's ``data``, ``model`` and ``optimizer`` (which replace the
backbone's) and any ``module``, ``trainer`` or ``callbacks`` keys (merged into the backbone's). Each
model trains with :func:`ufm_torch.cli.train.build_and_fit` in its own subfolder of the run folder
(``backbone/``, ``ufm/``); ``figures/compare.png`` shows every collapse metric of both against the
fraction of training done (Papyan, Han & Donoho 2020, NC1–NC4; Mixon et al., SNC1–SNC3 and Figure 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from ufm_torch.analysis.paper_figures import save_figure
from ufm_torch.cli.validation import validate_config
from ufm_torch.run_folder.metrics_log import read_metrics

RUNS = {"backbone": "Backbone", "ufm": "Unconstrained features model"}
REPLACED_GROUPS = ("data", "model", "optimizer")
PANELS = {
    "Neural collapse": ["collapse/nc1", "collapse/nc2_etf", "collapse/nc3", "collapse/nc4"],
    "Strong neural collapse": [
        "strong_collapse/snc1",
        "strong_collapse/snc2",
        "strong_collapse/snc3",
        "strong_collapse/dist_S",
    ],
    "Accuracy": ["train/accuracy", "heldout/accuracy"],
}
LOG_PANELS = ("Neural collapse", "Strong neural collapse")


def comparison_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """The backbone's config (``cfg`` without ``comparison``) and the UFM's, each with its own ``run_dir``.

    ``comparison.ufm`` is resolved against ``cfg`` first, so ``${data.num_classes}`` there means the
    backbone's C: both models see the same C, N and p.
    """
    run_dir = Path(cfg.run_dir)
    shared = OmegaConf.to_container(cfg, resolve=False)
    shared.pop("comparison")
    ufm_node = OmegaConf.to_container(cfg.comparison.ufm, resolve=True)
    configs = {name: OmegaConf.create(shared) for name in RUNS}
    for key, node in ufm_node.items():
        configs["ufm"][key] = node if key in REPLACED_GROUPS else OmegaConf.merge(configs["ufm"][key], node)
    for name, config in configs.items():
        config.run_dir = str(run_dir / name)
    return configs


def run_comparison(cfg: DictConfig, fit: Callable[[DictConfig], dict[str, Any]]) -> dict[str, Any]:
    """Validate both configs, train the backbone then the UFM with ``fit``, and draw ``figures/compare.png``.

    ``fit`` trains one config and returns its final logged metrics (:func:`ufm_torch.cli.train.build_and_fit`).
    Returns the final metrics of both runs, keys prefixed ``backbone/`` and ``ufm/``.
    """
    configs = comparison_configs(cfg)
    for config in configs.values():
        validate_config(config)
    metrics: dict[str, Any] = {}
    for name, config in configs.items():
        metrics |= {f"{name}/{key}": value for key, value in fit(config).items()}
    histories = {name: read_metrics(Path(config.run_dir) / "metrics.jsonl") for name, config in configs.items()}
    lengths = {name: int(config.trainer.max_steps) for name, config in configs.items()}
    save_figure(comparison_figure(histories, lengths, describe(cfg)), Path(cfg.run_dir) / "figures" / "compare.png")
    return metrics


def describe(cfg: DictConfig) -> str:
    """``C = 10, N = 50, p = 32`` for the figure title."""
    return f"$C = {cfg.data.num_classes}$, $N = {cfg.data.samples_per_class}$, $p = {cfg.model.feature_dim}$"


def curve_label(tag: str) -> str:
    """Legend entry of a metric: ``nc1`` for ``collapse/nc1``, the whole tag otherwise."""
    group, _, name = tag.partition("/")
    return name if group in ("collapse", "strong_collapse") else tag


def first_interpolating_fraction(records: Sequence[Mapping[str, Any]], max_steps: int) -> float | None:
    """Fraction of training at the first evaluation with 100% training accuracy (the terminal phase starts)."""
    steps = [record["step"] for record in records if record.get("train/accuracy") == 1.0]
    return min(steps) / max_steps if steps else None


def comparison_figure(
    histories: Mapping[str, Sequence[Mapping[str, Any]]], max_steps: Mapping[str, int], title: str
) -> Figure:
    """One column per run (backbone, UFM), one row per metric group, rows sharing their y-axis.

    x: fraction of training ``step / max_steps`` on a log axis (step 0, the initialisation, is left out);
    collapse errors on log axes (zeros left out). A dotted line marks the first evaluation with 100%
    training accuracy, where the terminal phase of training begins (Papyan, Han & Donoho 2020).
    """
    figure = Figure(figsize=(11, 10), layout="constrained")
    grid = figure.subplots(len(PANELS), len(histories), sharex=True, sharey="row", squeeze=False)
    for column, (name, records) in enumerate(histories.items()):
        records = sorted((r for r in records if r["step"] > 0), key=lambda record: record["step"])
        fractions = np.array([record["step"] / max_steps[name] for record in records])
        onset = first_interpolating_fraction(records, max_steps[name])
        for row, (panel, tags) in enumerate(PANELS.items()):
            axes = grid[row][column]
            for tag in tags:
                values = np.array([_as_float(record.get(tag)) for record in records])
                if np.isfinite(values).any():
                    axes.plot(fractions, values, label=curve_label(tag), linewidth=1.4)
            if panel in LOG_PANELS:
                axes.set_yscale("log", nonpositive="mask")
            axes.set_xscale("log")
            if onset is not None:
                axes.axvline(onset, color="grey", linestyle=":", linewidth=1)
            axes.grid(True, which="major", alpha=0.3)
            if row == 0:
                axes.set_title(RUNS.get(name, name))
            if column == 0:
                axes.set_ylabel(panel)
            if row == len(PANELS) - 1:
                axes.set_xlabel("fraction of training (step / max_steps)")
            axes.legend(fontsize=8, loc="best")
    grid[-1][0].set_ylim(-0.02, 1.02)
    figure.suptitle(
        f"Collapse during training: backbone against UFM ({title})\n"
        "dotted: first evaluation with 100% training accuracy; zeros (e.g. NC4 = 0) are not drawn on log axes"
    )
    return figure


def _as_float(value: Any) -> float:
    """``value`` as a float; None and non-numbers become NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
