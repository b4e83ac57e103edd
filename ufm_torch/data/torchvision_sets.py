"""MNIST and CIFAR-10 in torchvision's file layouts: balanced training subsets, test sets held out, checked files.

The files are read by :mod:`ufm_torch.data.dataset_files`, which checks each one as it reads it; torchvision (the
``vision`` extra) is needed only to download them (``data.download=true``), with a socket timeout so that a machine
without network fails in one line instead of hanging.
"""

from __future__ import annotations

import socket
from pathlib import Path

import torch
from torch import Tensor

from ufm_torch.data.balanced import (
    BalancedDataModule,
    Splits,
    balanced_indices,
    check_declared,
    check_samples_available,
)
from ufm_torch.data.dataset_files import (
    DatasetFileError,
    check_cifar_meta,
    misplaced_copy,
    read_cifar_batch,
    read_mnist_processed,
    read_mnist_raw,
    root_for,
)
from ufm_torch.errors import ConfigError
from ufm_torch.models.backbones import require_torchvision

DOWNLOAD_TIMEOUT_SECONDS = 30.0
"""Socket timeout of torchvision's downloads: a connection or read that waits longer fails (no network)."""


class DatasetNotFoundError(DatasetFileError):
    """The data set's files are not under ``data.root`` and cannot be downloaded (one line)."""


def download_and_extract(url: str, folder: Path, filename: str, md5: str | None) -> None:
    """torchvision's ``download_and_extract_archive``: fetch ``url`` into ``folder/filename`` unless a file with
    that md5 is already there, check its md5, and extract it into ``folder``."""
    utils = require_torchvision().datasets.utils
    utils.download_and_extract_archive(url, download_root=str(folder), filename=filename, md5=md5)


