"""The figures of the deep-UFM experiments, drawn from a sweep's jobs against the deep oracles.

- ``experiment=deep_linear`` (:func:`deep_linear_figure`): the final loss of deep linear UFMs of depths 1–4 over a
  λ sweep against the closed-form global optimum of Dang et al. 2023 (line), and the gap on a log axis;
- ``experiment=deep_collapse`` (:func:`deep_collapse_figure`): deep ReLU UFMs, each replica's final loss relative to
  the best point of the DNC family ``(f − f_DNC)/f_DNC`` (Súkeník, Lampert & Mondelli 2024: random starts often end
  below it), the numerical rank of the class means at every layer, and DNC1–DNC3 per layer over training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ufm_torch.analysis.laboratory_figures import resolved
from ufm_torch.analysis.records import as_float
from ufm_torch.models import Activation
from ufm_torch.models.ufm import class_sizes
from ufm_torch.objectives.losses import LOSSES
from ufm_torch.run_folder.jobs import Job
from ufm_torch.run_folder.layout import METRICS_FILE
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.theory.deep_oracle import deep_ufm_oracle
from ufm_torch.theory.deep_problem import DeepUFMOptimum, OracleAssumptionError

ORACLE_POINTS = 60
"""λ values of each oracle line."""
LAYER_METRICS = (("collapse/nc1", "DNC1: NC1 of $H_l$"), ("collapse/dnc2", "DNC2"), ("collapse/dnc3", "DNC3"))
FLOOR = 1e-16
"""Where a gap of zero (or below, by round-off) is drawn on a log axis."""


def deep_oracle(config: Mapping[str, Any], decay: float | None = None) -> DeepUFMOptimum:
    """The deep oracle (:func:`~ufm_torch.theory.deep_oracle.deep_ufm_oracle`) of a job's saved config, with every
    decay set to ``decay`` when given (λ_{H_1} = λ_{W_l} = λ: the oracle line of a λ sweep)."""
    data, model, module = (resolved(config, node) for node in ("data", "model", "module"))
    sizes = class_sizes(data["num_classes"], data["samples_per_class"], data.get("imbalance_ratio", 1.0),
                        data.get("minority_classes"))  # fmt: skip
    feature, classifier = float(module["feature_decay"]), float(module["classifier_decay"])
    hidden = module.get("hidden_decay")
    hidden = classifier if hidden is None else float(hidden)
    if decay is not None:
        feature = hidden = classifier = decay
    return deep_ufm_oracle(
        tuple(sizes), int(model["feature_dim"]), int(model["width"]), int(model["depth"]), feature, hidden,
        classifier, Activation(model["activation"]), LOSSES[module["loss"]], bool(model["bias"]),
    )  # fmt: skip


def final_losses(job: Job) -> list[float]:
    """Each replica's ``train/loss`` at the job's last evaluation."""
    if not job.records:
        return []
    step = max(record["step"] for record in job.records)
    return [as_float(record["train/loss"]) for record in job.records if record["step"] == step]


def deep_linear_figure(jobs: Sequence[Job]) -> Figure:
    """Final loss against λ per depth: the oracle's f*(λ) (line) and the trained replicas (markers); right, the gap
    f − f* of each replica on a log axis (a gap ≤ 0 by round-off drawn at the floor)."""
    figure = Figure(figsize=(11.0, 4.6), layout="constrained")
    loss_axes, gap_axes = figure.subplots(1, 2)
    by_depth: dict[int, list[tuple[float, float, float, Mapping[str, Any]]]] = {}
    for job in jobs:
        decay = float(resolved(job.config, "module")["classifier_decay"])
        optimum, depth = deep_oracle(job.config), int(resolved(job.config, "model")["depth"])
        for loss in final_losses(job):
            by_depth.setdefault(depth, []).append((decay, loss, optimum.loss, job.config))
    colours = {depth: f"C{index}" for index, depth in enumerate(sorted(by_depth))}
    for depth, points in sorted(by_depth.items()):
        colour, config = colours[depth], points[0][3]
        decays = sorted({point[0] for point in points})
        grid = np.geomspace(min(decays), max(decays), ORACLE_POINTS)
        loss_axes.plot(grid, [deep_oracle(config, float(lam)).loss for lam in grid], color=colour,
                       label=f"L = {depth}: global optimum")  # fmt: skip
        loss_axes.plot([p[0] for p in points], [p[1] for p in points], "o", color=colour, markerfacecolor="none",
                       label=f"L = {depth}: trained")  # fmt: skip
        gaps = [max(p[1] - p[2], FLOOR) for p in points]
        gap_axes.plot([p[0] for p in points], gaps, "o", color=colour, label=f"L = {depth}")
    for axes in (loss_axes, gap_axes):
        axes.set_xscale("log")
        axes.set_xlabel("λ = λ_H1 = λ_W (every decay)")
        axes.grid(True, which="both", alpha=0.3)
    loss_axes.set_ylabel("final loss f")
    loss_axes.set_title("Trained deep linear UFMs against the closed form")
    gap_axes.set_yscale("log")
    gap_axes.set_ylabel(f"f − f* (≤ 0 drawn at {FLOOR:g})")
    gap_axes.set_title("Gap to the global optimum (Dang et al. 2023)")
    figure.legend(*loss_axes.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    return figure


def deep_collapse_figure(jobs: Sequence[Job]) -> Figure:
    """Top left: each replica's ``(f − f_DNC)/f_DNC`` by width and λ (points; below 0 the run beat DNC); top
    right: the numerical rank of the class means at every layer of each replica at the end, coloured by whether it
    beat DNC; bottom: DNC1–DNC3 per layer over training for the first job's first replica."""
    figure = Figure(figsize=(12.0, 8.0), layout="constrained")
    top, bottom = figure.subfigures(2, 1)
    relative_axes, rank_axes = top.subplots(1, 2)
    settings: list[str] = []
    for job in jobs:
        try:
            reference = deep_oracle(job.config).loss
        except OracleAssumptionError:
            continue
        model, module = resolved(job.config, "model"), resolved(job.config, "module")
        label = f"d={model['width']}, λ={float(module['classifier_decay']):g}"
        if label not in settings:
            settings.append(label)
        relative = [(loss - reference) / reference for loss in final_losses(job)]
        position = settings.index(label)
        relative_axes.plot([position] * len(relative), relative, "o", color="tab:blue", markerfacecolor="none")
        for replica, ranks in enumerate(layer_ranks(job)):
            below = relative[replica] < 0 if replica < len(relative) else False
            rank_axes.plot(range(1, len(ranks) + 1), ranks, "-o", color="tab:red" if below else "tab:grey",
                           alpha=0.6, markersize=3)  # fmt: skip
    relative_axes.axhline(0.0, color="black", linewidth=1)
    relative_axes.set_yscale("symlog", linthresh=0.01)  # a start stuck at W = 0 sits decades above those near DNC
    relative_axes.set_xticks(range(len(settings)), settings, rotation=30, ha="right", fontsize=8)
    relative_axes.set_ylabel("(f − f_DNC) / f_DNC at the end")
    relative_axes.set_title("Below 0: the run beat deep neural collapse")
    relative_axes.grid(True, alpha=0.3)
    rank_axes.set_xlabel("layer l")
    rank_axes.set_ylabel("numerical rank of the class means of $H_l$")
    rank_axes.set_title("Ranks (red: runs below DNC)")
    rank_axes.grid(True, alpha=0.3)
    draw_layer_curves(bottom, jobs[0] if jobs else None)
    num_classes = resolved(jobs[0].config, "data")["num_classes"] if jobs else "?"
    figure.suptitle(f"Deep ReLU UFMs (K = {num_classes}): DNC is not always optimal (Súkeník et al. 2024)")
    return figure


