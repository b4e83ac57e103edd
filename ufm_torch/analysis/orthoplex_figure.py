"""The figure of ``experiment=orthoplex``: spherical UFMs in the orthoplex regime ``p + 2 ≤ C ≤ 2p``.

:func:`orthoplex_figure` reads every job's final ``W`` and ``H`` (``checkpoints/last.ckpt``, replicas along the
first axis), compares each replica with the orthoplex-regime prediction (:func:`ufm_torch.theory.orthoplex.
compare_with_regime`: ``C − p − 1`` antipodal pairs ⊕ a regular simplex of ``2p + 2 − C`` vertices, mutually
orthogonal; Alcala et al. 2026's regime, our derivation in ``docs/many_classes.md``) and draws, one column per
``(p, C)`` of the regime (jobs outside it are left out): the fraction of replicas in the predicted blocks and the
fraction whose loss is below the prediction's; the largest ``|cos|`` across the found blocks; ``ρ(W)`` with the bound
``ρ ≤ 1`` (Radon); and the loss minus the predicted loss, on a symmetric log axis (below 0: a better geometry than the
prediction).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from ufm_torch.analysis.laboratory_figures import replica_temperatures, resolved
from ufm_torch.run_folder.jobs import Job
from ufm_torch.run_folder.layout import CHECKPOINTS_DIR, LAST_CHECKPOINT
from ufm_torch.theory.orthoplex import OrthoplexComparison, compare_with_regime, regime_block_sizes

ROUNDING_FLOOR = 1e-16
"""Absolute values below this are drawn at it (float64 rounding of a cosine or of a loss of order 0.05)."""
LOSS_LINEAR_RANGE = 1e-15
"""The loss-gap panel is linear within ``±LOSS_LINEAR_RANGE`` (rounding) and logarithmic outside."""
BELOW_PREDICTION = 1e-12
"""A replica whose loss is below the prediction's by more than this found a better geometry (:func:`outcome`)."""