class TorchvisionDataModule(BalancedDataModule):
    """Base class: a torchvision image-classification set (10 classes) in ``root``, downloaded if asked.

    Training set: N = ``samples_per_class`` images of each class ``c < C`` drawn from the official training
    split with ``seed`` (class-major); held out: the official test split's images of those classes. Images
    are ``(channels, size, size)`` floats in [0, 1], standardised per channel with training statistics.
    ``input_dim`` and ``in_channels`` describe the images for the model config (checked; None: the data
    set's).

    Files (:meth:`check_files`, called by :meth:`prepare_data`, which ``ufm-train`` calls in its main process
    before the Trainer starts any other): a file that is missing, truncated, of another format or of other sizes,
    or a ``root`` with another layout, is a :class:`DatasetFileError` (a :class:`ConfigError`: one line naming the
    file and the fix, exit 2). With ``download=true`` the files that fail are deleted and fetched again through
    torchvision (socket timeout :data:`DOWNLOAD_TIMEOUT_SECONDS`); without network that is one line too.
    """

    name = ""
    shape = (1, 1, 1)
    num_source_classes = 10
    #: Alternative file sets (relative to ``root``); the first complete one is read.
    layouts: tuple[tuple[str, ...], ...] = ()
    #: Where the archives come from, and the folder (relative to ``root``) they go in, for the messages.
    archives = ""
    archive_folder = "."
    #: The downloaded archives (relative to ``root``), which ``download=true`` extracts without network.
    archive_files: tuple[str, ...] = ()

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
        self.files_checked = False

    def check_config(self) -> None:
        """At most 10 classes, ``input_dim``/``in_channels`` as declared, and the files under ``root``."""
        if self.num_classes > self.num_source_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} is more than the {self.num_source_classes} classes of "
                f"{self.name}"
            )
        for key, declared in self.declared.items():
            check_declared(key, declared, getattr(self, key), self.name)
        self.check_files()

    @property
    def fix(self) -> str:
        """How to repair a damaged file (the end of each message)."""
        if self.download:
            return "delete it and run again (data.download=true fetches it), or copy a good copy of it there"
        return "delete it and run with data.download=true, or copy a good copy of it there"

    def files_present(self) -> bool:
        """Whether one complete file layout of the data set is under ``root`` (files exist; not checked)."""
        return self.layout_in_use() is not None

    def layout_in_use(self) -> tuple[str, ...] | None:
        """The first layout whose files all exist under ``root`` (None: none is complete)."""
        return next((layout for layout in self.layouts if all((self.root / p).is_file() for p in layout)), None)

    def check_files(self) -> None:
        """Read every file of the layout in use and check it; :class:`DatasetFileError` naming the first file that
        is missing, damaged or misplaced. Remembered once passed (also by the processes DDP spawns)."""
        if self.files_checked:
            return
        layout = self.layout_in_use()
        if layout is None:
            raise self.not_found()
        for train in (True, False):
            _, labels = self.read_split(layout, train)
            if train:
                check_samples_available(labels, self.num_classes, self.samples_per_class, self.name)
        self.check_extra_files(layout)
        self.files_checked = True

    def not_found(self) -> DatasetNotFoundError:
        """The error for a ``root`` without a complete layout: the missing file of a partial one, or where the
        files seem to be when ``root`` has another layout."""
        existing = [[p for p in layout if (self.root / p).is_file()] for layout in self.layouts]
        partial = max(range(len(self.layouts)), key=lambda k: len(existing[k]))
        download = "set data.download=true to fetch them, or copy them there"
        if existing[partial]:
            missing = next(p for p in self.layouts[partial] if p not in existing[partial])
            return DatasetNotFoundError(
                f"{self.root / missing} is missing (other {self.name} files are in data.root={str(self.root)!r}); "
                f"{download} (from {self.archives})"
            )
        expected = self.layouts[0][0]
        message = (
            f"{self.name} files not found under data.root={str(self.root)!r} (expected {expected} and its "
            "siblings)"
        )
        found = misplaced_copy(self.root, expected)
        archive = next((self.root / p for p in self.archive_files if (self.root / p).is_file()), None)
        if archive is not None:
            message += f"; the archive {archive} is there: set data.download=true to extract it (no network needed)"
        elif found is not None:
            suggested = root_for(found, expected)
            where = (
                f"set data.root={suggested}" if suggested is not None
                else f"move the files into {self.root / Path(expected).parent}"
            )  # fmt: skip
            message += f"; {found} looks like one of them: {where}, or {download}"
        else:
            message += f"; {download} (from {self.archives})"
        return DatasetNotFoundError(message)

    def read_split(self, layout: tuple[str, ...], train: bool) -> tuple[Tensor, Tensor]:
        """Images ``(n, channels, size, size)`` uint8 and labels ``(n,)`` of a split in ``layout`` (checked)."""
        raise NotImplementedError

    def check_extra_files(self, layout: tuple[str, ...]) -> None:
        """Check the files of ``layout`` that :meth:`read_split` does not read."""

    def fetch(self) -> None:
        """Download and extract the data set's archives into ``root`` (through torchvision)."""
        raise NotImplementedError

    def prepare_data(self) -> None:
        """Check the settings and files; with ``download`` set, fetch the files that are missing or fail the check.

        Files that fail are deleted first (torchvision keeps existing files), then fetched with a socket timeout; a
        download that fails (no network, a bad archive) or gives files that still fail is one line.
        """
        try:
            self.check_config()
            return
        except DatasetFileError:
            if not self.download:
                raise
        self.delete_damaged_files()
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_SECONDS)
        try:
            self.fetch()
        except ImportError as error:
            raise DatasetNotFoundError(
                f"data.download=true cannot fetch {self.name}: {error}; or copy the files into "
                f"data.root={str(self.root)!r} and set data.download=false"
            ) from None
        except (RuntimeError, OSError) as error:
            reason = " ".join(str(error).split())[:200] or type(error).__name__
            raise DatasetNotFoundError(
                f"could not download {self.name} into data.root={str(self.root)!r} ({type(error).__name__}: "
                f"{reason}); without network access (or with answers slower than {DOWNLOAD_TIMEOUT_SECONDS:g} s), "
                f"download {self.archives} on a machine with network into {self.root / self.archive_folder} "
                "(data.download=true then extracts it without network), or put the extracted files there and set "
                "data.download=false"
            ) from error
        finally:
            socket.setdefaulttimeout(previous)
        try:
            self.check_config()
        except DatasetFileError as error:
            raise DatasetFileError(f"after downloading {self.name}: {error}") from None

    def delete_damaged_files(self) -> None:
        """Delete, one at a time, each file that the check names as damaged (at most every file of every layout)."""
        for _ in range(sum(map(len, self.layouts))):
            try:
                self.check_files()
                return
            except DatasetFileError as error:
                if error.path is None or not error.path.is_file():
                    return
                error.path.unlink()

    def load_splits(self) -> Splits:
        """A seeded balanced subset of the training split; the test split's images of the first C classes."""
        layout = self.layout_in_use()
        if layout is None:
            raise self.not_found()
        train_images, train_labels = self.read_split(layout, train=True)
        test_images, test_labels = self.read_split(layout, train=False)
        generator = torch.Generator().manual_seed(self.seed)
        chosen = balanced_indices(train_labels, self.num_classes, self.samples_per_class, generator, self.name)
        heldout = test_labels < self.num_classes
        return Splits(as_floats(train_images[chosen]), train_labels[chosen], as_floats(test_images[heldout]),
                      test_labels[heldout])  # fmt: skip


