"""experiment=regularized and experiment=minority_collapse: each sweep trains to the oracle's optimum and draws its
figure; the figure's measures are exact on known Gram matrices."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_ufm_train, ufm_train_in_process
from tests.test_sweeps import summary_rows
from ufm_torch.analysis.laboratory_figures import (
    final_weight,
    gram_of,
    job_problem,
    mean_squared_norm,
    minority_angle,
    replica_problems,
)
from ufm_torch.analysis.report import write_report, write_run_report
from ufm_torch.run_folder.jobs import read_jobs
from ufm_torch.theory.optimum import solve_optimum


def simplex_gram(num_classes: int) -> np.ndarray:
    """``I − 11ᵀ/C``: the Gram of a simplex ETF's rows (unit scale)."""
    return np.eye(num_classes) - 1.0 / num_classes


def test_minority_angle_of_a_simplex_merged_and_vanished_classifiers() -> None:
    assert minority_angle(simplex_gram(4), [2, 3]) == pytest.approx(math.degrees(math.acos(-1 / 3)))
    merged = simplex_gram(4)
    merged[2, 3] = merged[3, 2] = merged[2, 2]
    assert minority_angle(merged, [2, 3]) == pytest.approx(0.0, abs=1e-6)
    vanished = simplex_gram(4)
    vanished[2:, :] = vanished[:, 2:] = 0.0
    assert math.isnan(float(minority_angle(vanished, [2, 3])))
    assert mean_squared_norm(3.0 * simplex_gram(4)) == pytest.approx(3.0 * 0.75)


@pytest.mark.slow
def test_regularized_sweep_reaches_the_oracle_on_both_sides_of_the_threshold(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    result = run_ufm_train(
        "experiment=regularized", f"hydra.sweep.dir={folder}", "decay=[0.05,0.3]",
        "trainer.max_steps=4000", "~callbacks.progress", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (folder / "figures" / "regularization.png").stat().st_size > 0
    jobs = read_jobs(folder)
    assert len(jobs) == 2
    norms = []
    for job in jobs:
        trained = mean_squared_norm(gram_of(final_weight(job)))
        for norm, problem in zip(trained, replica_problems(job), strict=True):
            assert problem.lambda_weight == problem.lambda_features
            optimum = mean_squared_norm(solve_optimum(problem).classifier_gram.numpy())
            assert norm == pytest.approx(optimum, rel=1e-6, abs=1e-9), job.name
            norms.append(norm)
    assert {bool(norm < 1e-9) for norm in norms} == {True, False}
    assert not (folder / "0" / "figures").exists()  # report.lazy: ufm-plot draws the rest
    write_report(folder, tensorboard=False)
    assert (folder / "0" / "figures" / "collapse.png").stat().st_size > 0
    drawn = {path.name for path in (folder / "figures").glob("final_vs_*.png")}
    assert drawn == {"final_vs_module.loss.png", "final_vs_module.classifier_decay.png"}  # λ_H = λ_W: drawn once


def test_phase_diagram_draws_its_figure_at_once_and_leaves_each_jobs_report_to_ufm_plot(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    grid = "[0.01,0.1,0.3]"
    result = ufm_train_in_process(
        "experiment=phase_diagram", f"hydra.sweep.dir={folder}", f"module.classifier_decay={grid}",
        f"module.feature_decay={grid}", "trainer.max_steps=600", "callbacks.progress.refresh_rate=0",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (folder / "figures").iterdir()) == ["phase_diagram.png"]
    assert not (folder / "0" / "figures").exists() and f"ufm-plot {folder}" in result.stdout
    rows = summary_rows(folder)
    assert len(rows) == 18 and {row["module.loss"] for row in rows} == {"mean_squared", "cross_entropy"}
    assert {(row["module.classifier_decay"], row["module.feature_decay"]) for row in rows} == {
        (w, h) for w in ("0.01", "0.1", "0.3") for h in ("0.01", "0.1", "0.3")
    }
    assert write_run_report(folder / "0", tensorboard=False).written == [folder / "0" / "figures" / "collapse.png"]


@pytest.mark.slow
def test_minority_collapse_sweep_follows_the_oracle(tmp_path: Path) -> None:
    folder = tmp_path / "sweep"
    result = run_ufm_train(
        "experiment=minority_collapse", f"hydra.sweep.dir={folder}", "data.imbalance_ratio=1,20",
        "data.samples_per_class=100", "trainer.max_steps=3000", "~callbacks.progress", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (folder / "figures" / "minority_collapse.png").stat().st_size > 0
    for job in read_jobs(folder):
        trained = minority_angle(gram_of(final_weight(job)), [2, 3])[0]
        optimum = minority_angle(solve_optimum(job_problem(job.config)).classifier_gram.numpy(), [2, 3])
        assert trained == pytest.approx(float(optimum), abs=0.5), job.name
