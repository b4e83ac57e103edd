"""Losses and accuracies reach every logger at true optimiser steps, on the documented cadence."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import fit_in_process
from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
from ufm_torch.callbacks.step_checkpoint import StepCheckpoint
from ufm_torch.callbacks.step_progress import StepProgressBar
from ufm_torch.callbacks.training_curves import TrainingCurves
from ufm_torch.data import DigitsDataModule, UFMDataModule
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.metrics.tags import LOSS_TAG, TRAIN_ACCURACY_TAG
from ufm_torch.models import MLP, UnconstrainedFeatures
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.training.module import CollapseModule


def fit_with_loggers(tmp_path: Path, module: CollapseModule, datamodule, max_steps: int, every: int | None) -> None:
    """Train with the monitor (5 points per decade), the curves (every ``every`` steps), a TensorBoard and a CSV
    logger whose ``log_every_n_steps`` is 1, so that any batch-indexed logging would show."""
    trainer = L.Trainer(
        max_steps=max_steps, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", precision="64-true", default_root_dir=tmp_path, log_every_n_steps=1,
        logger=[TensorBoardLogger(tmp_path, name="tb", version=""), CSVLogger(tmp_path, name="csv", version="")],
        callbacks=[CollapseMonitor(str(tmp_path), points_per_decade=5), TrainingCurves(every_n_steps=every)],
    )
    trainer.fit(module, datamodule=datamodule)


def expected_steps(max_steps: int, every: int | None) -> list[int]:
    """The cadence: the monitor's evaluations after step 0, multiples of ``every`` and the last step."""
    steps = set(evaluation_steps(max_steps, points_per_decade=5)) - {0}
    steps |= set(range(every, max_steps + 1, every)) if every else set()
    return sorted(steps | {max_steps})


