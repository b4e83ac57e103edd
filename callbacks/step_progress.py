"""A progress bar over optimiser steps (``trainer.max_steps``), not batches: one batch may hold many fused steps."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from ufm_torch.callbacks.training_curves import TrainingCurves


class StepProgressBar(TQDMProgressBar):
    """TQDM bar whose position is ``global_step`` and whose total is ``max_steps``; redrawn at most every
    ``refresh_rate`` steps (and at the end), so it costs nothing measurable per step."""

    def __init__(self, refresh_rate: int = 100) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self._drawn_step = 0

    @property
    def train_description(self) -> str:
        """The bar's label from its first draw: ``Steps`` (Lightning's is "Training", then "Epoch N")."""
        return "Steps"

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Size the bar once per fit: the current step out of ``max_steps``. Lightning's own bar is reset and relabelled
        "Epoch N" at every epoch, which drew a line per epoch (60 for 300 steps of a backbone under ``ddp_cpu``);
        this bar spans every epoch, so later epochs leave it alone."""
        bar = self.train_progress_bar
        if bar.total != trainer.max_steps:
            bar.reset(total=trainer.max_steps)
            bar.n = self._drawn_step = trainer.global_step
            bar.refresh()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Move the bar to ``global_step`` when ``refresh_rate`` steps have passed since the last redraw."""
        step = trainer.global_step
        if not self.is_enabled or (step - self._drawn_step < self.refresh_rate and step != trainer.max_steps):
            return
        self._drawn_step = step
        self.train_progress_bar.n = step
        self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float | dict]:
        """Lightning's bar metrics and the latest ``train/loss`` and ``train/accuracy`` of ``TrainingCurves``
        (already on the host: no device read for the bar)."""
        curves = next((cb for cb in trainer.callbacks if isinstance(cb, TrainingCurves)), None)
        return super().get_metrics(trainer, pl_module) | (curves.latest if curves is not None else {})
