"""On one CUDA device the collapse metrics, the fused closed-form steps and ``ufm-train`` agree with the CPU.

Every test is marked ``gpu`` (``make gpu-check`` runs them with ``pytest -m gpu``) and skipped without CUDA.
Metrics are float64 on both devices, so CUDA and CPU differ only in rounding (reduction order, cuSOLVER against
LAPACK): each value must satisfy ``|cuda − cpu| ≤ ATOL + RTOL·|cpu|`` with ``RTOL = 1e-9`` and ``ATOL = 1e-12``.
On these states a rounding-level (4 ulp) perturbation of the inputs moves every metric by less than a thousandth of
that bound; the absolute part covers metrics that are differences of order-one terms near collapse (SNC1 ~ 1e-9
at ε = 1e-4 is ‖WWᵀ − √N(I − 11ᵀ/C)‖ with entries of order one).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from tests.conftest import run_ufm_train
from tests.test_backbones import digits_module, measure_backbone
from tests.test_fused_descent import OPTIMIZERS, autograd_trajectory, fused_trajectory
from tests.test_metrics_streaming import accumulate, random_batches, streamed_metrics
from ufm_torch.data import UFMDataModule, class_major_labels
from ufm_torch.metrics import collapse_metrics
from ufm_torch.metrics.network import NetworkMeasurement, measure_free_features
from ufm_torch.metrics.statistics import class_labels
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.run_folder.layout import METRICS_FILE
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.run_folder.status import read_status
from ufm_torch.training import fused_descent
from ufm_torch.training.fused_descent import closed_form_steps
from ufm_torch.training.module import CollapseModule

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = torch.device("cuda")
RTOL, ATOL = 1e-9, 1e-12
GPU_TRAINER = ("trainer.accelerator=gpu", "trainer.devices=1")


def ufm_state(name: str) -> UnconstrainedFeatures:
    """A float64 UFM on the CPU: ``random`` (ε = 1, three replicas, as initialised) or ``near_collapse`` (ε = 1e-2
    and 1e-4, two replicas each, after 2000 steps of the paper's gradient descent)."""
    if name == "random":
        return UnconstrainedFeatures(5, 4, 8, init_scale=1.0, replicas=3, seed=0)
    network = UnconstrainedFeatures(3, 3, 15, init_scale=[1e-2, 1e-4], replicas=2, seed=1)
    optimizer = LightningOptimizer(torch.optim.SGD(network.parameters(), lr=0.05))
    closed_form_steps(network, class_major_labels(3, 3), optimizer, steps=2000)
    return network


def parameters_of(network: UnconstrainedFeatures) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(features, labels, weight, bias)`` of a UFM, detached, on its device."""
    labels = class_major_labels(network.num_classes, network.samples_per_class).to(network.features.device)
    return network.features.detach(), labels, network.head.weight.detach(), network.head.bias.detach()


def assert_agree(on_device: dict[str, Tensor], on_cpu: dict[str, Tensor]) -> None:
    """Same keys; every value float64 on the device and within ``ATOL + RTOL·|cpu|`` of the CPU's."""
    assert set(on_device) == set(on_cpu)
    for name, expected in on_cpu.items():
        value = on_device[name]
        assert value.device.type == DEVICE.type and value.dtype == torch.float64, name
        torch.testing.assert_close(value.cpu(), expected, rtol=RTOL, atol=ATOL, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("state", ["random", "near_collapse"])
def test_metrics_of_cuda_tensors_equal_the_cpu_float64_values(state: str, dtype: torch.dtype) -> None:
    features, labels, weight, bias = parameters_of(ufm_state(state))
    features, weight, bias = features.to(dtype), weight.to(dtype), bias.to(dtype)
    expected = collapse_metrics(features.double(), labels, weight.double(), bias.double())
    on_device = [tensor.to(DEVICE) for tensor in (features, labels, weight, bias)]
    assert_agree(collapse_metrics(*on_device), expected)


@pytest.mark.parametrize("state", ["random", "near_collapse"])
def test_streaming_accumulators_on_cuda_equal_the_cpu_metrics(state: str) -> None:
    features, labels, weight, bias = parameters_of(ufm_state(state))
    batches = random_batches(labels.numel(), seed=4)
    expected = streamed_metrics(accumulate(features, labels, batches), features, labels, weight, bias, batches)
    features, labels, weight, bias = (tensor.to(DEVICE) for tensor in (features, labels, weight, bias))
    on_device = streamed_metrics(accumulate(features, labels, batches), features, labels, weight, bias, batches)
    assert_agree(on_device, expected)


def measured_on_both(module: CollapseModule, measure, datamodule) -> tuple[NetworkMeasurement, NetworkMeasurement]:
    """``measure(module, datamodule)`` of ``module`` on the CPU and of a copy on the device."""
    on_device = copy.deepcopy(module).to(DEVICE)
    return measure(on_device, datamodule), measure(module, datamodule)


@pytest.mark.parametrize("state", ["random", "near_collapse"])
def test_measure_free_features_on_cuda_equals_the_cpu(state: str) -> None:
    network = ufm_state(state)
    module = CollapseModule(network, optimizer=lambda params: torch.optim.SGD(params, lr=0.05))
    datamodule = UFMDataModule(network.num_classes, network.samples_per_class)

    def measure(measured: CollapseModule, data: UFMDataModule) -> NetworkMeasurement:
        device_labels = data.labels.to(measured.network.features.device)
        labels = class_labels(device_labels, device_labels.numel(), measured.network.num_classes)
        return measure_free_features(measured.network, labels, "network.head", measured.objective_value)

    on_device, on_cpu = measured_on_both(module, measure, datamodule)
    assert_agree(on_device.values, on_cpu.values)
    torch.testing.assert_close(on_device.class_means.cpu(), on_cpu.class_means, rtol=RTOL, atol=ATOL)


def test_measure_backbone_on_cuda_equals_the_cpu() -> None:
    module, datamodule = digits_module()
    on_device, on_cpu = measured_on_both(module, lambda m, d: measure_backbone(m, d, "network.body.2"), datamodule)
    for device_entry, cpu_entry in zip(on_device.layers, on_cpu.layers, strict=True):
        assert (device_entry.layer, device_entry.split) == (cpu_entry.layer, cpu_entry.split)
        assert_agree(device_entry.values, cpu_entry.values)


@pytest.mark.parametrize("folded_bias_limit", [fused_descent.FOLDED_BIAS_LIMIT, 0], ids=["folded", "in_place"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_path_on_cuda_follows_the_autograd_trajectory(
    name: str, folded_bias_limit: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_descent, "FOLDED_BIAS_LIMIT", folded_bias_limit)

    def make() -> UnconstrainedFeatures:
        return UnconstrainedFeatures(3, 4, 15, init_scale=[1.0, 1e-2], replicas=2, seed=3)

    reference = autograd_trajectory(make().to(DEVICE), OPTIMIZERS[name], steps=400)
    fused = make()
    trainer = fused_trajectory(fused, OPTIMIZERS[name], steps=400, tmp_path=tmp_path, accelerator="gpu")
    assert trainer.global_step == 400 and trainer.strategy.root_device.type == DEVICE.type
    for mine, theirs in zip(fused.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine.to(DEVICE), theirs, rtol=0, atol=1e-10)


def assert_finishes_with_finite_metrics(run: Path, result) -> None:
    """The run exited 0, finished, and every metric of every record in ``metrics.jsonl`` is a finite number."""
    assert result.returncode == 0, result.stderr
    assert read_status(run)["status"] == "finished"
    records = read_records(run / METRICS_FILE)
    assert records
    for record in records:
        for tag, value in record.items():
            if "/" in tag:
                assert isinstance(value, int | float) and math.isfinite(value), (record["step"], tag, value)


def test_ufm_trains_in_32_true_on_one_gpu(tmp_path: Path, short_run_overrides: list[str]) -> None:
    result = run_ufm_train(*short_run_overrides, *GPU_TRAINER, "model.dtype=float32", cwd=tmp_path)
    assert_finishes_with_finite_metrics(tmp_path / "run", result)


def test_backbone_trains_in_bf16_mixed_on_one_gpu(tmp_path: Path, short_run_overrides: list[str]) -> None:
    overrides = ("model=mlp", "data=digits", "trainer.precision=bf16-mixed")
    result = run_ufm_train(*short_run_overrides, *GPU_TRAINER, *overrides, cwd=tmp_path)
    assert_finishes_with_finite_metrics(tmp_path / "run", result)


def test_spherical_steps_in_chunks_of_samples_agree_with_the_cpu() -> None:
    """The spherical UFM's Riemannian steps over chunks of samples (several chunks: 1 000 classes, 40 000 samples,
    two replicas with their own τ) give on the GPU the parameters they give on the CPU."""
    from ufm_torch.objectives.ufm import Objective
    from ufm_torch.training.fused_descent import spherical_descent

    objective = Objective("cross_entropy", temperature=(0.1, 0.5))
    labels = class_major_labels(1000, 40)
    networks = {}
    for device in ("cpu", DEVICE):
        network = UnconstrainedFeatures(1000, 40, 16, replicas=2, seed=3, bias=False, normalize=True).to(device)
        with torch.no_grad():
            spherical_descent(network, labels.to(device), 5, 0.5, objective)
        networks[str(device)] = network
    for name in ("features", "head.weight"):
        cpu = networks["cpu"].get_parameter(name).detach()
        cuda = networks[str(DEVICE)].get_parameter(name).detach().cpu()
        torch.testing.assert_close(cuda, cpu, rtol=RTOL, atol=ATOL)


def test_the_spherical_step_benchmark_runs_on_the_gpu() -> None:
    """``benchmarks/bench_spherical_step.py --device cuda`` at C = 10 000, p = 512, N = 10 prints its ratios (the
    figures are read by ``make gpu-check``; no time is asserted)."""
    import subprocess
    import sys

    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_spherical_step", "--device", "cuda", "--skip-metrics"],
        capture_output=True, text=True, check=True, timeout=600,
    )
    print(completed.stdout)
    assert "spherical step" in completed.stdout and "peak memory allocated on the device" in completed.stdout
