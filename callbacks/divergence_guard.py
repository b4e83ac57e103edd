"""Stop training at the first non-finite loss or parameter, before a checkpoint can save it."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ufm_torch.run_status import DivergenceError


class DivergenceGuard(L.Callback):
    """Raises :class:`DivergenceError` when the step's loss or any parameter is not finite.

    Lightning runs ``ModelCheckpoint`` after every other callback, so the guard fires before the diverged
    state could be checkpointed; the last finite checkpoint and ``metrics.jsonl`` stay as they were.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        super().__init__()
        self.check_every_n_steps = check_every_n_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Check the loss returned by ``training_step`` and the parameters after the update."""
        step = trainer.global_step
        if step % self.check_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        finite = torch.isfinite(loss).all()
        for parameter in pl_module.parameters():
            finite = finite & torch.isfinite(parameter).all()
        if not bool(finite):
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            raise DivergenceError(
                f"training diverged at step {step}: loss = {float(loss.detach().sum()):.6g}; lower optimizer.lr "
                f"(now {lr:g})"
            )
