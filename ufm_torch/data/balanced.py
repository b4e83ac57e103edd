"""The shared shape of backbone data: a balanced training set of N samples per class and a held-out set.

Papyan, Han & Donoho (2020) study neural collapse on balanced training sets (N samples in each of C
classes, CN in all), like the UFM's I_C ⊗ 1_Nᵀ (Mixon et al., Section 2). Subclasses only say where the
samples come from (:meth:`BalancedDataModule.load_splits`); this module standardises them and serves the
loaders: shuffled minibatches for training, and ordered, unaugmented passes over the whole training set
and the held-out set for the collapse monitor.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ufm_torch.errors import ConfigError


@dataclass
class Splits:
    """Training inputs ``(CN, …)`` with class-major labels ``(CN,)``, and held-out inputs with labels."""

    train_inputs: Tensor
    train_labels: Tensor
    heldout_inputs: Tensor
    heldout_labels: Tensor


def balanced_indices(
    labels: Tensor, num_classes: int, samples_per_class: int, generator: torch.Generator, dataset: str
) -> Tensor:
    """Indices of N samples drawn without replacement from each class ``c < C``, class-major.

    Raises :class:`ConfigError` when a class has fewer than N samples.
    """
    check_samples_available(labels, num_classes, samples_per_class, dataset)
    chosen = []
    for label in range(num_classes):
        members = (labels == label).nonzero().flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:samples_per_class]])
    return torch.cat(chosen)


def check_samples_available(labels: Tensor, num_classes: int, samples_per_class: int, dataset: str) -> None:
    """Raise :class:`ConfigError` unless each class ``c < C`` of ``labels`` has at least N samples."""
    counts = torch.bincount(labels.flatten(), minlength=num_classes)[:num_classes]
    for label, count in enumerate(counts.tolist()):
        if count < samples_per_class:
            raise ConfigError(
                f"data.samples_per_class={samples_per_class} is more than the {count} samples of class {label} in "
                f"{dataset}"
            )


def complement(indices: Tensor, size: int) -> Tensor:
    """The indices in ``range(size)`` that are not in ``indices``, in increasing order."""
    keep = torch.ones(size, dtype=torch.bool)
    keep[indices] = False
    return keep.nonzero().flatten()


def standardised(splits: Splits) -> Splits:
    """Inputs shifted and scaled by the training set's per-channel mean and std (dimension 1; float32).

    Statistics are taken over the training samples and every other dimension (pixels); channels with
    zero spread are only shifted.
    """
    train = splits.train_inputs.to(torch.float64)
    dims = [0, *range(2, train.ndim)]
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True, correction=0)
    std = torch.where(std > 0, std, 1.0)
    heldout = splits.heldout_inputs.to(torch.float64)
    return Splits(
        ((train - mean) / std).float(), splits.train_labels, ((heldout - mean) / std).float(), splits.heldout_labels
    )


def check_declared(key: str, declared: int | None, actual: int, dataset: str) -> None:
    """Raise :class:`ConfigError` unless the config's description ``declared`` of the data is None or ``actual``."""
    if declared is not None and declared != actual:
        raise ConfigError(f"data.{key}={declared} does not describe {dataset}; it must be {actual}")


class BalancedDataModule(L.LightningDataModule):
    """Base class: a balanced, class-major training set of ``samples_per_class`` samples per class.

    ``batch_size=None`` gives full-batch training. Nothing is read when the module is built: ``setup``
    (called by Lightning, or on first use of ``labels``, ``splits`` or a loader) checks the settings and
    loads the data once, so a mistake surfaces as one :class:`ConfigError` line when fitting starts.
    """

    def __init__(
        self,
        num_classes: int,
        samples_per_class: int,
        batch_size: int | None,
        seed: int,
        eval_batch_size: int = 1000,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.batch_size = batch_size
        self.seed = seed
        self.eval_batch_size = eval_batch_size
        self._splits: Splits | None = None

    def check_config(self) -> None:
        """Raise :class:`ConfigError` for settings that do not fit the data set (before anything is loaded)."""

    def prepare_data(self) -> None:
        """Check the settings (and a data set's files) in the calling process. ``ufm-train`` calls it in its main
        process before the Trainer starts any other (DDP spawns processes), so a mistake is one line there."""
        self.check_config()

    def load_splits(self) -> Splits:
        """The raw (unstandardised) training and held-out sets; implemented by each data set."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Check the settings, then load and standardise the splits (once)."""
        if self._splits is None:
            self.check_config()
            self._splits = standardised(self.load_splits())

    @property
    def splits(self) -> Splits:
        """The standardised splits."""
        self.setup()
        assert self._splits is not None
        return self._splits

    @property
    def labels(self) -> Tensor:
        """Training labels ``(CN,)``, class-major."""
        return self.splits.train_labels

    def train_dataloader(self) -> DataLoader:
        """Shuffled minibatches of the training set (the whole set per batch when ``batch_size`` is None)."""
        dataset = TensorDataset(self.splits.train_inputs, self.splits.train_labels)
        return DataLoader(dataset, batch_size=self.batch_size or len(dataset), shuffle=True)

    def train_eval_dataloader(self) -> DataLoader:
        """The whole balanced training set in order, unshuffled and unaugmented (for the collapse monitor)."""
        dataset = TensorDataset(self.splits.train_inputs, self.splits.train_labels)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False)

    def heldout_dataloader(self) -> DataLoader:
        """The held-out set in order (for the collapse monitor's held-out accuracy)."""
        dataset = TensorDataset(self.splits.heldout_inputs, self.splits.heldout_labels)
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False)
