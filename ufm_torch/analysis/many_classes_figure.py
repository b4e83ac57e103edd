"""The figure of ``experiment=many_classes``: spherical UFMs with more classes than the simplex allows.

:func:`many_classes_figure` draws, against the number of classes C (one job per C and τ, every replica a point), the
trained classifier's minimum angle ``arccos max_{j≠k} cos(w_j, w_k)`` and its softmax-code margin ρ(W) (the final
``collapse/max_cosine`` and ``collapse/softmax_margin`` of :func:`ufm_torch.metrics.network.measure_free_features`),
beside the simplex ETF where it exists (C ≤ p + 1: ``cos = −1/(C−1)``, ``ρ = C/(C−1)``), the Tammes optima of
p = 3 (:data:`TAMMES_ANGLES_P3`) and the best code of :func:`ufm_torch.theory.softmax_code` (Jiang et al. 2024,
ICML, "Generalized neural collapse for a large number of classes": GNC2, the classifier tends to a softmax code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from matplotlib.figure import Figure

from ufm_torch.analysis.laboratory_figures import replica_temperatures, resolved
from ufm_torch.analysis.records import as_float
from ufm_torch.run_folder.jobs import Job
from ufm_torch.theory.softmax_code import softmax_code

MAX_COSINE_TAG, MARGIN_TAG = "collapse/max_cosine", "collapse/softmax_margin"

TAMMES_ANGLES_P3: dict[int, float] = {
    4: math.degrees(math.acos(-1 / 3)), 5: 90.0, 6: 90.0, 7: 77.8695, 8: 74.8585, 9: 70.5288, 10: 66.1468,
    11: 63.4349, 12: 63.4349, 13: 57.1367, 14: 55.6706,
}  # fmt: skip
"""The largest possible minimum angle (degrees) of C points on S² (the Tammes problem), proved optimal: C = 4
tetrahedron, 5 and 6 (Fejes Tóth 1943; the octahedron), 7–9 (Schütte and van der Waerden 1951), 10 and 11 (Danzer
1963/1986), 12 the icosahedron (Fejes Tóth 1943), 13 (Musin and Tarasov 2012), 14 (Musin and Tarasov 2015)."""


def final_values(job: Job, tag: str) -> list[float]:
    """Each replica's ``tag`` at the job's last evaluation."""
    if not job.records:
        return []
    step = max(record["step"] for record in job.records)
    return [as_float(record.get(tag)) for record in job.records if record["step"] == step]


def min_angle_degrees(max_cosine: float) -> float:
    """``arccos`` of the largest pairwise cosine, in degrees: the smallest angle between two rows."""
    return math.degrees(math.acos(max(-1.0, min(1.0, max_cosine))))


def many_classes_figure(jobs: Sequence[Job]) -> Figure:
    """Left: the trained minimum angle between classifier rows against C; right: ρ(W) against C; every replica a
    marker, one colour per temperature τ (``module.temperature``). Each panel with the simplex ETF (C ≤ p + 1),
    softmax_code's best code, the p = 3 Tammes optima (left) and a line where C passes p + 1."""
    figure = Figure(figsize=(11.0, 4.6), layout="constrained")
    angle_axes, margin_axes = figure.subplots(1, 2)
    trained: dict[float, dict[int, tuple[list[float], list[float]]]] = {}
    feature_dims = set()
    for job in jobs:
        num_classes = int(resolved(job.config, "data")["num_classes"])
        feature_dims.add(int(resolved(job.config, "model")["feature_dim"]))
        cosines, margins = final_values(job, MAX_COSINE_TAG), final_values(job, MARGIN_TAG)
        for temperature, cosine, margin in zip(replica_temperatures(job, len(cosines)), cosines, margins, strict=True):
            by_classes = trained.setdefault(temperature, {}).setdefault(num_classes, ([], []))
            by_classes[0].append(cosine)
            by_classes[1].append(margin)
    (feature_dim,) = feature_dims
    classes = sorted({num_classes for by_classes in trained.values() for num_classes in by_classes})
    for index, (temperature, by_classes) in enumerate(sorted(trained.items(), key=lambda item: -item[0])):
        label, marker = f"trained, τ = {temperature:g}", "o^vsD"[index % 5]
        for num_classes, (cosines, margins) in sorted(by_classes.items()):
            angle_axes.plot([num_classes] * len(cosines), [min_angle_degrees(c) for c in cosines], marker,
                            color=f"C{4 + index}", markerfacecolor="none", label=label)  # fmt: skip
            margin_axes.plot([num_classes] * len(margins), margins, marker, color=f"C{4 + index}",
                             markerfacecolor="none", label=label)  # fmt: skip
    codes = [softmax_code(num_classes, feature_dim) for num_classes in classes]
    angle_axes.plot(classes, [min_angle_degrees(float(code.max_cosine)) for code in codes], "-", color="C1",
                    label="softmax_code's best code")  # fmt: skip
    margin_axes.plot(classes, [float(code.margin) for code in codes], "-", color="C1",
                     label="softmax_code's best code")  # fmt: skip
    simplex = [num_classes for num_classes in classes if num_classes <= feature_dim + 1]
    angle_axes.plot(simplex, [min_angle_degrees(-1 / (c - 1)) for c in simplex], "s", color="C2", markersize=9,
                    markerfacecolor="none", label="simplex ETF, cos = −1/(C−1)")  # fmt: skip
    margin_axes.plot(simplex, [c / (c - 1) for c in simplex], "s", color="C2", markersize=9, markerfacecolor="none",
                     label="simplex ETF, ρ = C/(C−1)")  # fmt: skip
    if feature_dim == 3:
        tammes = [num_classes for num_classes in classes if num_classes in TAMMES_ANGLES_P3]
        angle_axes.plot(tammes, [TAMMES_ANGLES_P3[c] for c in tammes], "x", color="C3", markersize=9,
                        label="Tammes optimum (p = 3)")  # fmt: skip
    for axes in (angle_axes, margin_axes):
        axes.axvline(feature_dim + 1.5, color="grey", linestyle="--", linewidth=1)
        axes.text(feature_dim + 1.6, 0.97, "C > p + 1", transform=axes.get_xaxis_transform(), va="top", fontsize=8)
        axes.set_xlabel("number of classes C")
        axes.grid(True, alpha=0.3)
        handles, labels = axes.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        axes.legend(unique.values(), unique.keys(), fontsize=8)
    angle_axes.set_ylabel("min angle between classifier rows (degrees)")
    angle_axes.set_title(f"Spherical UFM, p = {feature_dim}: minimum angle")
    margin_axes.set_ylabel("softmax-code margin ρ(W)")
    margin_axes.set_title("One-vs-rest margin ρ(W) (Jiang et al. 2024)")
    return figure