def layer_ranks(job: Job) -> list[list[float]]:
    """Per replica, the class-mean rank of H_1, …, H_L at the last evaluation (layers in depth order)."""
    records = read_records(job.path / METRICS_FILE, every_layer=True) if (job.path / METRICS_FILE).is_file() else []
    if not records:
        return []
    step = max(record["step"] for record in records)
    last = [record for record in records if record["step"] == step and record.get("split", "train") == "train"]
    order = layer_order([record["layer"] for record in last])
    replicas = sorted({record["replica"] for record in last})
    by_key = {(record["replica"], record["layer"]): record for record in last}
    return [[as_float(by_key[replica, layer].get("collapse/class_mean_rank")) for layer in order]
            for replica in replicas]  # fmt: skip


def layer_order(layers: Sequence[str]) -> list[str]:
    """The recorded layer names of a deep UFM in depth order: ``network.features`` (H_1), ``network.layers.<i>``
    (H_{i+2}) in index order, then the classifier's input (the main layer, the first recorded)."""
    names = list(dict.fromkeys(layers))
    main, others = names[0], names[1:]
    hidden = sorted((name for name in others if name != "network.features"), key=lambda name: int(name.rsplit(".")[-1]))
    return [name for name in others if name == "network.features"] + hidden + [main]


def draw_layer_curves(figure: Any, job: Job | None) -> None:
    """DNC1–DNC3 of every layer against the step (log10 axes) for replica 0 of ``job``."""
    panels = figure.subplots(1, len(LAYER_METRICS))
    records = [] if job is None else read_records(job.path / METRICS_FILE, every_layer=True)
    records = [record for record in records if record["replica"] == 0 and record.get("split", "train") == "train"]
    order = layer_order([record["layer"] for record in records]) if records else []
    colours = [f"C{index}" for index in range(len(order))]
    for axes, (tag, title) in zip(panels, LAYER_METRICS, strict=True):
        for colour, (index, layer) in zip(colours, enumerate(order, start=1), strict=True):
            points = [(record["step"], as_float(record.get(tag))) for record in records if record["layer"] == layer]
            points = [(step, value) for step, value in points if step > 0 and math.isfinite(value)]
            axes.plot([p[0] for p in points], [max(p[1], FLOOR) for p in points], color=colour, label=f"$H_{index}$")
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_title(title)
        axes.grid(True, which="both", alpha=0.3)
    if order:
        panels[-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
