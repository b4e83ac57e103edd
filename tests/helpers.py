"""The test suite's shared helpers: composed configs, ``ufm-train`` in this process or in a subprocess, tiny MNIST
and CIFAR-10 files in torchvision's layouts, a quiet Trainer, and NC metrics from their textbook formulas.

Most runs are fitted in this process: :func:`fit_in_process` (``build_and_fit``, what a run trains and writes) or
:func:`ufm_train_in_process` (the console function itself: Hydra's run folder, ``status.json``, the report, the exit
code and the printed lines). :func:`run_ufm_train` starts a subprocess, about 4 s of Python start-up and imports
each; it is for tests of the process itself: exit codes end to end, signals, sweeps.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parents[1]
UFM_TRAIN = Path(sys.executable).parent / "ufm-train"
UFM_PLOT = Path(sys.executable).parent / "ufm-plot"


# Configs


@functools.cache
def _composed(overrides: tuple[str, ...]) -> DictConfig:
    with initialize_config_module(config_module="ufm_torch.conf", version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def compose_train(*overrides: str, run_dir: str | Path = "unused") -> DictConfig:
    """The composed ``train`` config with ``overrides`` and ``run_dir``: composed once per test process and list of
    overrides, each call given a copy of its own."""
    return copy.deepcopy(_composed((*overrides, f"run_dir={run_dir}")))


# ufm-train


@contextlib.contextmanager
def _restored_process_state(threads: int = 1) -> Iterator[None]:
    """Train in this process as in a fresh one, then put back what a run changes: environment variables (Lightning's
    seed), the random generators, torch's thread count (``threads`` meanwhile, as ``OMP_NUM_THREADS`` gives a
    subprocess), the root logger's handlers (Hydra's job logging), Hydra's run config, the SIGINT and SIGTERM
    handlers, ``sys.argv`` and the working directory."""
    environment, argv, cwd = dict(os.environ), sys.argv[:], os.getcwd()
    handlers, level = logging.root.handlers[:], logging.root.level
    generators = random.getstate(), np.random.get_state(), torch.get_rng_state()
    hydra_config = HydraConfig.instance().cfg
    signals = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        for number, handler in signals.items():
            if handler is not None:  # None: a handler not set from Python, which Python cannot set back
                signal.signal(number, handler)
        HydraConfig.instance().cfg = hydra_config
        random.setstate(generators[0])
        np.random.set_state(generators[1])
        torch.set_rng_state(generators[2])
        for handler in logging.root.handlers:
            if handler not in handlers:
                handler.close()
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
        os.chdir(cwd)
        sys.argv[:] = argv
        for key in set(os.environ) - set(environment):
            del os.environ[key]
        os.environ.update({key: value for key, value in environment.items() if os.environ.get(key) != value})


def fit_in_process(run_dir: Path, *overrides: str) -> dict[str, Any]:
    """The composed config with ``overrides`` checked (``validate_config``) and trained (``build_and_fit``) into
    ``run_dir``: what ``ufm-train`` trains and what the monitor, checkpoints and loggers write, without Hydra's files,
    ``status.json`` or the report. Returns the final metrics (``{"step", "replicas"}`` with a monitor, else
    ``{"step", "trainer"}``)."""
    from ufm_torch.cli.train import build_and_fit
    from ufm_torch.cli.validation import validate_config

    cfg = compose_train(*overrides, run_dir=run_dir)
    validate_config(cfg)
    with _restored_process_state():
        return build_and_fit(cfg).final_metrics


@dataclass(frozen=True)
class Finished:
    """What a finished ``ufm-train`` gives its caller, as :class:`subprocess.CompletedProcess` names it."""

    returncode: int
    stdout: str
    stderr: str


def ufm_train_in_process(*overrides: str, cwd: Path | None = None) -> Finished:
    """``ufm-train overrides`` through its console function in this process: Hydra's run folder, ``status.json``, the
    report, the exit code and what it prints, without a new interpreter importing torch and Lightning.

    An exception that ``ufm-train`` would end on with a traceback propagates.
    """
    from ufm_torch.cli import train

    stdout, stderr = io.StringIO(), io.StringIO()
    returncode = 0
    with _restored_process_state(), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        if cwd is not None:
            os.chdir(cwd)
        sys.argv[:] = ["ufm-train", *overrides]
        try:
            train.main()
        except SystemExit as stop:
            returncode = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
            if not isinstance(stop.code, int | None):
                print(stop.code, file=sys.stderr)  # as the interpreter prints it
    return Finished(returncode, stdout.getvalue(), stderr.getvalue())


def ufm_train_main(monkeypatch: Any, *arguments: str) -> int:
    """``ufm-train arguments`` through its console function in this process, its output not captured (``capsys`` and
    ``capfd`` see it); its exit code (0 when ``main()`` returns). Hydra's logging handlers are removed afterwards."""
    from ufm_torch.cli import train

    monkeypatch.setattr(sys, "argv", ["ufm-train", *arguments])
    handlers = list(logging.getLogger().handlers)
    try:
        train.main()
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    finally:
        for handler in set(logging.getLogger().handlers) - set(handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()
    return code


def run_ufm_train(*overrides: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``ufm-train`` with ``overrides`` in a subprocess, capturing its output."""
    environment = os.environ | {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(UFM_TRAIN), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


# MNIST and CIFAR-10 in torchvision's layouts

MNIST_RAW = Path("MNIST") / "raw"
CIFAR_FOLDER = Path("cifar-10-batches-py")
CIFAR_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
CIFAR_LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_idx(path: Path, array: torch.Tensor) -> None:
    """An IDX file as read by torchvision: magic ``0x08`` (uint8) and the rank, big-endian sizes, then the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.to(torch.uint8).numpy().tobytes())


def marked_images(labels: torch.Tensor, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """Random uint8 images ``(n, *shape)`` whose brightest pixel (255, in every channel) is pixel j of image j.

    The other pixels are at most 200, so the argmax of a standardised image (a positive affine map per channel)
    names the file index it was read from.
    """
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 201, (labels.numel(), *shape), generator=generator, dtype=torch.uint8)
    flat = images.view(labels.numel(), shape[0], -1)
    flat[torch.arange(labels.numel()), :, torch.arange(labels.numel())] = 255
    return images


def interleaved_labels(per_class: int, seed: int) -> torch.Tensor:
    """``per_class`` labels of each of the 10 classes in a seeded random order (the files are not class-major)."""
    labels = torch.arange(10).repeat(per_class)
    return labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(seed))]


