"""Real data for backbones: balanced, seeded, standardised training sets; held-out sets; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from sklearn.datasets import load_digits

from tests.helpers import compose_train, ufm_train_in_process, write_mnist
from ufm_torch.cli.validation import validate_config
from ufm_torch.data import (
    CIFAR10DataModule,
    DatasetNotFoundError,
    DigitsDataModule,
    GaussianMixtureDataModule,
    MNISTDataModule,
)
from ufm_torch.errors import ConfigError


def test_digits_training_set_is_balanced_class_major_and_the_rest_is_held_out() -> None:
    datamodule = DigitsDataModule(num_classes=4, samples_per_class=30, seed=3)
    labels = datamodule.labels
    assert torch.equal(labels, torch.arange(4).repeat_interleave(30))
    assert datamodule.splits.train_inputs.shape == (120, 1, 8, 8)
    available = torch.bincount(torch.as_tensor(load_digits().target), minlength=10)[:4]
    heldout_counts = torch.bincount(datamodule.splits.heldout_labels, minlength=4)
    assert torch.equal(heldout_counts, available - 30)


def test_digits_subset_depends_on_the_seed_only() -> None:
    first = DigitsDataModule(samples_per_class=10, seed=1).splits.train_inputs
    again = DigitsDataModule(samples_per_class=10, seed=1).splits.train_inputs
    other = DigitsDataModule(samples_per_class=10, seed=2).splits.train_inputs
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_inputs_are_standardised_with_training_statistics() -> None:
    splits = DigitsDataModule(samples_per_class=40).splits
    train = splits.train_inputs.double()
    assert abs(float(train.mean())) < 1e-6
    assert abs(float(train.std(correction=0)) - 1) < 1e-6
    assert abs(float(splits.heldout_inputs.double().mean())) < 0.1


def test_loaders_shuffle_training_minibatches_and_keep_evaluation_order() -> None:
    datamodule = DigitsDataModule(num_classes=3, samples_per_class=20, batch_size=8, eval_batch_size=25)
    assert [len(labels) for _, labels in datamodule.train_dataloader()] == [8] * 7 + [4]
    evaluation_labels = torch.cat([labels for _, labels in datamodule.train_eval_dataloader()])
    assert torch.equal(evaluation_labels, datamodule.labels)
    heldout_labels = torch.cat([labels for _, labels in datamodule.heldout_dataloader()])
    assert torch.equal(heldout_labels, datamodule.splits.heldout_labels)
    full_batch = DigitsDataModule(num_classes=3, samples_per_class=20, batch_size=None)
    assert [len(labels) for _, labels in full_batch.train_dataloader()] == [60]


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"samples_per_class": 175}, "data.samples_per_class"),
        ({"num_classes": 11}, "data.num_classes"),
        ({"input_dim": 63}, "data.input_dim"),
        ({"in_channels": 3}, "data.in_channels"),
    ],
)
def test_digits_settings_that_do_not_fit_the_data_are_rejected(settings: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        DigitsDataModule(**settings).setup()
    assert "\n" not in str(error.value)


def test_gaussian_mixture_is_balanced_and_reproducible() -> None:
    datamodule = GaussianMixtureDataModule(num_classes=4, samples_per_class=5, input_dim=7, heldout_per_class=9)
    assert datamodule.splits.train_inputs.shape == (20, 7)
    assert torch.equal(datamodule.labels, torch.arange(4).repeat_interleave(5))
    assert torch.equal(torch.bincount(datamodule.splits.heldout_labels), torch.full((4,), 9))
    again = GaussianMixtureDataModule(num_classes=4, samples_per_class=5, input_dim=7, heldout_per_class=9)
    assert torch.equal(datamodule.splits.train_inputs, again.splits.train_inputs)


def test_mnist_without_files_or_download_names_the_fix(tmp_path: Path) -> None:
    datamodule = MNISTDataModule(root=str(tmp_path), samples_per_class=2)
    with pytest.raises(DatasetNotFoundError, match=r"data\.download=true") as error:
        datamodule.setup()
    assert "\n" not in str(error.value)
    with pytest.raises(DatasetNotFoundError, match="CIFAR-10 files not found"):
        CIFAR10DataModule(root=str(tmp_path)).setup()


def test_legacy_processed_mnist_files_count_as_present(tmp_path: Path) -> None:
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    for name in ("training.pt", "test.pt"):
        (processed / name).write_bytes(b"")
    assert MNISTDataModule(root=str(tmp_path)).files_present()


@pytest.mark.vision
def test_mnist_loads_a_balanced_subset_from_torchvisions_raw_layout(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    files = write_mnist(tmp_path, train_per_class=4, test_per_class=2)
    datamodule = MNISTDataModule(root=str(tmp_path), num_classes=3, samples_per_class=3, batch_size=4)
    datamodule.prepare_data()
    datamodule.setup("fit")
    assert datamodule.splits.train_inputs.shape == (9, 1, 28, 28)
    assert torch.equal(datamodule.labels, torch.arange(3).repeat_interleave(3))
    test_labels = files["t10k_labels"]
    assert torch.equal(datamodule.splits.heldout_labels, test_labels[test_labels < 3])  # the test file's order
    assert torch.equal(torch.bincount(datamodule.splits.heldout_labels), torch.full((3,), 2))


def test_cli_reports_missing_mnist_files_in_one_line(tmp_path: Path) -> None:
    result = ufm_train_in_process(
        "model=mlp",
        "data=mnist",
        f"data.root={tmp_path / 'nowhere'}",
        "module.loss=mean_squared",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("ufm-train: error:")]
    assert len(errors) == 1 and "data.download=true" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=mlp", "data=digits"],
        ["model=convnet", "data=digits"],
        ["model=mlp", "data=gaussian_mixture"],
        ["model=mlp", "data=mnist"],
        ["model=convnet", "data=cifar10"],
        ["model=resnet18", "data=cifar10", "trainer.precision=32-true"],
        ["model=mlp", "data=digits", "trainer=ddp_cpu"],
    ],
)
def test_backbone_configs_compose_and_validate(overrides: list[str]) -> None:
    cfg = compose_train(*overrides, "module.loss=mean_squared")
    validate_config(cfg)
    assert cfg.model.num_classes == cfg.data.num_classes


@pytest.mark.parametrize(
    "overrides",
    [["model=mlp", "data=digits"], ["model=convnet", "data=digits"], ["model=mlp", "data=gaussian_mixture"]],
)
def test_configured_backbone_accepts_its_data(overrides: list[str]) -> None:
    cfg = compose_train(*overrides, "seed=0")
    datamodule, network = instantiate(cfg.data), instantiate(cfg.model)
    inputs, labels = next(iter(datamodule.train_dataloader()))
    assert network(inputs).shape == (len(labels), cfg.data.num_classes)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model=mlp", "data=digits", "model.depth=0"], "model.depth"),
        (["model=mlp", "data=digits", "model.activation=sigmoid"], "model.activation"),
        (["model=mlp", "data=digits", "model.batch_norm=maybe"], "model.batch_norm"),
        (["model=convnet", "data=digits", "model.channels=[]"], "model.channels"),
        (["model=mlp", "data=gaussian_mixture", "data.input_dim=0"], "data.input_dim"),
        (["model=mlp", "data=mnist", "data.download=maybe"], "data.download"),
    ],
)
def test_bad_backbone_setting_is_rejected_naming_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(compose_train(*overrides, "module.loss=mean_squared"))
