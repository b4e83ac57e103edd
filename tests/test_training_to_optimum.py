"""Training reaches the known global optimum of each regularised UFM: the closed forms of Tirer & Bruna, Zhou et al.,
Zhu et al. and Dang et al. on balanced classes (classifier Gram to 1e-6), the oracle on imbalanced ones (1e-5).

Each case is a whole ``build_and_fit`` run of the composed config (C = 4, N = 5, p = 8, ε = 0.1, plain gradient
descent, 5 000 steps); the trained W, class means and b are read from the run's ``last.ckpt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import fit_in_process
from ufm_torch.theory.optimum import (
    class_mean_gram,
    cross_entropy_optimum,
    mse_optimum_imbalanced_without_bias,
    mse_optimum_with_free_bias,
    mse_optimum_with_regularised_bias,
    mse_optimum_without_bias,
)

C, N, P, DECAY = 4, 5, 8, 0.01
SHAPE = [f"data.num_classes={C}", f"data.samples_per_class={N}", f"model.feature_dim={P}", "model.init_scale=0.1"]
DECAYS = [f"module.feature_decay={DECAY}", f"module.classifier_decay={DECAY}"]


def train(tmp_path: Path, *overrides: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Final metrics (of its one replica) and final parameters (W, the class-mean Gram, b) of one run with
    ``overrides``."""
    final = fit_in_process(
        tmp_path, "callbacks.progress.refresh_rate=0", "trainer.max_steps=5000", "logger=none", *SHAPE, *overrides
    )
    (metrics,) = final["replicas"]
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    return metrics, state


def relative_error(gram: torch.Tensor, optimal: torch.Tensor) -> float:
    """``‖G − G*‖_F/‖G*‖_F``, or ``‖G‖_F`` when ``G* = 0``."""
    scale = torch.linalg.matrix_norm(optimal)
    difference = torch.linalg.matrix_norm(gram - optimal)
    return float(difference / scale) if scale > 0 else float(torch.linalg.matrix_norm(gram))


BALANCED = {
    "mse_no_bias (Tirer & Bruna)": (
        ["module.loss=mean_squared", "optimizer.lr=1.0", "model.bias=false"],
        mse_optimum_without_bias(C, N, DECAY, DECAY),
    ),
    "mse_free_bias (Zhou et al.)": (
        ["module.loss=mean_squared", "optimizer.lr=1.0"],
        mse_optimum_with_free_bias(C, N, DECAY, DECAY),
    ),
    "mse_bias_decay_large_beta": (
        ["module.loss=mean_squared", "optimizer.lr=1.0", "module.bias_decay=0.05"],
        mse_optimum_with_regularised_bias(C, N, DECAY, DECAY, 0.05),
    ),
    "mse_bias_decay_small_beta": (
        ["module.loss=mean_squared", "optimizer.lr=1.0", "module.bias_decay=0.5"],
        mse_optimum_with_regularised_bias(C, N, DECAY, DECAY, 0.5),
    ),
    "cross_entropy (Zhu et al.)": (
        ["module.loss=cross_entropy", "optimizer.lr=2.0", "module.bias_decay=0.01"],
        cross_entropy_optimum(C, N, DECAY, DECAY),
    ),
}


@pytest.mark.parametrize("case", list(BALANCED))
def test_training_reaches_the_closed_form_optimum(case: str, tmp_path: Path) -> None:
    overrides, optimum = BALANCED[case]
    metrics, state = train(tmp_path, *DECAYS, *overrides)
    weight = state["network.head.weight"][0]
    assert relative_error(weight @ weight.T, optimum.classifier_gram) < 1e-6
    labels = torch.arange(C).repeat_interleave(N)
    means_gram = class_mean_gram(state["network.features"][0], labels, C)
    assert relative_error(means_gram, optimum.feature_gram) < 1e-6
    assert torch.allclose(state["network.head.bias"][0], optimum.bias, atol=1e-6)
    assert metrics["optimum/loss_gap"] < 1e-10 and metrics["optimum/classifier_gram"] < 1e-6


def test_past_the_threshold_everything_collapses_to_zero(tmp_path: Path) -> None:
    """Cross-entropy with Cβ ≥ 1 (λ = 0.2: β = √5·0.2 ≈ 0.45 ≥ 1/C): the only minimiser is W = H = 0."""
    metrics, state = train(tmp_path, "module.loss=cross_entropy", "optimizer.lr=2.0",
                           "module.feature_decay=0.2", "module.classifier_decay=0.2")  # fmt: skip
    assert torch.linalg.matrix_norm(state["network.head.weight"][0]) < 1e-6
    assert metrics["optimum/classifier_gram"] < 1e-10


def test_imbalanced_mse_without_bias_reaches_dang_et_al(tmp_path: Path) -> None:
    counts = (8, 8, 2, 2)
    optimum = mse_optimum_imbalanced_without_bias(counts, DECAY, DECAY)
    metrics, state = train(tmp_path, *DECAYS, "module.loss=mean_squared", "optimizer.lr=1.0", "model.bias=false",
                           "data.samples_per_class=[8,8,2,2]")  # fmt: skip
    weight = state["network.head.weight"][0]
    assert relative_error(weight @ weight.T, optimum.classifier_gram) < 1e-5
    assert metrics["optimum/loss_gap"] < 1e-8


def test_minority_collapse_under_cross_entropy_follows_the_oracle(tmp_path: Path) -> None:
    metrics, _ = train(tmp_path, *DECAYS, "module.loss=cross_entropy", "optimizer.lr=2.0",
                       "data.samples_per_class=10", "data.imbalance_ratio=5")  # fmt: skip
    assert metrics["optimum/classifier_gram"] < 1e-5 and metrics["optimum/feature_gram"] < 1e-5
    assert metrics["strong_collapse/snc1"] is None, "SNC needs one N: undefined on unbalanced classes"
