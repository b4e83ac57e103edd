"""Damaged, truncated or misplaced MNIST and CIFAR-10 files end a run with one line naming the file and the fix."""

from __future__ import annotations

import os
import pickle
import socket
import struct
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import CIFAR_FOLDER, MNIST_RAW, ufm_train_in_process, write_cifar10, write_idx, write_mnist
from ufm_torch.data import CIFAR10DataModule, DatasetFileError, DatasetNotFoundError, MNISTDataModule
from ufm_torch.data.torchvision_sets import DOWNLOAD_TIMEOUT_SECONDS, TorchvisionDataModule
from ufm_torch.errors import ConfigError


def cifar_batch(per_class: int, seed: int) -> dict:
    """One CIFAR-10 batch as the real files hold it: ``data`` (n, 3072) uint8, ``labels`` a list of ints."""
    labels = np.arange(10).repeat(per_class)
    data = np.random.default_rng(seed).integers(0, 256, (labels.size, 3072), dtype=np.uint8)
    return {"batch_label": f"batch {seed}", "data": data, "labels": labels.tolist()}


def idx_bytes(dims: tuple[int, ...], magic: int | None = None) -> bytes:
    """An IDX file of zero bytes with sizes ``dims`` (and another ``magic`` number if given)."""
    magic = 0x0800 + len(dims) if magic is None else magic
    return struct.pack(f">I{len(dims)}I", magic, *dims) + bytes(int(np.prod(dims)))


def one_line_error(datamodule: TorchvisionDataModule, error_type: type[Exception] = DatasetFileError) -> str:
    """The message of the error ``prepare_data`` raises (checked to be a single line)."""
    with pytest.raises(error_type) as error:
        datamodule.prepare_data()
    message = str(error.value)
    assert isinstance(error.value, ConfigError) and "\n" not in message
    return message


# MNIST: each file checked against its IDX header


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def garbage(path: Path) -> None:
    path.write_bytes(b"<html>503 Service Unavailable</html>" * 10)


MNIST_DAMAGES = [
    pytest.param("train-images-idx3-ubyte", truncate, "is truncated (300 bytes", id="truncated-images"),
    pytest.param("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(b"\x00\x00"), "not even an IDX header",
                 id="two-byte-labels"),
    pytest.param("train-images-idx3-ubyte", garbage, "magic number 0x3c68746d", id="html-page"),
    pytest.param("t10k-images-idx3-ubyte", lambda p: p.write_bytes(idx_bytes((20, 28, 28), magic=0x0D03)),
                 "expected 0x00000803", id="float-magic"),
    pytest.param("train-images-idx3-ubyte", lambda p: p.write_bytes(idx_bytes((30, 32, 32))),
                 "holds 30×32×32 values, not n×28×28", id="other-image-size"),
    pytest.param("train-labels-idx1-ubyte", lambda p: p.write_bytes(idx_bytes((30, 28, 28))),
                 "not an IDX file of 1-dimensional", id="images-as-labels"),
    pytest.param("train-images-idx3-ubyte", lambda p: p.write_bytes(p.read_bytes() + b"\x00" * 7),
                 "longer than its header says", id="padded"),
    pytest.param("train-labels-idx1-ubyte", lambda p: p.write_bytes(idx_bytes((29,))), "holds 29 labels for 30",
                 id="label-count"),
    pytest.param("t10k-labels-idx1-ubyte", lambda p: p.write_bytes(idx_bytes((20,))[:-1] + b"\x0b"),
                 "labels outside 0…9", id="label-11"),
]


@pytest.mark.parametrize(("name", "damage", "problem"), MNIST_DAMAGES)
def test_damaged_mnist_file_is_named_with_the_fix(tmp_path: Path, name: str, damage, problem: str) -> None:
    write_mnist(tmp_path)
    damage(tmp_path / MNIST_RAW / name)
    message = one_line_error(MNISTDataModule(root=str(tmp_path), num_classes=3, samples_per_class=2))
    assert message.startswith(f"{tmp_path / MNIST_RAW / name} ")
    assert problem in message
    assert "delete it and run with data.download=true, or copy a good copy of it there" in message


def test_missing_mnist_file_is_named(tmp_path: Path) -> None:
    write_mnist(tmp_path)
    (tmp_path / MNIST_RAW / "t10k-labels-idx1-ubyte").unlink()
    message = one_line_error(MNISTDataModule(root=str(tmp_path)), DatasetNotFoundError)
    assert message.startswith(f"{tmp_path / MNIST_RAW / 't10k-labels-idx1-ubyte'} is missing")
    assert "data.download=true" in message


