"""The UFM laboratory's sweep figures: trained classifiers of a sweep against the global optimum's.

Both read each job's final classifier ``W`` from its ``checkpoints/last.ckpt`` (replicas along the first axis) and
its config, and draw the oracle (:func:`ufm_torch.theory.optimum.solve_optimum`) as a line over a fine grid:

- :func:`regularization_figure` (``experiment=regularized``): the mean squared classifier norm
  ``(1/C) Σ_k ‖w_k‖² = tr(WWᵀ)/C`` against λ = λ_W = λ_H, one colour per loss. Past the threshold Cβ = 1
  (β = √(Nλ_Wλ_H); Zhu et al. 2021, Zhou et al. 2022) the optimum is W = H = 0.
- :func:`minority_collapse_figure` (``experiment=minority_collapse``): the angle between the classifiers of the
  minority classes, arccos(⟨w_a, w_b⟩ / (‖w_a‖‖w_b‖)) averaged over their pairs, against the imbalance ratio ρ
  (Fang et al. 2021: the minority classifiers merge as ρ grows). Where they vanish (‖w‖² below 1e-12 of the
  majority's) the angle is undefined and not drawn.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from ufm_torch.models import UFM_DEFAULT_LOSS
from ufm_torch.models.ufm import class_sizes
from ufm_torch.run_folder.jobs import Job
from ufm_torch.run_folder.layout import CHECKPOINTS_DIR, LAST_CHECKPOINT
from ufm_torch.theory.optimum import UFMProblem, solve_optimum

ORACLE_POINTS = 40
VANISHED = 1e-12
"""A classifier row whose ‖w‖² is below this fraction of the largest is taken as 0 (its angle is undefined)."""


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


def job_problem(config: dict[str, Any], **changes: Any) -> UFMProblem:
    """The regularised UFM a job's config trains (``changes`` replace data keys or decays), for the oracle."""
    data, module, model = (resolved(config, node) for node in ("data", "module", "model"))
    data = data | {key: value for key, value in changes.items() if key in data or key == "imbalance_ratio"}
    counts = class_sizes(
        data["num_classes"], data["samples_per_class"], data.get("imbalance_ratio", 1.0), data.get("minority_classes")
    )
    decay = changes.get("decay")
    return UFMProblem(
        loss=module.get("loss") or UFM_DEFAULT_LOSS,
        class_counts=tuple(counts),
        feature_dim=model["feature_dim"],
        lambda_weight=module["classifier_decay"] if decay is None else decay,
        lambda_features=module["feature_decay"] if decay is None else decay,
        lambda_bias=module.get("bias_decay") or 0.0,
        bias=model.get("bias", True),
        label_smoothing=module.get("label_smoothing") or 0.0,
    )


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


def regularization_figure(jobs: Sequence[Job]) -> Figure:
    """Final ``(1/C)Σ_k‖w_k‖²`` against λ = λ_W = λ_H per loss, trained (markers, median over replicas) and
    optimal (line), with the threshold Cβ = 1 dashed."""
    figure = Figure(figsize=(7.5, 4.8), layout="constrained")
    axes = figure.subplots()
    by_loss: dict[str, list[tuple[float, float]]] = {}
    for job in jobs:
        weight = final_weight(job)
        if weight is not None:
            module = resolved(job.config, "module")
            value = float(np.median(mean_squared_norm(gram_of(weight))))
            loss = module.get("loss") or UFM_DEFAULT_LOSS
            by_loss.setdefault(loss, []).append((float(module["feature_decay"]), value))
    reference = next(job for job in jobs if final_weight(job) is not None)
    data = resolved(reference.config, "data")
    num_classes, per_class = data["num_classes"], data["samples_per_class"]
    for colour, (loss, points) in zip(("tab:blue", "tab:red", "tab:green"), sorted(by_loss.items()), strict=False):
        decays, values = zip(*sorted(points), strict=True)
        grid = np.geomspace(min(decays), max(decays), ORACLE_POINTS)
        config = reference.config | {"module": reference.config["module"] | {"loss": loss}}
        oracle = [float(mean_squared_norm(solve_optimum(job_problem(config, decay=lam)).classifier_gram.numpy()))
                  for lam in grid]  # fmt: skip
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
    oracle = [float(minority_angle(solve_optimum(job_problem(reference.config, imbalance_ratio=float(rho)))
                                   .classifier_gram.numpy(), minorities[-1])) for rho in grid]  # fmt: skip
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
