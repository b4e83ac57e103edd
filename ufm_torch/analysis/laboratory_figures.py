"""The UFM laboratory's sweep figures: trained classifiers of a sweep against the global optimum's.

Each reads every job's final classifier ``W`` from its ``checkpoints/last.ckpt`` (replicas along the first axis),
its config and the replicas' own hyperparameters from their records (:mod:`ufm_torch.hyperparameters`: a job may
train a whole grid of λ), and draws the oracle (:func:`ufm_torch.theory.optimum.solve_optima`):

- :func:`regularization_figure` (``experiment=regularized``): the mean squared classifier norm
  ``(1/C) Σ_k ‖w_k‖² = tr(WWᵀ)/C`` against λ = λ_W = λ_H, one colour per loss, the oracle a line over a fine grid.
  Past the threshold Cβ = 1 (β = √(Nλ_Wλ_H); Zhu et al. 2021, Zhou et al. 2022) the optimum is W = H = 0.
- :func:`phase_diagram_figure` (``experiment=phase_diagram``): per loss, the same norm over a (λ_W, λ_H) grid as a
  heatmap with the oracle's threshold curve Cβ = 1 − s drawn over it (:func:`~ufm_torch.theory.optimum.
  collapse_threshold`), and beside it each replica's distance to the optimum, ``optimum/classifier_gram``, with its
  largest value over the grid.
- :func:`minority_collapse_figure` (``experiment=minority_collapse``): the angle between the classifiers of the
  minority classes, arccos(⟨w_a, w_b⟩ / (‖w_a‖‖w_b‖)) averaged over their pairs, against the imbalance ratio ρ
  (Fang et al. 2021: the minority classifiers merge as ρ grows). Where they vanish (‖w‖² below 1e-12 of the
  majority's) the angle is undefined and not drawn.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from ufm_torch.analysis.records import as_float, final_records, replica_setting
from ufm_torch.hyperparameters import HYPERPARAMETERS
from ufm_torch.models import UFM_DEFAULT_LOSS
from ufm_torch.models.ufm import class_sizes
from ufm_torch.run_folder.jobs import Job
from ufm_torch.run_folder.layout import CHECKPOINTS_DIR, LAST_CHECKPOINT
from ufm_torch.theory.optimum import UFMProblem, collapse_threshold, solve_optima

ORACLE_POINTS = 40
PROBLEM_FIELDS = {
    "classifier_decay": "lambda_weight", "feature_decay": "lambda_features", "bias_decay": "lambda_bias",
    "label_smoothing": "label_smoothing",
}  # fmt: skip
"""The :class:`UFMProblem` field of each per-replica hyperparameter of the objective (by argument name)."""
MODULE_ARGUMENTS = tuple(PROBLEM_FIELDS)
CLASSIFIER_GRAM_TAG = "optimum/classifier_gram"
"""The distance of WWᵀ to the optimum's (one of :data:`~ufm_torch.metrics.tags.OPTIMUM_TAGS`): the phase diagram's
second panel."""
VANISHED = 1e-12
"""A classifier row whose ‖w‖² is below this fraction of the largest is taken as 0 (its angle is undefined); so is
a cell of the phase diagram whose (1/C)Σ‖w_k‖² is below this fraction of the grid's largest."""
ROUNDING_LEVEL = 1e-16
"""The floor of the phase diagram's distances: float64 rounding (a distance below it is drawn at it)."""


def final_weight(job: Job) -> np.ndarray | None:
    """The job's final classifier ``W``, shape ``(R, C, p)`` (float64), or None without a last checkpoint."""
    path = job.path / CHECKPOINTS_DIR / LAST_CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return state["network.head.weight"].to(torch.float64).numpy()


def resolved(config: dict[str, Any], node: str) -> dict[str, Any]:
    """The ``node`` of a saved (unresolved) job config with its interpolations resolved against the whole config
    (``module.feature_decay: ${decay}``)."""
    return OmegaConf.to_container(OmegaConf.select(OmegaConf.create(config), node), resolve=True)


def replica_temperatures(job: Job, replicas: int) -> list[float]:
    """Each replica's τ: ``module.temperature`` (null: 1), or with a list (one replica group per τ) the
    ``module.temperature`` of each replica's final record."""
    temperature = resolved(job.config, "module").get("temperature")
    if not isinstance(temperature, list):
        return [float(temperature or 1.0)] * replicas
    return [float(record["module.temperature"]) for record in final_records(job.records)]