def test_damaged_legacy_processed_mnist_file_is_named(tmp_path: Path) -> None:
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir(parents=True)
    labels = torch.arange(10).repeat_interleave(2)
    torch.save((torch.zeros(20, 28, 28, dtype=torch.uint8), labels), processed / "training.pt")
    (processed / "test.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    message = one_line_error(MNISTDataModule(root=str(tmp_path), samples_per_class=2))
    assert message.startswith(f"{processed / 'test.pt'} cannot be read")
    torch.save((torch.zeros(20, 28, 28, dtype=torch.uint8), labels), processed / "test.pt")
    datamodule = MNISTDataModule(root=str(tmp_path), samples_per_class=2)
    datamodule.prepare_data()
    assert datamodule.splits.train_inputs.shape == (20, 1, 28, 28)


def test_good_mnist_files_pass_and_are_read_as_checked(tmp_path: Path) -> None:
    files = write_mnist(tmp_path, train_per_class=3, test_per_class=2)
    datamodule = MNISTDataModule(root=str(tmp_path), num_classes=4, samples_per_class=3)
    datamodule.prepare_data()
    assert datamodule.files_checked
    assert datamodule.splits.train_inputs.shape == (12, 1, 28, 28)
    test_labels = files["t10k_labels"]
    assert torch.equal(datamodule.splits.heldout_labels, test_labels[test_labels < 4])  # the test file's order
    assert torch.equal(torch.bincount(datamodule.splits.heldout_labels), torch.full((4,), 2))


def test_too_many_samples_per_class_is_found_before_training(tmp_path: Path) -> None:
    write_mnist(tmp_path, train_per_class=3)
    message = one_line_error(MNISTDataModule(root=str(tmp_path), samples_per_class=4), ConfigError)
    assert message == "data.samples_per_class=4 is more than the 3 samples of class 0 in MNIST"


# CIFAR-10: each batch unpickled (numpy arrays only) and its shapes checked


def write_batch(path: Path, content: object) -> None:
    path.write_bytes(pickle.dumps(content, protocol=2))


CIFAR_DAMAGES = [
    pytest.param("data_batch_3", truncate, "pickle data was truncated", id="truncated"),
    pytest.param("test_batch", garbage, "is not a readable CIFAR-10 pickle", id="html-page"),
    pytest.param("data_batch_1", lambda p: write_batch(p, [1, 2, 3]), "holds a list, not a CIFAR-10 dictionary",
                 id="a-list"),
    pytest.param("data_batch_2", lambda p: write_batch(p, {"data": np.zeros((10, 3072), np.uint8)}),
                 "lacks the 'data' array or the 'labels'", id="no-labels"),
    pytest.param("data_batch_4", lambda p: write_batch(p, {"data": np.zeros((10, 1024), np.uint8), "labels": [0] * 10}),
                 "holds data of shape (10, 1024) (uint8), not n×3072 uint8", id="grey-images"),
    pytest.param("data_batch_5", lambda p: write_batch(p, {"data": np.zeros((10, 3072), np.uint8), "labels": [0] * 9}),
                 "holds 9 labels for 10 images", id="label-count"),
    pytest.param("batches.meta", lambda p: write_batch(p, {"label_names": ["cat", "dog"]}),
                 "does not name the 10 CIFAR-10 classes", id="meta"),
]


@pytest.mark.parametrize(("name", "damage", "problem"), CIFAR_DAMAGES)
def test_damaged_cifar10_file_is_named_with_the_fix(tmp_path: Path, name: str, damage, problem: str) -> None:
    write_cifar10(tmp_path)
    damage(tmp_path / CIFAR_FOLDER / name)
    message = one_line_error(CIFAR10DataModule(root=str(tmp_path), num_classes=3, samples_per_class=2))
    assert message.startswith(f"{tmp_path / CIFAR_FOLDER / name} ")
    assert problem in message
    assert "data.download=true" in message


def test_a_pickle_that_runs_code_is_refused_unrun(tmp_path: Path) -> None:
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    write_batch(tmp_path / CIFAR_FOLDER / "data_batch_1", {"data": Payload(), "labels": []})
    message = one_line_error(CIFAR10DataModule(root=str(tmp_path)))
    assert "it asks for posix.system" in message or "it asks for os.system" in message
    assert not marker.exists()


def test_good_cifar10_files_pass_and_are_read_as_checked(tmp_path: Path) -> None:
    write_cifar10(tmp_path, train_per_class=10, test_per_class=1)
    datamodule = CIFAR10DataModule(root=str(tmp_path), num_classes=3, samples_per_class=10)
    datamodule.prepare_data()
    assert datamodule.splits.train_inputs.shape == (30, 3, 32, 32)
    assert datamodule.splits.heldout_inputs.shape == (3, 3, 32, 32)


# A root folder with another layout


@pytest.mark.parametrize(
    ("module", "write", "relative", "root_below"),
    [
        pytest.param(MNISTDataModule, write_mnist, "MNIST", Path("MNIST"), id="mnist-root-is-MNIST"),
        pytest.param(MNISTDataModule, write_mnist, "MNIST/raw", Path("MNIST/raw"), id="mnist-root-is-raw"),
        pytest.param(CIFAR10DataModule, write_cifar10, "cifar", CIFAR_FOLDER, id="cifar-root-is-batches"),
    ],
)
def test_root_one_level_too_deep_suggests_the_right_root(
    tmp_path: Path, module: type[TorchvisionDataModule], write, relative: str, root_below: Path
) -> None:
    write(tmp_path)
    message = one_line_error(module(root=str(tmp_path / root_below)), DatasetNotFoundError)
    assert "files not found under data.root=" in message
    assert f"set data.root={tmp_path}," in message


def test_files_under_other_folder_names_are_pointed_at(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte", torch.zeros(1, 28, 28))
    message = one_line_error(MNISTDataModule(root=str(tmp_path)), DatasetNotFoundError)
    assert f"{tmp_path / 'mnist' / 'train-images-idx3-ubyte'} looks like one of them" in message
    assert f"move the files into {tmp_path / MNIST_RAW}" in message


def test_an_archive_that_is_not_extracted_says_download_extracts_it(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    message = one_line_error(CIFAR10DataModule(root=str(tmp_path)), DatasetNotFoundError)
    assert "the archive" in message and "set data.download=true to extract it" in message


# ufm-train: exit 2, one line, before the run folder changes; also with DDP's spawned processes


@pytest.mark.parametrize("trainer", ["default", "ddp_cpu"])
def test_ufm_train_stops_on_a_truncated_file_with_one_line(tmp_path: Path, trainer: str) -> None:
    write_mnist(tmp_path / "data")
    truncate(tmp_path / "data" / MNIST_RAW / "train-images-idx3-ubyte")
    run = tmp_path / "run"
    result = ufm_train_in_process(
        "model=mlp", "data=mnist", f"data.root={tmp_path / 'data'}", "data.samples_per_class=2", f"trainer={trainer}",
        "trainer.max_steps=2", "callbacks.progress.refresh_rate=0", f"hydra.run.dir={run}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith(f"ufm-train: error: {tmp_path / 'data' / MNIST_RAW / 'train-images-idx3-ubyte'} is ")
    assert not run.exists()  # a rejected run leaves no folder behind


# data.download=true: files that fail are replaced; no network is one line (vision)


def good_mnist_archives(source: Path) -> dict[str, bytes]:
    """The four raw files of a good tiny MNIST, by the archive name torchvision downloads them as."""
    write_mnist(source)
    return {f"{path.name}.gz": path.read_bytes() for path in (source / MNIST_RAW).iterdir()}


@pytest.mark.vision
def test_download_replaces_a_damaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision = pytest.importorskip("torchvision")
    archives = good_mnist_archives(tmp_path / "source")
    root = tmp_path / "data"
    write_mnist(root)
    damaged = root / MNIST_RAW / "train-images-idx3-ubyte"
    truncate(damaged)
    fetched = []

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        assert socket.getdefaulttimeout() == DOWNLOAD_TIMEOUT_SECONDS
        fetched.append((filename, damaged.exists()))
        Path(download_root, filename.removesuffix(".gz")).write_bytes(archives[filename])

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    datamodule = MNISTDataModule(root=str(root), num_classes=3, samples_per_class=2, download=True)
    datamodule.prepare_data()
    names = [name for name, _ in torchvision.datasets.MNIST.resources]
    assert [name for name, _ in fetched] == names and not fetched[0][1]  # deleted before the download
    assert damaged.read_bytes() == archives["train-images-idx3-ubyte.gz"]
    assert datamodule.splits.train_inputs.shape == (6, 1, 28, 28)
    assert socket.getdefaulttimeout() is None


@pytest.mark.vision
def test_download_that_gives_a_damaged_file_again_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torchvision = pytest.importorskip("torchvision")
    write_cifar10(tmp_path)
    truncate(tmp_path / CIFAR_FOLDER / "data_batch_2")

    def fake_download(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        truncate(Path(download_root) / CIFAR_FOLDER / "data_batch_1")
        write_batch(Path(download_root) / CIFAR_FOLDER / "data_batch_2", cifar_batch(1, 0))

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_download)
    message = one_line_error(CIFAR10DataModule(root=str(tmp_path), download=True))
    assert message.startswith(f"after downloading CIFAR-10: {tmp_path / CIFAR_FOLDER / 'data_batch_1'} ")


@pytest.mark.vision
@pytest.mark.parametrize(
    ("module", "failure"),
    [
        (MNISTDataModule, urllib.error.URLError("[Errno -3] Temporary failure in name resolution")),
        (CIFAR10DataModule, TimeoutError("timed out")),
    ],
)
def test_download_without_network_is_one_line_saying_how_to_place_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: type[TorchvisionDataModule], failure: OSError
) -> None:
    pytest.importorskip("torchvision")
    timeouts = []

    def no_network(*args, **kwargs):
        timeouts.append(socket.getdefaulttimeout())
        raise failure

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    message = one_line_error(module(root=str(tmp_path), download=True), DatasetNotFoundError)
    assert message.startswith(f"could not download {module.name} into data.root=")
    assert "without network access" in message and "data.download=false" in message
    assert type(failure).__name__ in message
    assert timeouts and set(timeouts) == {DOWNLOAD_TIMEOUT_SECONDS}
    assert socket.getdefaulttimeout() is None