def as_floats(images: Tensor) -> Tensor:
    """uint8 images as float32 in [0, 1]."""
    return images.float() / 255


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
    archives = "the four .gz files of https://ossci-datasets.s3.amazonaws.com/mnist/"
    archive_folder = "MNIST/raw"
    archive_files = tuple(f"{path}.gz" for path in layouts[0])

    def read_split(self, layout: tuple[str, ...], train: bool) -> tuple[Tensor, Tensor]:
        """The IDX files of the split (raw) or its ``.pt`` file (processed); images ``(n, 1, 28, 28)``."""
        if layout[0].startswith("MNIST/processed/"):
            images, labels = read_mnist_processed(self.root / layout[0 if train else 1], self.fix)
        else:
            prefix = self.root / "MNIST" / "raw" / ("train" if train else "t10k")
            images_path, labels_path = Path(f"{prefix}-images-idx3-ubyte"), Path(f"{prefix}-labels-idx1-ubyte")
            images, labels = read_mnist_raw(images_path, labels_path, self.fix)
        return images.unsqueeze(1), labels

    def fetch(self) -> None:
        """torchvision's MNIST archives (``MNIST.resources``), each from the first of ``MNIST.mirrors`` that answers,
        into ``root/MNIST/raw``, extracted; when none answers, the first mirror's error."""
        mnist = require_torchvision().datasets.MNIST
        folder = self.root / "MNIST" / "raw"
        folder.mkdir(parents=True, exist_ok=True)
        for filename, md5 in mnist.resources:
            errors: list[OSError] = []
            for mirror in mnist.mirrors:
                try:
                    download_and_extract(f"{mirror}{filename}", folder, filename, md5)
                    break
                except OSError as error:  # no answer (URLError, a timeout): try the next mirror
                    errors.append(error)
            else:
                raise errors[0]


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
    archives = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    archive_files = ("cifar-10-python.tar.gz",)

    def read_split(self, layout: tuple[str, ...], train: bool) -> tuple[Tensor, Tensor]:
        """The five training batches, or the test batch, concatenated: images ``(n, 3, 32, 32)``."""
        names = [p for p in layout if "/data_batch_" in p] if train else [p for p in layout if p.endswith("test_batch")]
        batches = [read_cifar_batch(self.root / name, self.fix) for name in names]
        return torch.cat([images for images, _ in batches]), torch.cat([labels for _, labels in batches])

    def check_extra_files(self, layout: tuple[str, ...]) -> None:
        """``batches.meta`` names the 10 classes."""
        check_cifar_meta(self.root / layout[-1], self.fix)

    def fetch(self) -> None:
        """torchvision's CIFAR-10 archive (``CIFAR10.url``, md5 ``CIFAR10.tgz_md5``) into ``root``, extracted."""
        cifar = require_torchvision().datasets.CIFAR10
        self.root.mkdir(parents=True, exist_ok=True)
        download_and_extract(cifar.url, self.root, cifar.filename, cifar.tgz_md5)
