"""The UFM's data module: a sample is a pair (sample index, label), class-major as in I_C ⊗ 1_Nᵀ."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset


def class_major_labels(num_classes: int, samples_per_class: int) -> Tensor:
    """Labels ``(0,…,0, 1,…,1, …, C−1)`` with N copies of each class: the columns of ``I_C ⊗ 1_Nᵀ``."""
    return torch.arange(num_classes).repeat_interleave(samples_per_class)


class RepeatedBatch:
    """An iterable that yields the same full batch ``length`` times: one epoch is ``length`` gradient steps.

    Full-batch gradient descent needs no sampler, collation or copies; a long epoch keeps the trainer's
    per-epoch bookkeeping out of the per-step cost.
    """

    def __init__(self, batch: tuple[Tensor, Tensor], length: int) -> None:
        self.batch = batch
        self.length = length

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return (self.batch for _ in range(self.length))

    def __len__(self) -> int:
        return self.length


class UFMDataModule(L.LightningDataModule):
    """The UFM's training set: all ``C·N`` (index, label) pairs.

    ``batch_size=None`` (default) gives full-batch gradient descent, one batch per step with the samples in
    class-major order; an integer gives shuffled minibatches of that size.
    """

    def __init__(
        self,
        num_classes: int = 3,
        samples_per_class: int = 3,
        batch_size: int | None = None,
        steps_per_epoch: int = 1000,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.labels = class_major_labels(num_classes, samples_per_class)
        self.indices = torch.arange(self.labels.numel())

    @property
    def is_full_batch(self) -> bool:
        """Whether every step sees all samples (plain gradient descent)."""
        return self.batch_size is None or self.batch_size >= self.labels.numel()

    def train_dataloader(self) -> RepeatedBatch | DataLoader:
        """Full batch repeated ``steps_per_epoch`` times, or shuffled minibatches."""
        if self.is_full_batch:
            return RepeatedBatch((self.indices, self.labels), self.steps_per_epoch)
        dataset = TensorDataset(self.indices, self.labels)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True)
