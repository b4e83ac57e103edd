"""Stop training at the first non-finite loss or parameter, before it is evaluated or checkpointed."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from ufm_torch.errors import DivergenceError


class DivergenceGuard(L.Callback):
    """Raises :class:`DivergenceError` when the batch's loss or any parameter is not finite.

    It runs before the collapse monitor (first in the callbacks config) and Lightning runs ``ModelCheckpoint``
    after every other callback, so the last finite checkpoint and ``metrics.jsonl`` stay as they were. With fused
    full-batch steps the check runs at the end of each block; the message then names the last step seen finite.
    """

    def __init__(self, check_every_n_steps: int = 1) -> None:
        super().__init__()
        self.check_every_n_steps = check_every_n_steps
        self.last_finite_step = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Check the loss returned by ``training_step`` and the parameters after the update."""
        step = trainer.global_step
        if step % self.check_every_n_steps:
            return
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        finite = torch.isfinite(loss).all()
        for parameter in pl_module.parameters():
            finite = finite & torch.isfinite(parameter).all()
        if bool(finite):
            self.last_finite_step = step
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise DivergenceError(
            f"training diverged at step {step} (last finite state: step {self.last_finite_step}): "
            f"loss = {float(loss.sum()):.6g}; lower optimizer.lr (now {lr:g})"
        )