def job_problem(config: dict[str, Any], **changes: Any) -> UFMProblem:
    """The regularised UFM a job's config trains, for the oracle. ``changes`` replace data keys
    (``imbalance_ratio``), both decays (``decay``: λ = λ_W = λ_H) or a per-replica hyperparameter of the module by
    its argument (``classifier_decay``, ``feature_decay``, ``bias_decay``, ``label_smoothing``); a key the config
    gives as a list (one value per replica group) must be among them (:func:`replica_problems`)."""
    data, module, model = (resolved(config, node) for node in ("data", "module", "model"))
    data = data | {key: value for key, value in changes.items() if key in data or key == "imbalance_ratio"}
    counts = class_sizes(
        data["num_classes"], data["samples_per_class"], data.get("imbalance_ratio", 1.0), data.get("minority_classes")
    )
    decay = changes.get("decay")
    module = module | ({"classifier_decay": decay, "feature_decay": decay} if decay is not None else {})
    module = module | {key: value for key, value in changes.items() if key in MODULE_ARGUMENTS}
    lists = sorted(name for name in MODULE_ARGUMENTS if isinstance(module.get(name), list))
    if lists:
        raise ValueError(f"module.{lists[0]} varies between replicas: give each replica's value (replica_problems)")
    return UFMProblem(
        loss=module.get("loss") or UFM_DEFAULT_LOSS,
        class_counts=tuple(counts),
        feature_dim=model["feature_dim"],
        lambda_weight=module["classifier_decay"],
        lambda_features=module["feature_decay"],
        lambda_bias=module.get("bias_decay") or 0.0,
        bias=model.get("bias", True),
        label_smoothing=module.get("label_smoothing") or 0.0,
    )


def replica_problems(job: Job) -> list[UFMProblem]:
    """The problem of each replica of a finished job (by replica index): its config with the replica's own
    hyperparameters (from its final record)."""
    finals = final_records(job.records)
    if not finals:
        return []
    base = job_problem(job.config, **replica_arguments(finals[0]))
    return [
        replace(base, **{PROBLEM_FIELDS[name]: value for name, value in replica_arguments(record).items()})
        for record in finals
    ]


def replica_arguments(record: Mapping[str, Any]) -> dict[str, float]:
    """A record's per-replica module hyperparameters by argument name (``classifier_decay``: 0.01)."""
    setting = replica_setting(record)
    arguments = {HYPERPARAMETERS[key].argument: value for key, value in setting.items()}
    return {name: value for name, value in arguments.items() if name in PROBLEM_FIELDS}


def mean_squared_norm(gram: np.ndarray) -> np.ndarray:
    """``tr(G)/C`` of Gram matrices ``(..., C, C)``: the mean of ``‖w_k‖²``."""
    return np.trace(gram, axis1=-2, axis2=-1) / gram.shape[-1]


def minority_angle(gram: np.ndarray, minority: Sequence[int]) -> np.ndarray:
    """Mean angle in degrees between the minority classifiers of Gram matrices ``(..., C, C)``; NaN where one of
    them vanished (‖w‖² < VANISHED · the largest ‖w_k‖²)."""
    diagonal = np.diagonal(gram, axis1=-2, axis2=-1)
    angles = []
    for first, second in itertools.combinations(minority, 2):
        norms = np.sqrt(diagonal[..., first] * diagonal[..., second])
        alive = np.minimum(diagonal[..., first], diagonal[..., second]) > VANISHED * diagonal.max(-1)
        cosine = np.where(alive, gram[..., first, second] / np.where(alive, norms, 1.0), np.nan)
        angles.append(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))
    return np.mean(angles, axis=0)


def gram_of(weight: np.ndarray) -> np.ndarray:
    """``WWᵀ`` of classifiers ``(..., C, p)``."""
    return weight @ np.swapaxes(weight, -1, -2)


def trained_replicas(jobs: Sequence[Job]) -> list[tuple[Job, np.ndarray, list[UFMProblem]]]:
    """Each job with a last checkpoint and records: its final classifiers ``(R, C, p)`` and each replica's problem."""
    trained = []
    for job in jobs:
        weight = final_weight(job)
        if weight is not None and job.records:
            trained.append((job, weight, replica_problems(job)))
    return trained


