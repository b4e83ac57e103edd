"""The LightningModule: training steps of a network (UFM or backbone) with a linear head against one-hot labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import Tensor, nn

from ufm_torch.metrics.tags import LOSS_TAG, TRAIN_ACCURACY_TAG
from ufm_torch.models import default_loss_name, has_free_features
from ufm_torch.training.fused_descent import closed_form_steps
from ufm_torch.training.lightning_steps import sees_every_optimizer_step
from ufm_torch.training.losses import LOSSES
from ufm_torch.training.step_boundaries import steps_until_boundary

StepOutput = dict[str, Tensor]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class CollapseModule(L.LightningModule):
    """Trains ``network`` (exposing ``head``, ``forward_features`` and ``forward``) against one-hot labels.

    The loss of a step is the sum over replicas of the per-replica loss, so every replica receives exactly the
    gradient it would get alone. ``optimizer`` is a partial (Hydra ``_partial_: true``) that receives the
    parameters; ``loss`` names one of :data:`ufm_torch.training.losses.LOSSES` (None: :func:`default_loss_name`).
    ``training_step`` returns ``{"loss": Σ_r loss_r, "train/loss": mean_r loss_r, "train/accuracy": mean_r acc_r}``
    for the state at ``global_step`` (after a fused block, the state it leaves). The loggers receive these at true
    optimiser steps from :class:`ufm_torch.callbacks.training_curves.TrainingCurves`; ``self.log`` feeds only the
    progress bar and ``callback_metrics``, so no logger sees Lightning's batch counter as a step.

    Backbones train with Lightning's automatic optimisation. The UFM with the paper's loss on full batches takes
    up to ``fused_steps`` closed-form gradient steps per batch (:mod:`ufm_torch.training.fused_descent`), stopping
    at every step a callback must see (:mod:`ufm_torch.training.step_boundaries`); ``global_step`` counts each.
    The logits of the state a block leaves are kept: :meth:`current_logits` hands them to the collapse monitor
    (no forward pass at an evaluation) and the next block starts from them (no product to start it).
    """

    def __init__(
        self, network: nn.Module, optimizer: OptimizerFactory, loss: str | None = None, fused_steps: int = 1000
    ) -> None:
        super().__init__()
        loss = loss or default_loss_name(network)
        if loss not in LOSSES:
            raise ValueError(f"module.loss={loss!r} is not one of {sorted(LOSSES)}")
        self.network = network
        self.optimizer_factory = optimizer
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]
        self.fused_steps = fused_steps
        self.automatic_optimization = not has_free_features(network)
        self.block_logits: tuple[tuple[int, ...], Tensor] | None = None

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits of the network for a batch of inputs."""
        return self.network(inputs)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> StepOutput:
        """One optimiser step (or a fused block of full-batch steps for the UFM); returns the summed loss and the
        means over replicas of loss and accuracy (class docstring)."""
        inputs, labels = batch
        if self.automatic_optimization:
            logits = self.network(inputs)
            return self._step_output(self.loss_fn(logits, labels), logits, labels)
        optimizer = self.optimizers()
        if self.loss_name == "sum_squared" and inputs.shape[0] == self.network.features.shape[-2]:
            row_labels = torch.empty_like(labels).index_copy_(0, inputs, labels)
            steps = steps_until_boundary(self.trainer, self.fused_steps)
            logits = closed_form_steps(
                self.network, row_labels, optimizer, steps, logits=self.current_logits(),
                through_optimizer=sees_every_optimizer_step(self.trainer),
            )
            self.block_logits = (self._state_stamp(), logits)
            return self._step_output(self.loss_fn(logits, row_labels), logits, row_labels)
        optimizer.zero_grad()
        logits = self.network(inputs)
        output = self._step_output(self.loss_fn(logits, labels), logits, labels)
        self.manual_backward(output["loss"])
        optimizer.step()
        return output | {"loss": output["loss"].detach()}

    def current_logits(self) -> Tensor | None:
        """Logits ``(R, n, C)`` of every training sample in the network's present state if the last fused block left
        it (same step, parameters untouched since), else None. A later block takes them over and overwrites them."""
        if self.block_logits is None or self.block_logits[0] != self._state_stamp():
            return None
        return self.block_logits[1]

    def _state_stamp(self) -> tuple[int, ...]:
        """``global_step`` and, per parameter, its storage and in-place version counter: equal stamps, equal state."""
        stamp = [self.trainer.global_step]
        for parameter in self.network.parameters():
            stamp += [parameter.data_ptr(), parameter._version]
        return tuple(stamp)

    def _step_output(self, loss_per_replica: Tensor, logits: Tensor, labels: Tensor) -> StepOutput:
        """The loss summed over replicas (what is optimised) with the detached means over replicas of the loss
        and the accuracy; the means also go to the progress bar (``logger=False``: no batch-indexed logging)."""
        accuracy = (logits.detach().argmax(dim=-1) == labels).to(logits.dtype).mean()
        mean_loss = loss_per_replica.detach().mean()
        self.log(LOSS_TAG, mean_loss, prog_bar=True, logger=False)
        self.log(TRAIN_ACCURACY_TAG, accuracy, logger=False)
        return {"loss": loss_per_replica.sum(), LOSS_TAG: mean_loss, TRAIN_ACCURACY_TAG: accuracy}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The configured optimiser over all parameters of the network."""
        return self.optimizer_factory(self.parameters())
