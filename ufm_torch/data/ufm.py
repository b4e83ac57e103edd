"""The UFM's data module: a sample is a pair (sample index, label), class-major as in I_C ⊗ 1_Nᵀ.

Class sizes (balanced N, a list of n_k, or step imbalance) are decided by :func:`class_sizes`, the one function the
model calls too (defined beside :class:`ufm_torch.models.UnconstrainedFeatures`, which may not import this unit).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ufm_torch.models.ufm import class_sizes

__all__ = ["RepeatedBatch", "UFMDataModule", "class_major_labels", "class_sizes"]


def class_major_labels(num_classes: int, samples_per_class: int | Sequence[int]) -> Tensor:
    """Labels ``(0,…,0, 1,…,1, …, C−1)`` with ``n_k`` copies of class ``k``: the columns of ``I_C ⊗ 1_Nᵀ`` for an
    integer N, of the block-diagonal ``diag(1_{n_0}ᵀ, …, 1_{n_{C−1}}ᵀ)`` for a list of C sizes (``int64``, ``(n,)``).
    """
    sizes = class_sizes(num_classes, samples_per_class)
    return torch.arange(num_classes).repeat_interleave(torch.tensor(sizes, dtype=torch.int64))


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

    def state_dict(self) -> dict[str, int]:
        """Nothing: every item is the same full batch, so a resumed run trains on exactly what it would have trained
        on at any position of the epoch (a UFM's resume is bit-exact: ``tests/test_reliability.py``). Having a state
        is what tells Lightning that the loader resumes, instead of its warning that a mid-epoch resume may differ."""
        return {}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to restore (:meth:`state_dict`)."""


class UFMDataModule(L.LightningDataModule):
    """The UFM's training set: all ``n = Σ_k n_k`` (index, label) pairs, ``n = C·N`` when balanced.

    ``class_sizes`` ``[n_0, …, n_{C−1}]`` come from :func:`class_sizes` (``samples_per_class`` an integer N or a list
    of C sizes; ``imbalance_ratio`` ρ ≥ 1 and ``minority_classes`` m for step imbalance: the last m classes get
    ``max(1, ⌊N/ρ + ½⌋)`` samples), the same function and keys as the model's, so index ``i`` is row ``i`` of the
    model's features. ``labels`` are class-major (``n_k`` copies of class ``k``); ``samples_per_class`` keeps the value
    given and ``is_balanced`` says whether every class has the same size.

    ``batch_size=None`` (default) gives full-batch gradient descent, one batch per step with the samples in
    class-major order; an integer gives shuffled minibatches of that size.
    """

    def __init__(
        self,
        num_classes: int = 3,
        samples_per_class: int | Sequence[int] = 3,
        batch_size: int | None = None,
        steps_per_epoch: int = 1000,
        imbalance_ratio: float = 1.0,
        minority_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.class_sizes = class_sizes(num_classes, samples_per_class, imbalance_ratio, minority_classes)
        self.is_balanced = len(set(self.class_sizes)) == 1
        self.num_classes = num_classes
        given_list = isinstance(samples_per_class, Sequence)
        self.samples_per_class = list(self.class_sizes) if given_list else int(samples_per_class)
        self.imbalance_ratio = float(imbalance_ratio)
        self.minority_classes = minority_classes
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.labels = class_major_labels(num_classes, self.class_sizes)
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
