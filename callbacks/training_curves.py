"""``train/loss`` and ``train/accuracy`` in every logger, at true optimiser steps on a documented cadence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
from ufm_torch.metrics.tags import LOSS_TAG, TRAIN_ACCURACY_TAG
from ufm_torch.run_folder.event_files import truncate_tree
from ufm_torch.training.step_boundaries import next_required_step

CURVE_TAGS = (LOSS_TAG, TRAIN_ACCURACY_TAG)


class TrainingCurves(L.Callback):
    """Logs the means over replicas of the loss and accuracy that ``training_step`` returns, with
    ``step = trainer.global_step`` (the optimiser steps taken), to every logger.

    Cadence: every step at which the collapse monitor evaluates (after step 0), every multiple of ``every_n_steps``
    when it is set, every step at which a ``ModelCheckpoint`` that declares its steps (``next_due_step``, as
    ``StepCheckpoint``) saves, and the last step. Fused UFM blocks stop at each of these steps, so each value is that
    of the state at its step; on a backbone it is the minibatch's. Values are read from the device only at these
    steps, and averaged over DDP processes. The latest values are :attr:`latest` (the progress bar shows them).

    ``trainer.callback_metrics`` (what ``ModelCheckpoint(monitor=...)`` and ``EarlyStopping`` read, and what a run
    without a monitor reports) receive the values through ``pl_module.log(..., logger=False)`` at the same steps
    except those that are only monitor evaluations: Lightning's ``log`` costs about 1.3 ms a call from a callback
    (its per-call device walk, Lightning issue #20388), which at the monitor's 44 evaluations of a paper run would
    add a tenth to its training time. TensorBoard loggers are flushed before each checkpoint; on resume, what their
    runs hold after the resumed step is dropped first, so no step appears twice.
    """

    def __init__(self, every_n_steps: int | None = None) -> None:
        super().__init__()
        self.every_n_steps = every_n_steps
        self.monitor: CollapseMonitor | None = None
        self.checkpoints: list[ModelCheckpoint] = []
        self.logged_steps: list[int] = []
        self.latest: dict[str, float] = {}

    def next_due_step(self, step: int) -> int | None:
        """The first multiple of ``every_n_steps`` after ``step`` (None when unset)."""
        interval = self.every_n_steps
        return (step // interval + 1) * interval if interval else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Find the collapse monitor and the checkpoint callbacks (whose steps are logged too); without a monitor,
        tidy a resumed TensorBoard folder here (the monitor tidies the whole folder itself before it opens its runs)."""
        self.monitor = next((cb for cb in trainer.callbacks if isinstance(cb, CollapseMonitor)), None)
        self.checkpoints = [cb for cb in trainer.callbacks if isinstance(cb, ModelCheckpoint)]
        if trainer.global_step > 0 and trainer.is_global_zero and self.monitor is None:
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    truncate_tree(Path(logger.log_dir), trainer.global_step)

    def feeds_callback_metrics(self, trainer: L.Trainer, step: int) -> bool:
        """Whether ``step`` is a multiple of ``every_n_steps``, a declared checkpoint step or the last step."""
        if self.every_n_steps and step % self.every_n_steps == 0:
            return True
        if any(next_required_step(checkpoint, step - 1) == step for checkpoint in self.checkpoints):
            return True
        return trainer.max_steps > 0 and step >= trainer.max_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the step's curves when it is on the cadence (class docstring)."""
        step = trainer.global_step
        feeds_callback_metrics = self.feeds_callback_metrics(trainer, step)
        evaluated = self.monitor is not None and self.monitor.is_evaluation_step(step)
        if not isinstance(outputs, dict) or not (feeds_callback_metrics or evaluated):
            return
        values = torch.stack([outputs[tag].detach().to(torch.float64) for tag in CURVE_TAGS])
        values = trainer.strategy.reduce(values, reduce_op="mean")
        self.latest = dict(zip(CURVE_TAGS, values.cpu().tolist(), strict=True))
        for logger in trainer.loggers:
            logger.log_metrics(self.latest, step)
        if feeds_callback_metrics:
            pl_module.log_dict(dict(zip(CURVE_TAGS, values, strict=True)), logger=False)
        self.logged_steps.append(step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Flush the TensorBoard loggers, so that the curves up to a checkpoint survive a kill after it."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.flush()