def write_mnist(root: Path, train_per_class: int = 3, test_per_class: int = 2) -> dict[str, torch.Tensor]:
    """MNIST's four raw IDX files under ``root/MNIST/raw``, images of :func:`marked_images` with labels in a random
    order; returns the images ``(n, 1, 28, 28)`` and labels of each split (``train_…``, ``t10k_…``)."""
    files = {}
    for split, per_class, seed in (("train", train_per_class, 1), ("t10k", test_per_class, 2)):
        labels = interleaved_labels(per_class, seed)
        images = marked_images(labels, (1, 28, 28), seed)
        write_idx(root / MNIST_RAW / f"{split}-images-idx3-ubyte", images[:, 0])
        write_idx(root / MNIST_RAW / f"{split}-labels-idx1-ubyte", labels)
        files |= {f"{split}_images": images, f"{split}_labels": labels}
    return files


def write_cifar10(root: Path, train_per_class: int = 3, test_per_class: int = 2) -> dict[str, torch.Tensor]:
    """CIFAR-10's pickled batches under ``root/cifar-10-batches-py`` (pickle protocol 2, like the real ones): the
    training images split over five batches, rows of 3072 bytes (1024 red, 1024 green, 1024 blue), then the test
    batch and ``batches.meta``; returns the images ``(n, 3, 32, 32)`` and labels of each split."""
    folder = root / CIFAR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = interleaved_labels(train_per_class, 3)
    test_labels = interleaved_labels(test_per_class, 4)
    train_images = marked_images(train_labels, (3, 32, 32), 3)
    test_images = marked_images(test_labels, (3, 32, 32), 4)
    parts = torch.arange(train_labels.numel()).tensor_split(len(CIFAR_BATCHES))
    batches = {name: (train_images[part], train_labels[part]) for name, part in zip(CIFAR_BATCHES, parts, strict=True)}
    for name, (images, labels) in (batches | {"test_batch": (test_images, test_labels)}).items():
        entry = {
            "batch_label": name,
            "labels": labels.tolist(),
            "data": images.reshape(len(labels), -1).numpy(),
            "filenames": [f"{name}_{k}.png" for k in range(len(labels))],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    meta = {"num_cases_per_batch": len(parts[0]), "label_names": CIFAR_LABEL_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "t10k_images": test_images,
        "t10k_labels": test_labels,
    }


# Training and metrics


def quiet_trainer(root: Path, max_steps: int, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """A CPU float64 Trainer without loggers, checkpoints, progress bar or model summary."""
    return L.Trainer(
        max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="64-true", default_root_dir=root, accelerator="cpu",
        callbacks=callbacks or [],
    )  # fmt: skip


def brute_force_nc(features: np.ndarray, labels: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> dict:
    """NC1–NC4 of one replica from the textbook formulas (p × p matrices, pinv, loops), for any class sizes: μ_G the
    mean of the class means, Σ_W pooled over all n samples, Σ_B = M̄M̄ᵀ/C."""
    num_classes, num_samples = weight.shape[0], labels.size
    means = np.stack([features[labels == c].mean(axis=0) for c in range(num_classes)])
    centred = (means - means.mean(axis=0)).T
    within = sum(np.outer(h - means[y], h - means[y]) for h, y in zip(features, labels, strict=True)) / num_samples
    between = centred @ centred.T / num_classes
    norms = np.linalg.norm(centred, axis=0)
    unit = centred / norms
    gram = unit.T @ unit
    off_diagonal = gram[~np.eye(num_classes, dtype=bool)]
    weight_norms = np.linalg.norm(weight, axis=1)
    predicted = [np.argmax(weight @ h + bias) for h in features]
    nearest = [np.argmin([np.linalg.norm(h - mean) for mean in means]) for h in features]
    return {
        "nc1": np.trace(within @ np.linalg.pinv(between)) / num_classes,
        "nc1_quotient": np.trace(within) / np.trace(between),
        "nc2_equinorm_means": norms.std() / norms.mean(),
        "nc2_equinorm_classifier": weight_norms.std() / weight_norms.mean(),
        "nc2_equiangle": off_diagonal.std(),
        "nc2_maxangle": np.abs(off_diagonal + 1 / (num_classes - 1)).mean(),
        "nc2_etf": np.linalg.norm(
            gram - num_classes / (num_classes - 1) * np.eye(num_classes) + 1 / (num_classes - 1)
        ),
        "nc3": np.linalg.norm(weight.T / np.linalg.norm(weight) - unit / np.linalg.norm(unit)),
        "nc4": np.mean(np.array(predicted) != np.array(nearest)),
    }
