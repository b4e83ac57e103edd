"""The LightningModule: one training step of a network (UFM or backbone) with a linear head."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
from torch import Tensor, nn

from ufm_torch.losses import LOSSES

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class CollapseModule(L.LightningModule):
    """Trains ``network`` (which exposes ``head``, ``forward_features`` and ``forward``) against one-hot labels.

    The loss of a step is the sum over replicas of the per-replica loss, so every replica receives exactly the
    gradient it would get alone. ``optimizer`` is a partial (Hydra ``_partial_: true``) that receives the
    parameters. Logged every step: ``train/loss`` and ``train/accuracy`` (means over replicas).
    """

    def __init__(self, network: nn.Module, optimizer: OptimizerFactory, loss: str = "sum_squared") -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"module.loss={loss!r} is not one of {sorted(LOSSES)}")
        self.network = network
        self.optimizer_factory = optimizer
        self.loss_name = loss
        self.loss_fn = LOSSES[loss]

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits of the network for a batch of inputs."""
        return self.network(inputs)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Loss summed over replicas; logs its mean and the training accuracy."""
        inputs, labels = batch
        logits = self.network(inputs)
        loss_per_replica = self.loss_fn(logits, labels)
        accuracy = (logits.argmax(dim=-1) == labels).to(logits.dtype).mean()
        self.log("train/loss", loss_per_replica.mean().detach(), prog_bar=True)
        self.log("train/accuracy", accuracy)
        return loss_per_replica.sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The configured optimiser over all parameters of the network."""
        return self.optimizer_factory(self.parameters())
