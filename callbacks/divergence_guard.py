"""Stop training at the first non-finite loss or parameter, before it is evaluated, logged or checkpointed."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from ufm_torch.errors import DivergenceError
from ufm_torch.training.step_boundaries import due_within


class DivergenceGuard(L.Callback):
    """Raises :class:`DivergenceError` when a step's loss or, at a check, any parameter is not finite.

    Whatever the order of the callbacks config, the guard moves itself to the front of ``trainer.callbacks`` at
    ``setup`` (Lightning calls hooks in that list's order and runs ``ModelCheckpoint`` last), so its
    ``on_train_batch_end`` runs before any other callback's: a diverged state is never evaluated, logged or
    checkpointed, and ``metrics.jsonl`` and the last checkpoint keep the last finite state checked.

    Each step only folds ``isfinite(loss)`` into a flag on the device (no host sync). The flag and the parameters
    are read at a check: at least every ``check_every_n_steps`` steps, and at every step at which another callback
    acts (``next_due_step``: evaluations, training curves, checkpoints) and the last step. With fused UFM blocks
    that is every block end k or more steps after the last check. Under DDP every process checks at the same steps
    and ``strategy.reduce_boolean_decision`` makes them agree, so all stop together.
    """

    def __init__(self, check_every_n_steps: int = 50) -> None:
        super().__init__()
        self.check_every_n_steps = check_every_n_steps
        self.last_finite_step = 0
        self.finite_losses: Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Move this guard to the front of ``trainer.callbacks`` (the callbacks already called stay called)."""
        trainer.callbacks.remove(self)
        trainer.callbacks.insert(0, self)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Start counting from the (resumed) step."""
        self.last_finite_step = trainer.global_step
        self.finite_losses = None

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Fold this step's loss into the flag; check when a check is due."""
        step = trainer.global_step
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        step_finite = torch.isfinite(loss).all()
        self.finite_losses = step_finite if self.finite_losses is None else self.finite_losses & step_finite
        due = step - self.last_finite_step >= self.check_every_n_steps
        if due or due_within(trainer, self.last_finite_step, step, exclude=self):
            self.check(trainer, pl_module, step, loss)

    def check(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, loss: Tensor) -> None:
        """Raise :class:`DivergenceError` unless every loss since the last check and every parameter is finite on
        every process.

        The parameter scan is skipped when the step's loss was computed from the present state (a fused UFM block
        that left its logits, ``pl_module.current_logits()``): every entry of H, W and b enters some logit, and
        IEEE arithmetic (inf·0 = NaN, NaN and ±inf propagate through products and sums) makes that loss non-finite
        whenever a parameter is. After an optimiser step (backbones, minibatches) the loss is the state's before it,
        so the parameters are scanned.
        """
        finite = self.finite_losses if self.finite_losses is not None else torch.tensor(True)
        current_logits = getattr(pl_module, "current_logits", None)
        if not callable(current_logits) or current_logits() is None:
            for parameter in pl_module.parameters():
                finite = finite & torch.isfinite(parameter).all()
        self.finite_losses = None
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self.last_finite_step = step
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        value = float(loss.sum()) if loss.numel() else float("nan")
        raise DivergenceError(
            f"training diverged at step {step} (last finite state checked: step {self.last_finite_step}): "
            f"loss = {value:.6g}; lower optimizer.lr (now {lr:g})"
        )