def regularization_figure(jobs: Sequence[Job]) -> Figure:
    """Final ``(1/C)Σ_k‖w_k‖²`` against λ = λ_W = λ_H per loss, trained (markers, median over the replicas of each
    λ) and optimal (line), with the threshold Cβ = 1 dashed."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.subplots()
    by_loss: dict[str, dict[float, list[float]]] = {}
    references: dict[str, UFMProblem] = {}
    for _, weight, problems in trained_replicas(jobs):
        for norm, problem in zip(mean_squared_norm(gram_of(weight)), problems, strict=True):
            by_loss.setdefault(problem.loss, {}).setdefault(problem.lambda_features, []).append(float(norm))
            references.setdefault(problem.loss, problem)
    reference = next(iter(references.values()))
    num_classes, per_class = reference.num_classes, reference.class_counts[0]
    for colour, (loss, points) in zip(("tab:blue", "tab:red", "tab:green"), sorted(by_loss.items()), strict=False):
        decays = sorted(points)
        values = [float(np.median(points[decay])) for decay in decays]
        grid = np.geomspace(min(decays), max(decays), ORACLE_POINTS)
        along = [replace(references[loss], lambda_weight=float(lam), lambda_features=float(lam)) for lam in grid]
        oracle = mean_squared_norm(solve_optima(along).classifier_gram.numpy())
        axes.plot(grid, oracle, color=colour, linewidth=1.5, label=f"{loss}: global optimum (oracle)")
        axes.plot(decays, values, "o", color=colour, markersize=6, markerfacecolor="none", label=f"{loss}: trained")
    threshold = 1.0 / (num_classes * math.sqrt(per_class))
    axes.axvline(threshold, color="grey", linestyle="--", linewidth=1, label=f"Cβ = 1 (λ = {threshold:.3g})")
    axes.set_xscale("log")
    axes.set_xlabel("λ = λ_W = λ_H (feature and classifier decay)")
    axes.set_ylabel("(1/C) Σ_k ‖w_k‖²  at the end of training")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")
    axes.set_title(f"Regularised UFM (C = {num_classes}, N = {per_class}): collapse to W = H = 0 past Cβ = 1")
    return figure


def minority_collapse_figure(jobs: Sequence[Job]) -> Figure:
    """Angle between the minority classifiers against the imbalance ratio ρ, trained (markers, median over
    replicas) and optimal (line, log-spaced ρ)."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.subplots()
    points = []
    for job in jobs:
        weight = final_weight(job)
        if weight is not None:
            data = resolved(job.config, "data")
            sizes = class_sizes(
                data["num_classes"], data["samples_per_class"], data.get("imbalance_ratio", 1.0),
                data.get("minority_classes"),
            )  # fmt: skip
            minority = [k for k, size in enumerate(sizes) if size < max(sizes)] or list(range(len(sizes)))[-2:]
            angle = float(np.nanmedian(minority_angle(gram_of(weight), minority)))
            points.append((float(data.get("imbalance_ratio", 1.0)), angle, minority))
    ratios, angles, minorities = zip(*sorted(points, key=lambda point: point[0]), strict=True)
    reference = next(job for job in jobs if final_weight(job) is not None)
    grid = np.geomspace(max(min(ratios), 1.0), max(ratios), ORACLE_POINTS)
    optima = solve_optima([job_problem(reference.config, imbalance_ratio=float(rho)) for rho in grid])
    oracle = minority_angle(optima.classifier_gram.numpy(), minorities[-1])
    axes.plot(grid, oracle, color="tab:blue", linewidth=1.5, label="global optimum (oracle; steps: integer n_min)")
    axes.plot(ratios, angles, "o", color="tab:red", markerfacecolor="none", markersize=7, label="trained")
    axes.axhline(math.degrees(math.acos(-1.0 / (resolved(reference.config, "data")["num_classes"] - 1))), color="grey",
                 linestyle=":", linewidth=1, label="simplex ETF angle")  # fmt: skip
    axes.set_xscale("log")
    axes.set_ylim(-5, 185)
    axes.set_xlabel("imbalance ratio ρ = n_majority / n_minority")
    axes.set_ylabel("angle between minority classifiers (degrees)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    module = resolved(reference.config, "module")
    axes.set_title(f"Minority collapse ({module.get('loss')}, λ_W = {module['classifier_decay']:g}, "
                   f"λ_H = {module['feature_decay']:g})")  # fmt: skip
    return figure


def phase_diagram_figure(jobs: Sequence[Job]) -> Figure:
    """Per loss, two heatmaps over the (λ_W, λ_H) grid of its replicas (median over the copies of a cell): the final
    ``(1/C)Σ_k‖w_k‖²`` (log colours; grey where W vanished, below :data:`VANISHED` of the largest) with the oracle's
    threshold λ_Wλ_H = (1 − s)²/(C²N) (Cβ = 1 − s, β = √(Nλ_Wλ_H); :func:`~ufm_torch.theory.optimum.
    collapse_threshold`) drawn over it, and the final ``optimum/classifier_gram`` (the distance of WWᵀ to the
    optimum's; log colours from 1e-16, the float64 rounding level), whose largest value over the grid its title
    gives with the median."""
    cells: dict[str, dict[tuple[float, float], list[tuple[float, float]]]] = {}
    references: dict[str, UFMProblem] = {}
    for job, weight, problems in trained_replicas(jobs):
        finals = final_records(job.records)
        for norm, problem, record in zip(mean_squared_norm(gram_of(weight)), problems, finals, strict=True):
            cell = cells.setdefault(problem.loss, {}).setdefault((problem.lambda_weight, problem.lambda_features), [])
            cell.append((float(norm), as_float(record.get(CLASSIFIER_GRAM_TAG))))
            references.setdefault(problem.loss, problem)
    figure = Figure(figsize=(12.0, 4.6 * len(cells)), layout="constrained")
    grid = figure.subplots(len(cells), 2, squeeze=False)
    for row, (loss, by_cell) in enumerate(sorted(cells.items())):
        reference = references[loss]
        weights, features = sorted({w for w, _ in by_cell}), sorted({h for _, h in by_cell})
        norms, distances = (np.full((len(features), len(weights)), np.nan) for _ in range(2))
        for (w, h), values in by_cell.items():
            norms[features.index(h), weights.index(w)] = np.median([norm for norm, _ in values])
            distances[features.index(h), weights.index(w)] = np.nanmedian([gap for _, gap in values])
        x_edges, y_edges = cell_edges(weights), cell_edges(features)
        left, right = grid[row]
        largest_norm = float(np.nanmax(norms))
        alive = norms[norms > VANISHED * largest_norm]
        alive = LogNorm(float(alive.min()) if alive.size else VANISHED * largest_norm, largest_norm)
        vanished = colormaps["viridis"].with_extremes(under="lightgrey", bad="lightgrey")  # W = 0: log of 0 is bad
        mesh = left.pcolormesh(x_edges, y_edges, norms, cmap=vanished, norm=alive)
        figure.colorbar(mesh, ax=left, extend="min", label="(1/C) Σ_k ‖w_k‖² at the end (grey: W = 0)")
        floor = ROUNDING_LEVEL
        shown = np.clip(distances, floor, None)
        mesh = right.pcolormesh(x_edges, y_edges, shown, cmap="magma", norm=LogNorm(floor, max(1.0, np.nanmax(shown))))
        figure.colorbar(mesh, ax=right, label=f"{CLASSIFIER_GRAM_TAG} at the end (≤ 1e-16: at the floor)")
        product = collapse_threshold(loss, reference.num_classes, reference.class_counts[0], reference.label_smoothing)
        curve = np.geomspace(x_edges[0], x_edges[-1], ORACLE_POINTS)
        for axes, colour in ((left, "black"), (right, "tab:cyan")):
            axes.plot(curve, product / curve, color=colour, linestyle="--", linewidth=1.6,
                      label="oracle's threshold Cβ = 1 − s (W* = 0 above)")  # fmt: skip
        largest, median = float(np.nanmax(distances)), float(np.nanmedian(distances))
        shape = f"C = {reference.num_classes}, N = {reference.class_counts[0]}, p = {reference.feature_dim}"
        left.set_title(f"{loss} ({shape}): final classifier norm", fontsize=10)
        right.set_title(f"{loss}: distance of WWᵀ to the optimum's\nlargest over the grid {largest:.2g}, median "
                        f"{median:.2g}", fontsize=10)  # fmt: skip
        for axes in (left, right):
            axes.set_xscale("log")
            axes.set_yscale("log")
            axes.set_xlim(x_edges[0], x_edges[-1])
            axes.set_ylim(y_edges[0], y_edges[-1])
            axes.set_xlabel("λ_W (classifier decay)")
            axes.set_ylabel("λ_H (feature decay)")
            axes.legend(fontsize=8, loc="lower left")
    return figure


def cell_edges(centres: Sequence[float]) -> np.ndarray:
    """Edges of heatmap cells around sorted positive ``centres`` on a log axis: geometric midpoints, and the end
    cells as wide (in log) as their neighbours (a factor of 2 either side for a single centre)."""
    logs = np.log(np.asarray(centres, dtype=np.float64))
    if logs.size == 1:
        return np.exp(logs[0] + np.log(2.0) * np.array([-1.0, 1.0]))
    middles = (logs[1:] + logs[:-1]) / 2
    return np.exp(np.concatenate([[2 * logs[0] - middles[0]], middles, [2 * logs[-1] - middles[-1]]]))
