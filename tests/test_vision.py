"""torchvision's pieces (the ``vision`` extra): ResNet-18 for small images, MNIST and CIFAR-10 from their real file
layouts, and backbones trained on them end to end. ``make test-vision`` runs these in ``.venv-vision``.

The data files are tiny and written by :mod:`tests.helpers` in torchvision's layouts: MNIST's big-endian IDX files
(magic numbers 2051 for images, 2049 for labels) and CIFAR-10's pickled batches. torchvision's ``CIFAR10`` also
checks the files against the real ones' md5 sums; the ``accept_any_cifar_checksum`` fixture lifts that check wherever
torchvision reads them, so the tests hold whichever reader the data module uses, and nothing else about the loading
changes.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
import torch

from tests.helpers import CIFAR_LABEL_NAMES, fit_in_process, write_cifar10, write_mnist
from tests.test_backbone_training import METRIC_TAGS
from ufm_torch.data import CIFAR10DataModule, MNISTDataModule
from ufm_torch.data.torchvision_sets import TorchvisionDataModule
from ufm_torch.errors import ConfigError
from ufm_torch.models import LinearHead, resnet18_small
from ufm_torch.run_folder.metrics_log import read_records

torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.vision

@pytest.fixture
def accept_any_cifar_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision checks CIFAR-10's files against the real ones' md5 sums: accept any file that exists (every run
    here is in this process)."""
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())


def file_indices(inputs: torch.Tensor) -> torch.Tensor:
    """The file index of each (standardised) image of :func:`tests.helpers.marked_images`: its brightest pixel in
    channel 0."""
    return inputs[:, 0].flatten(1).argmax(dim=1)


def standardise_like_the_module(train: torch.Tensor, heldout: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images scaled to [0, 1], then shifted and scaled per channel by the training images' mean and std."""
    train, heldout = train.double() / 255, heldout.double() / 255
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True, correction=0)
    return (train - mean) / std, (heldout - mean) / std


# ResNet-18 for small images


@pytest.mark.parametrize(
    ("in_channels", "size", "feature_dim"), [(3, 32, None), (1, 28, 512), (3, 32, 24), (1, 28, 24)]
)
def test_resnet18_small_keeps_small_images_at_full_resolution(
    in_channels: int, size: int, feature_dim: int | None
) -> None:
    network = resnet18_small(10, in_channels=in_channels, feature_dim=feature_dim)
    conv1 = network.body.conv1
    assert (conv1.in_channels, conv1.kernel_size, conv1.stride, conv1.padding) == (in_channels, (3, 3), (1, 1), (1, 1))
    assert isinstance(network.body.maxpool, torch.nn.Identity)
    resolutions = []
    network.body.layer1.register_forward_hook(lambda layer, inputs, output: resolutions.append(output.shape))
    inputs = torch.randn(2, in_channels, size, size)
    features = network.forward_features(inputs)
    p = feature_dim or 512
    assert network.feature_dim == p and features.shape == (2, p)
    assert resolutions == [torch.Size([2, 64, size, size])]
    assert isinstance(network.head, LinearHead) and network.head.weight.shape == (10, p)
    assert torch.allclose(network(inputs), network.head(features))
    if p == 512:
        assert isinstance(network.body.fc, torch.nn.Identity)
    else:
        assert network.body.fc[0].in_features == 512 and (features >= 0).all()


# MNIST and CIFAR-10 from their file layouts


DATASETS = [
    pytest.param(MNISTDataModule, partial(write_mnist, train_per_class=5), (1, 28, 28), id="mnist"),
    pytest.param(CIFAR10DataModule, write_cifar10, (3, 32, 32), id="cifar10"),
]


@pytest.mark.usefixtures("accept_any_cifar_checksum")
@pytest.mark.parametrize(("module", "write", "shape"), DATASETS)
def test_training_set_is_a_balanced_class_major_subset_of_the_training_files(
    tmp_path: Path, module: type[TorchvisionDataModule], write, shape: tuple[int, int, int]
) -> None:
    files = write(tmp_path)
    datamodule = module(root=str(tmp_path), num_classes=4, samples_per_class=2, seed=5)
    datamodule.prepare_data()
    datamodule.setup("fit")
    splits = datamodule.splits
    assert splits.train_inputs.shape == (8, *shape) and splits.train_inputs.dtype == torch.float32
    assert torch.equal(datamodule.labels, torch.arange(4).repeat_interleave(2))
    chosen = file_indices(splits.train_inputs)
    assert chosen.unique().numel() == 8
    assert torch.equal(files["train_labels"][chosen], datamodule.labels)
    assert (datamodule.in_channels, datamodule.input_dim) == (shape[0], math.prod(shape))


