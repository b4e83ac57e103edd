"""The divergence guard checks before anything is evaluated, whatever the callback order; on backbones it reads
the device only every k steps and at steps where another callback acts; all DDP processes follow one decision."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
from ufm_torch.callbacks.divergence_guard import DivergenceGuard
from ufm_torch.callbacks.training_curves import TrainingCurves
from ufm_torch.data import DigitsDataModule, UFMDataModule
from ufm_torch.errors import DivergenceError
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.models import MLP, UnconstrainedFeatures
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.training.module import CollapseModule


def trainer_with(tmp_path: Path, max_steps: int, callbacks: list[L.Callback]) -> L.Trainer:
    """A CPU Trainer without logger, checkpoints, bar or summary."""
    return L.Trainer(
        max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", precision="64-true", default_root_dir=tmp_path,
        callbacks=callbacks,
    )


def digits_module() -> tuple[CollapseModule, DigitsDataModule]:
    """A small MLP on four digit classes."""
    datamodule = DigitsDataModule(num_classes=4, samples_per_class=10, batch_size=10, eval_batch_size=16)
    network = MLP(64, 4, feature_dim=8, width=16, depth=2)
    return CollapseModule(network, functools.partial(torch.optim.SGD, lr=0.05), loss="mean_squared"), datamodule


@pytest.fixture
def decisions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Steps at which the single-device strategy was asked for a decision (each one a read of the device)."""
    asked: list[int] = []
    original = SingleDeviceStrategy.reduce_boolean_decision

    def counting(self, decision, all=True):
        asked.append(self.lightning_module.trainer.global_step)
        return original(self, decision, all)

    monkeypatch.setattr(SingleDeviceStrategy, "reduce_boolean_decision", counting)
    return asked


def test_a_guard_listed_last_still_stops_before_the_monitor_sees_the_diverged_state(tmp_path: Path) -> None:
    model = UnconstrainedFeatures(3, 3, 15, init_scale=1e-2, seed=0)
    module = CollapseModule(model, functools.partial(torch.optim.SGD, lr=0.3), fused_steps=1000)
    guard = DivergenceGuard(check_every_n_steps=50)
    monitor = CollapseMonitor(str(tmp_path), points_per_decade=10)
    trainer = trainer_with(tmp_path, 5000, [monitor, TrainingCurves(), guard])
    with pytest.raises(DivergenceError, match="diverged at step"):
        trainer.fit(module, datamodule=UFMDataModule(3, 3))
    assert trainer.callbacks[0] is guard
    records = read_records(tmp_path / "metrics.jsonl")
    assert len(records) > 3
    assert all(math.isfinite(value) for record in records for key, value in record.items() if "/" in key)
    assert records[-1]["step"] == guard.last_finite_step


def test_backbone_checks_read_the_device_only_every_k_steps(tmp_path: Path, decisions: list[int]) -> None:
    module, datamodule = digits_module()
    trainer_with(tmp_path, 100, [DivergenceGuard(check_every_n_steps=25)]).fit(module, datamodule=datamodule)
    assert decisions == [25, 50, 75, 100]


def test_backbone_checks_also_come_at_every_evaluation(tmp_path: Path, decisions: list[int]) -> None:
    module, datamodule = digits_module()
    callbacks = [CollapseMonitor(str(tmp_path), points_per_decade=2), DivergenceGuard(check_every_n_steps=30)]
    trainer_with(tmp_path, 90, callbacks).fit(module, datamodule=datamodule)
    assert evaluation_steps(90, points_per_decade=2) == [0, 1, 3, 10, 32, 90]
    assert decisions == [1, 3, 10, 32, 62, 90], "each evaluation, then 30 steps after the last check, the last step"


def test_every_process_stops_when_one_diverged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP the decision is ``reduce_boolean_decision(finite, all=True)``: a process whose own state is finite
    raises as soon as another's is not (here the reduction reports a non-finite process)."""
    monkeypatch.setattr(SingleDeviceStrategy, "reduce_boolean_decision", lambda self, decision, all=True: False)
    module, datamodule = digits_module()
    with pytest.raises(DivergenceError, match="diverged at step 10"):
        trainer_with(tmp_path, 100, [DivergenceGuard(check_every_n_steps=10)]).fit(module, datamodule=datamodule)