def final_parameters(job: Job) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The job's final classifier ``W`` ``(R, C, p)`` and features ``H`` ``(R, n, p)`` (float64), or None without a
    last checkpoint."""
    path = job.path / CHECKPOINTS_DIR / LAST_CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return state["network.head.weight"].to(torch.float64), state["network.features"].to(torch.float64)


def job_comparisons(job: Job) -> list[tuple[float, OrthoplexComparison]]:
    """Every replica of a job against the prediction, with its τ; [] without a checkpoint or outside
    ``p + 2 ≤ C ≤ 2p``."""
    data, model = (resolved(job.config, node) for node in ("data", "model"))
    num_classes, feature_dim = int(data["num_classes"]), int(model["feature_dim"])
    if not feature_dim + 2 <= num_classes <= 2 * feature_dim:
        return []
    parameters = final_parameters(job)
    if parameters is None:
        return []
    weight, features = parameters
    labels = torch.arange(num_classes).repeat_interleave(features.shape[-2] // num_classes)
    temperatures = replica_temperatures(job, weight.shape[0])
    return [
        (tau, compare_with_regime(w, h, labels, tau)) for w, h, tau in zip(weight, features, temperatures, strict=True)
    ]


def outcome(item: OrthoplexComparison) -> str:
    """``predicted`` (the predicted blocks), ``below`` (another geometry with a loss below the prediction's by more
    than :data:`BELOW_PREDICTION`) or ``above`` (another geometry, a local minimum or unconverged)."""
    if item.matches:
        return "predicted"
    return "below" if item.loss_gap < -BELOW_PREDICTION else "above"


OUTCOMES = {
    "predicted": ("C2", "in the predicted blocks"),
    "below": ("C3", "other geometry, loss below the prediction's"),
    "above": ("C1", "other geometry, loss above (local minimum)"),
}
"""The colour and legend of each :func:`outcome`."""


def orthoplex_figure(jobs: Sequence[Job]) -> Figure:
    """Four panels, one column per case ``(p, C, τ)`` (module docstring), every replica a marker coloured by its
    :func:`outcome`, the predicted block sizes under each case; the loss panel also marks the best loss of the
    tilted-pairs family (:func:`ufm_torch.theory.orthoplex.best_tilted_pairs`)."""
    cases: dict[tuple[int, int, float], list[OrthoplexComparison]] = {}
    for job in jobs:
        for temperature, item in job_comparisons(job):
            cases.setdefault((item.feature_dim, item.num_classes, temperature), []).append(item)
    figure = Figure(figsize=(14.0, 8.5), layout="constrained")
    (match_axes, cross_axes), (margin_axes, gap_axes) = figure.subplots(2, 2)
    keys = sorted(cases)
    positions = np.arange(len(keys))
    labels = [f"τ={tau:g}" for _, _, tau in keys]
    groups: dict[tuple[int, int], list[int]] = {}
    for index, (p, c, _) in enumerate(keys):
        groups.setdefault((p, c), []).append(index)
    bottom = np.zeros(len(keys))
    for name, (colour, label) in OUTCOMES.items():
        fractions = np.array([np.mean([outcome(item) == name for item in cases[key]]) for key in keys])
        match_axes.bar(positions, fractions, 0.7, bottom=bottom, color=colour, label=label)
        bottom += fractions
    match_axes.set_ylim(0, 1.0)
    match_axes.set_ylabel("fraction of replicas")
    match_axes.set_title("Where the replicas ended")
    width = max((len(items) for items in cases.values()), default=1)
    jitter = np.linspace(-0.3, 0.3, width) if width > 1 else np.zeros(1)
    for index, key in enumerate(keys):
        items = cases[key]
        x = index + jitter[: len(items)]
        colours = [OUTCOMES[outcome(item)][0] for item in items]
        cross = [max(item.cross_cosine if item.matches else item.max_cosine, ROUNDING_FLOOR) for item in items]
        cross_axes.scatter(x, cross, c=colours, s=16)
        margin_axes.scatter(x, [item.margin for item in items], c=colours, s=16)
        gap_axes.scatter(x, [item.loss_gap for item in items], c=colours, s=16)
        gap_axes.plot([index - 0.4, index + 0.4], [items[0].tilted_loss - items[0].predicted_loss] * 2, "-",
                      color="black", linewidth=1.5, label="tilted pairs, best (closed form)")  # fmt: skip
    cross_axes.set_yscale("log")
    cross_axes.set_ylabel("max |cos| across blocks\n(other geometries: max cos)")
    cross_axes.set_title("Orthogonality of the blocks")
    margin_axes.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    lowest = min((item.margin for items in cases.values() for item in items), default=1.0)
    span = max(1.0 - lowest, 1e-3)
    margin_axes.set_ylim(lowest - 0.05 * span, 1.0 + 0.1 * span)
    margin_axes.set_ylabel("softmax-code margin ρ(W)")
    margin_axes.set_title("One-vs-rest margin ρ(W) (dashed: ρ ≤ 1 by Radon, the prediction's ρ = 1)")
    gap_axes.set_yscale("symlog", linthresh=LOSS_LINEAR_RANGE)
    gap_axes.axhline(0.0, color="grey", linewidth=1)
    gap_axes.set_ylabel("loss − predicted loss (per sample)")
    gap_axes.set_title("Loss against the prediction's (symmetric log axis)")
    for axes in (match_axes, cross_axes, margin_axes, gap_axes):
        axes.set_xticks(positions, labels, fontsize=7)
        axes.set_xlim(-0.6, len(keys) - 0.4)
        axes.grid(True, axis="y", alpha=0.3)
        for (p, c), members in groups.items():
            blocks = "+".join(map(str, regime_block_sizes(p, c)))
            axes.text(float(np.mean(members)), -0.09, f"p={p}, C={c}\n{blocks}", transform=axes.get_xaxis_transform(),
                      ha="center", va="top", fontsize=8)  # fmt: skip
            if members[0] > 0:
                axes.axvline(members[0] - 0.5, color="grey", linewidth=0.6)
    for axes in (cross_axes, gap_axes):
        for colour, label in OUTCOMES.values():
            axes.scatter([], [], color=colour, s=16, label=label)
        handles, names = axes.get_legend_handles_labels()
        unique = dict(zip(names, handles, strict=True))
        axes.legend(unique.values(), unique.keys(), fontsize=7)
    match_axes.legend(fontsize=7, loc="lower left")
    figure.suptitle("Spherical UFM in the orthoplex regime p + 2 ≤ C ≤ 2p (under each case: its predicted blocks).\n"
                    "Prediction: C − p − 1 antipodal pairs ⊕ a regular simplex of 2p + 2 − C vertices, mutually "
                    "orthogonal", fontsize=11)  # fmt: skip
    return figure
