"""experiment=regularized and experiment=minority_collapse: each sweep trains to the oracle's optimum and draws its
figure; the figure's measures are exact on known Gram matrices."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_ufm_train
from ufm_torch.analysis.laboratory_figures import (
    final_weight,
    gram_of,
    job_problem,
    mean_squared_norm,
    minority_angle,
)
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
        "experiment=regularized", f"hydra.sweep.dir={folder}", "decay=0.05,0.3",
        "trainer.max_steps=4000", "~callbacks.progress", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (folder / "figures" / "regularization.png").stat().st_size > 0
    jobs = read_jobs(folder)
    assert len(jobs) == 4
    for job in jobs:
        trained = mean_squared_norm(gram_of(final_weight(job)))[0]
        optimum = mean_squared_norm(solve_optimum(job_problem(job.config)).classifier_gram.numpy())
        assert trained == pytest.approx(optimum, rel=1e-6, abs=1e-9), job.name
    assert {bool(mean_squared_norm(gram_of(final_weight(job)))[0] < 1e-9) for job in jobs} == {True, False}


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
