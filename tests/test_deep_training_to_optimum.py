"""Deep UFMs trained by ``ufm-train``'s own path (fused full-batch descent, the collapse monitor) reach the global
optima of ``ufm_torch.theory``: the deep linear closed form (Dang et al. 2023) at depths 2 and 3 on balanced and
imbalanced classes, and the two-class ReLU DNC optimum (Súkeník et al. 2023) at depth 3."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.helpers import fit_in_process
from ufm_torch.run_folder.metrics_log import read_records

QUIET = ("callbacks.progress.refresh_rate=0", "logger=none", "model=deep_ufm", "module.loss=mean_squared")


def decays(value: float) -> tuple[str, ...]:
    """Every decay λ_H1 = λ_W (hidden layers included) set to ``value``."""
    return (f"module.feature_decay={value}", f"module.classifier_decay={value}")


@pytest.mark.parametrize("depth", [2, 3])
@pytest.mark.parametrize("sizes", ["5", "[6,6,3,3]"], ids=["balanced", "imbalanced"])
def test_deep_linear_ufms_reach_the_closed_form(tmp_path: Path, depth: int, sizes: str) -> None:
    final = fit_in_process(
        tmp_path, *QUIET, *decays(1e-3), "model.activation=linear", f"model.depth={depth}", "data.num_classes=4",
        f"data.samples_per_class={sizes}", "model.feature_dim=8", "model.init_scale=1.5", "model.replicas=2",
        "optimizer.lr=1.0", "trainer.max_steps=20000",
    )  # fmt: skip
    for replica in final["replicas"]:
        assert -1e-12 < replica["optimum/loss_gap"] < 1e-8
        assert replica["optimum/classifier_gram"] < 1e-6 and replica["optimum/feature_gram"] < 1e-6


@pytest.mark.slow
def test_a_two_class_relu_ufm_of_depth_3_reaches_the_dnc_optimum(tmp_path: Path) -> None:
    """Convergence is sublinear here (the loss gap is about 3e-7 after 40 000 steps and 2e-8 after 120 000): the
    optimum's H_1 class means are not unique (``docs/deep_ufm_theory.md``), so the run drifts along a flat set."""
    final = fit_in_process(
        tmp_path, *QUIET, *decays(1e-3), "model.activation=relu", "model.depth=3", "data.num_classes=2",
        "data.samples_per_class=5", "model.feature_dim=8", "model.width=64", "model.init_scale=1.0",
        "optimizer.lr=1.0", "trainer.max_steps=120000",
    )  # fmt: skip
    (replica,) = final["replicas"]
    assert -1e-12 < replica["optimum/loss_gap"] < 1e-7
    assert replica["optimum/classifier_gram"] < 1e-2 and replica["optimum/feature_gram"] < 1e-2
    assert replica["collapse/nc1"] < 1e-6 and replica["collapse/dnc2"] < 1e-2 and replica["collapse/dnc3"] < 1e-2


def test_outside_the_oracles_assumptions_one_line_says_so_and_no_optimum_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lightning = logging.getLogger("lightning.pytorch")
    lightning.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            fit_in_process(tmp_path, *QUIET, "module.loss=cross_entropy", *decays(1e-3), "trainer.max_steps=20")
    finally:
        lightning.removeHandler(caplog.handler)
    said = [record.getMessage() for record in caplog.records if "no optimum/* metrics" in record.getMessage()]
    assert len(said) == 1 and "module.loss=mean_squared" in said[0]
    records = read_records(tmp_path / "metrics.jsonl", every_layer=True)
    assert records and not any(tag.startswith("optimum/") for record in records for tag in record)
