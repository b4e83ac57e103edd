"""Lightning's ``ModelCheckpoint`` that declares its steps, so that fused blocks stop at each one."""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (every argument passes through) that also answers ``next_due_step`` for
    ``every_n_train_steps = k``: the next multiple of k (:mod:`ufm_torch.training.step_boundaries`).

    Under manual optimisation Lightning saves at ``on_train_batch_end`` when ``global_step % k == 0``, that is the
    state after step k, as under automatic optimisation, and warns that the state is the one after the optimiser
    step. That is the state wanted here (``tests/test_checkpoints.py`` checks that ``step=k.ckpt`` holds the
    parameters after k steps), so that one warning is silenced around the call, and nothing else.
    """

    def __init__(self, every_n_train_steps: int | None = None, **kwargs: Any) -> None:
        super().__init__(every_n_train_steps=every_n_train_steps, **kwargs)
        self.every_n_train_steps = every_n_train_steps or 0

    def next_due_step(self, step: int) -> int | None:
        """The first multiple of ``every_n_train_steps`` after ``step`` (None when it is 0)."""
        interval = self.every_n_train_steps
        return (step // interval + 1) * interval if interval else None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Lightning's save at multiples of ``every_n_train_steps``, without its manual-optimisation warning."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
