"""MNIST and CIFAR-10 through torchvision (the ``vision`` extra): balanced training subsets, test sets held out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ufm_torch.data.balanced import BalancedDataModule, Splits, balanced_indices, check_declared
from ufm_torch.errors import ConfigError
from ufm_torch.models.backbones import require_torchvision


class DatasetNotFoundError(ConfigError):
    """The data set's files are not under ``data.root`` and cannot be downloaded (one line)."""


class TorchvisionDataModule(BalancedDataModule):
    """Base class: a torchvision image-classification set (10 classes) in ``root``, downloaded if asked.

    Training set: N = ``samples_per_class`` images of each class ``c < C`` drawn from the official training
    split with ``seed`` (class-major); held out: the official test split's images of those classes. Images
    are ``(channels, size, size)`` floats in [0, 1], standardised per channel with training statistics.
    ``input_dim`` and ``in_channels`` describe the images for the model config (checked; None: the data
    set's). Files are checked when fitting starts, before torchvision is imported: without them (and
    with ``download=false``, or without network access) a :class:`DatasetNotFoundError` says so in one line.
    """

    name = ""
    shape = (1, 1, 1)
    num_source_classes = 10
    #: Alternative file sets (relative to ``root``); the data are present when one of them is complete.
    layouts: tuple[tuple[str, ...], ...] = ()

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        num_classes: int = 10,
        samples_per_class: int = 500,
        batch_size: int | None = 128,
        seed: int = 0,
        input_dim: int | None = None,
        in_channels: int | None = None,
        eval_batch_size: int = 1000,
    ) -> None:
        super().__init__(num_classes, samples_per_class, batch_size, seed, eval_batch_size)
        self.root = Path(root).expanduser()
        self.download = download
        self.in_channels = self.shape[0]
        self.input_dim = self.shape[0] * self.shape[1] * self.shape[2]
        self.declared = {"input_dim": input_dim, "in_channels": in_channels}

    def check_config(self) -> None:
        """At most 10 classes, ``input_dim``/``in_channels`` as declared, and the files under ``root``."""
        if self.num_classes > self.num_source_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} is more than the {self.num_source_classes} classes of "
                f"{self.name}"
            )
        for key, declared in self.declared.items():
            check_declared(key, declared, getattr(self, key), self.name)
        if not self.files_present():
            raise DatasetNotFoundError(
                f"{self.name} files not found under data.root={str(self.root)!r} (expected {self.layouts[0][0]} "
                "and its siblings); set data.download=true to fetch them, or copy them there"
            )

    def files_present(self) -> bool:
        """Whether one complete file layout of the data set is under ``root``."""
        return any(all((self.root / path).is_file() for path in layout) for layout in self.layouts)

    def torchvision_dataset(self, train: bool, download: bool = False) -> Any:
        """The torchvision data set object for the training or the test split."""
        raise NotImplementedError

    def images_and_labels(self, dataset: Any) -> tuple[Tensor, Tensor]:
        """Images ``(n, channels, size, size)`` in [0, 1] (float32) and labels ``(n,)`` of a torchvision data set."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Download both splits if ``download`` is set and they are missing (Lightning: one process per node)."""
        if not self.download or self.files_present():
            return
        try:
            for train in (True, False):
                self.torchvision_dataset(train, download=True)
        except (RuntimeError, OSError) as error:
            reason = " ".join(str(error).split()) or type(error).__name__
            raise DatasetNotFoundError(
                f"could not download {self.name} into data.root={str(self.root)!r} ({reason}); without network "
                "access, copy the files there and set data.download=false"
            ) from error

    def load_splits(self) -> Splits:
        """A seeded balanced subset of the training split; the test split's images of the first C classes."""
        train_images, train_labels = self.images_and_labels(self.torchvision_dataset(train=True))
        test_images, test_labels = self.images_and_labels(self.torchvision_dataset(train=False))
        generator = torch.Generator().manual_seed(self.seed)
        chosen = balanced_indices(train_labels, self.num_classes, self.samples_per_class, generator, self.name)
        heldout = test_labels < self.num_classes
        return Splits(train_images[chosen], train_labels[chosen], test_images[heldout], test_labels[heldout])


class MNISTDataModule(TorchvisionDataModule):
    """MNIST handwritten digits, 28×28 grey images (``root/MNIST/raw`` or the legacy ``root/MNIST/processed``)."""

    name = "MNIST"
    shape = (1, 28, 28)
    layouts = (
        tuple(
            f"MNIST/raw/{split}-{kind}"
            for split in ("train", "t10k")
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
        ),
        ("MNIST/processed/training.pt", "MNIST/processed/test.pt"),
    )

    def torchvision_dataset(self, train: bool, download: bool = False) -> Any:
        """``torchvision.datasets.MNIST``."""
        return require_torchvision().datasets.MNIST(str(self.root), train=train, download=download)

    def images_and_labels(self, dataset: Any) -> tuple[Tensor, Tensor]:
        """``dataset.data`` ``(n, 28, 28)`` uint8 as ``(n, 1, 28, 28)`` floats in [0, 1]."""
        images = torch.as_tensor(dataset.data).unsqueeze(1).float() / 255
        return images, torch.as_tensor(dataset.targets, dtype=torch.long)


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10, 32×32 colour images (``root/cifar-10-batches-py``)."""

    name = "CIFAR-10"
    shape = (3, 32, 32)
    layouts = (
        tuple(
            f"cifar-10-batches-py/{name}"
            for name in (*(f"data_batch_{k}" for k in range(1, 6)), "test_batch", "batches.meta")
        ),
    )

    def torchvision_dataset(self, train: bool, download: bool = False) -> Any:
        """``torchvision.datasets.CIFAR10``."""
        return require_torchvision().datasets.CIFAR10(str(self.root), train=train, download=download)

    def images_and_labels(self, dataset: Any) -> tuple[Tensor, Tensor]:
        """``dataset.data`` ``(n, 32, 32, 3)`` uint8 as ``(n, 3, 32, 32)`` floats in [0, 1]."""
        images = torch.as_tensor(dataset.data).permute(0, 3, 1, 2).float() / 255
        return images, torch.as_tensor(dataset.targets, dtype=torch.long)