def tensorboard_curve(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a scalar tag in one TensorBoard run."""
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def csv_curve(path: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a column of Lightning's CSV log, where it is filled."""
    with path.open() as handle:
        return [(int(row["step"]), float(row[tag])) for row in csv.DictReader(handle) if row.get(tag)]


@pytest.mark.parametrize("every", [None, 45])
def test_ufm_curves_are_at_true_steps_and_equal_the_monitors_mean(tmp_path: Path, every: int | None) -> None:
    model = UnconstrainedFeatures(3, 3, 15, init_scale=[1e-1, 1e-2], replicas=2, seed=0)
    module = CollapseModule(model, functools.partial(torch.optim.SGD, lr=0.05), fused_steps=1000)
    fit_with_loggers(tmp_path, module, UFMDataModule(3, 3), max_steps=300, every=every)
    steps = expected_steps(300, every)
    tensorboard = tensorboard_curve(tmp_path / "tb", LOSS_TAG)
    assert [step for step, _ in tensorboard] == steps
    assert [step for step, _ in csv_curve(tmp_path / "csv" / "metrics.csv", LOSS_TAG)] == steps
    monitored = {}
    for record in read_records(tmp_path / "metrics.jsonl"):
        monitored.setdefault(record["step"], []).append(record[LOSS_TAG])
    for step, value in tensorboard:
        if step in monitored:
            assert value == pytest.approx(sum(monitored[step]) / 4, rel=1e-6), step
    accuracy = tensorboard_curve(tmp_path / "tb", TRAIN_ACCURACY_TAG)
    assert [step for step, _ in accuracy] == steps and all(0 <= value <= 1 for _, value in accuracy)


def test_backbone_curves_are_at_true_steps_in_every_logger(tmp_path: Path) -> None:
    datamodule = DigitsDataModule(num_classes=4, samples_per_class=10, batch_size=10, eval_batch_size=16)
    network = MLP(64, 4, feature_dim=8, width=16, depth=2)
    module = CollapseModule(network, optimizer=functools.partial(torch.optim.SGD, lr=0.05), loss="mean_squared")
    fit_with_loggers(tmp_path, module, datamodule, max_steps=40, every=7)
    steps = expected_steps(40, 7)
    assert [step for step, _ in tensorboard_curve(tmp_path / "tb", LOSS_TAG)] == steps
    assert [step for step, _ in csv_curve(tmp_path / "csv" / "metrics.csv", LOSS_TAG)] == steps
    with (tmp_path / "csv" / "metrics.csv").open() as handle:
        logged_steps = {int(row["step"]) for row in csv.DictReader(handle)}
    assert logged_steps <= set(evaluation_steps(40, points_per_decade=5)) | set(steps), "a batch index was logged"


def test_curves_declare_their_steps_to_fused_blocks() -> None:
    curves = TrainingCurves(every_n_steps=250)
    assert [curves.next_due_step(step) for step in (0, 249, 250, 251)] == [250, 250, 500, 500]
    assert TrainingCurves().next_due_step(10) is None


class LossAtSaves(L.Callback):
    """``callback_metrics["train/loss"]`` (and its dtype) whenever a checkpoint is saved, by step."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, torch.dtype]] = {}

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        value = trainer.callback_metrics[LOSS_TAG]
        self.seen[trainer.global_step] = (float(value), value.dtype)


def test_callback_metrics_and_the_bar_hold_the_curves_at_checkpoints_and_at_the_end(tmp_path: Path) -> None:
    """What ``ModelCheckpoint(monitor=...)`` and the progress bar read: the curve's value at each checkpoint step and
    at the last step (float64), while ``training_step`` itself logs nothing (``self.log`` only from the curves)."""
    model = UnconstrainedFeatures(3, 3, 15, init_scale=[1e-1, 1e-2], replicas=2, seed=0)
    module = CollapseModule(model, functools.partial(torch.optim.SGD, lr=0.05), fused_steps=1000)
    logging_hooks: list[tuple[str, int]] = []
    original_log = CollapseModule.log

    def recording_log(self: CollapseModule, name: str, *args, **kwargs) -> None:
        logging_hooks.append((self._current_fx_name, self.trainer.global_step))
        original_log(self, name, *args, **kwargs)

    curves, saves, bar = TrainingCurves(), LossAtSaves(), StepProgressBar(refresh_rate=50)
    checkpoint = StepCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=100, save_top_k=-1)
    trainer = L.Trainer(
        max_steps=250, enable_model_summary=False, accelerator="cpu", precision="64-true", default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path, name="tb", version=""),
        callbacks=[CollapseMonitor(str(tmp_path), points_per_decade=5), curves, checkpoint, saves, bar],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CollapseModule, "log", recording_log)
        trainer.fit(module, datamodule=UFMDataModule(3, 3))
    curve = dict(tensorboard_curve(tmp_path / "tb", LOSS_TAG))
    assert sorted(saves.seen) == [100, 200]
    for step, (value, dtype) in saves.seen.items():
        assert dtype == torch.float64 and value == pytest.approx(curve[step], rel=1e-6), step
    assert logging_hooks == [("on_train_batch_end", step) for step in (100, 100, 200, 200, 250, 250)]
    assert float(trainer.callback_metrics[LOSS_TAG]) == curves.latest[LOSS_TAG]
    assert float(trainer.callback_metrics[TRAIN_ACCURACY_TAG]) == curves.latest[TRAIN_ACCURACY_TAG]
    assert bar.get_metrics(trainer, module)[LOSS_TAG] == curves.latest[LOSS_TAG] == pytest.approx(curve[250], rel=1e-6)


def test_a_run_without_a_monitor_reports_the_last_curve_point(tmp_path: Path) -> None:
    """``build_and_fit``'s final metrics without a monitor are ``callback_metrics``: the curves at the last step."""
    final = fit_in_process(tmp_path, "~callbacks.collapse_monitor", "trainer.max_steps=300", "trainer.accelerator=cpu")
    assert final["step"] == 300
    final = final["trainer"]
    curve = dict(tensorboard_curve(tmp_path / "tb", LOSS_TAG))
    assert sorted(final) == [TRAIN_ACCURACY_TAG, LOSS_TAG] and max(curve) == 300
    assert final[LOSS_TAG] == pytest.approx(curve[300], rel=1e-6) and final[TRAIN_ACCURACY_TAG] == 1.0