@pytest.mark.usefixtures("accept_any_cifar_checksum")
@pytest.mark.parametrize(("module", "write", "shape"), DATASETS)
def test_images_are_standardised_per_channel_with_training_statistics(
    tmp_path: Path, module: type[TorchvisionDataModule], write, shape: tuple[int, int, int]
) -> None:
    files = write(tmp_path)
    splits = module(root=str(tmp_path), num_classes=3, samples_per_class=2).splits
    chosen = file_indices(splits.train_inputs)
    heldout = files["t10k_labels"] < 3
    expected_train, expected_heldout = standardise_like_the_module(
        files["train_images"][chosen], files["t10k_images"][heldout]
    )
    assert torch.allclose(splits.train_inputs.double(), expected_train, atol=1e-5)
    assert torch.allclose(splits.heldout_inputs.double(), expected_heldout, atol=1e-5)
    train = splits.train_inputs.double()
    assert torch.allclose(train.mean(dim=(0, 2, 3)), torch.zeros(shape[0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(train.std(dim=(0, 2, 3), correction=0), torch.ones(shape[0], dtype=torch.float64), atol=1e-6)


@pytest.mark.usefixtures("accept_any_cifar_checksum")
@pytest.mark.parametrize(("module", "write", "shape"), DATASETS)
def test_heldout_set_is_the_test_files_images_of_the_first_classes_in_file_order(
    tmp_path: Path, module: type[TorchvisionDataModule], write, shape: tuple[int, int, int]
) -> None:
    files = write(tmp_path)
    splits = module(root=str(tmp_path), num_classes=3, samples_per_class=1).splits
    heldout = (files["t10k_labels"] < 3).nonzero().flatten()
    assert splits.heldout_inputs.shape == (len(heldout), *shape)
    assert torch.equal(file_indices(splits.heldout_inputs), heldout)
    assert torch.equal(splits.heldout_labels, files["t10k_labels"][heldout])
    assert torch.equal(torch.bincount(splits.heldout_labels), torch.full((3,), 2))


@pytest.mark.usefixtures("accept_any_cifar_checksum")
@pytest.mark.parametrize(("module", "write", "shape"), DATASETS)
def test_subset_depends_on_the_seed_only(
    tmp_path: Path, module: type[TorchvisionDataModule], write, shape: tuple[int, int, int]
) -> None:
    write(tmp_path)

    def chosen(seed: int) -> torch.Tensor:
        datamodule = module(root=str(tmp_path), num_classes=10, samples_per_class=2, seed=seed)
        return file_indices(datamodule.splits.train_inputs)

    assert torch.equal(chosen(1), chosen(1))
    assert not torch.equal(chosen(1), chosen(2))


@pytest.mark.usefixtures("accept_any_cifar_checksum")
@pytest.mark.parametrize(("module", "write", "shape"), DATASETS)
def test_more_samples_per_class_than_the_files_hold_is_rejected_in_one_line(
    tmp_path: Path, module: type[TorchvisionDataModule], write, shape: tuple[int, int, int]
) -> None:
    write(tmp_path)
    every_sample = module(root=str(tmp_path), num_classes=10, samples_per_class=3).splits
    assert torch.equal(torch.bincount(every_sample.train_labels), torch.full((10,), 3))
    with pytest.raises(ConfigError, match=r"data\.samples_per_class=6 ") as error:
        module(root=str(tmp_path), samples_per_class=6).setup()
    assert "\n" not in str(error.value)


def test_mnist_loads_torchvisions_own_files_and_their_magic_numbers(tmp_path: Path) -> None:
    files = write_mnist(tmp_path, train_per_class=5)
    raw = tmp_path / "MNIST" / "raw"
    magic = {path.name: int.from_bytes(path.read_bytes()[:4], "big") for path in raw.iterdir()}
    assert magic == {
        "train-images-idx3-ubyte": 2051, "train-labels-idx1-ubyte": 2049,
        "t10k-images-idx3-ubyte": 2051, "t10k-labels-idx1-ubyte": 2049,
    }
    dataset = torchvision.datasets.MNIST(str(tmp_path), train=True)
    assert torch.equal(dataset.data, files["train_images"][:, 0])
    assert torch.equal(dataset.targets, files["train_labels"])


@pytest.mark.usefixtures("accept_any_cifar_checksum")
def test_cifar10_batches_read_by_torchvision_are_the_written_images(tmp_path: Path) -> None:
    files = write_cifar10(tmp_path)
    train = torchvision.datasets.CIFAR10(str(tmp_path), train=True)
    assert train.classes == CIFAR_LABEL_NAMES
    assert torch.equal(torch.as_tensor(train.data).permute(0, 3, 1, 2), files["train_images"])
    assert train.targets == files["train_labels"].tolist()


# Backbones trained on them end to end (what ufm-train trains, in this process)


def assert_every_metric_is_logged_and_finite(run: Path) -> None:
    """Each record of ``run/metrics.jsonl`` holds every collapse metric tag with a finite value."""
    records = read_records(run / "metrics.jsonl")
    assert records
    for record in records:
        assert set(record) >= METRIC_TAGS, METRIC_TAGS - set(record)
        values = {tag: record[tag] for tag in METRIC_TAGS}
        assert all(isinstance(value, float | int) and math.isfinite(value) for value in values.values()), values


@pytest.mark.slow
@pytest.mark.usefixtures("accept_any_cifar_checksum")
def test_resnet18_on_cifar10_trains_and_logs_every_metric(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data")
    run = tmp_path / "run"
    fit_in_process(
        run,
        "model=resnet18",
        "data=cifar10",
        f"data.root={tmp_path / 'data'}",
        "data.num_classes=3",
        "data.samples_per_class=2",
        "data.eval_batch_size=4",
        "model.feature_dim=16",
        "trainer.max_steps=3",
        "callbacks.progress.refresh_rate=0",
    )
    assert_every_metric_is_logged_and_finite(run)


@pytest.mark.slow
def test_convnet_on_mnist_trains_and_logs_every_metric(tmp_path: Path) -> None:
    write_mnist(tmp_path / "data", train_per_class=5)
    run = tmp_path / "run"
    fit_in_process(
        run,
        "model=convnet",
        "data=mnist",
        f"data.root={tmp_path / 'data'}",
        "data.num_classes=3",
        "data.samples_per_class=3",
        "data.batch_size=6",
        "model.feature_dim=8",
        "trainer.max_steps=5",
        "callbacks.progress.refresh_rate=0",
    )
    assert_every_metric_is_logged_and_finite(run)
