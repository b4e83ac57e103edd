"""Issue 20, item 4: the per-layer measurement of a network against one plain inference pass, and its memory.

**Cost.** The ConvNet of ``model=convnet`` on 2 000 synthetic MNIST-sized images (1×28×28, C = 10, batches of 250):
every metric at 4 hooked layers (the two convolution blocks' activations, average-pooled, the pooled 64 channels and
the classifier's input) through :func:`ufm_torch.metrics.network.measure_layers`, against one plain
``torch.inference_mode`` pass of the same network over the same batches, timed in the same run (best of
``--repeats``). Target: ≤ 3×.

**Memory.** A network whose first activation is a 64×32×32 map, flattened (p = 65 536), at C = 10 over 2 000
CIFAR-sized images, measured in a subprocess: the peak resident memory after one plain pass, then after measuring
that layer and the classifier's input. Target: the measurement adds ≤ 1 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.common import best_time
from ufm_torch.metrics.layers import FeatureMap
from ufm_torch.metrics.network import MeasurementPlan, measure_layers
from ufm_torch.models import ConvNet

NUM_CLASSES = 10
CONVNET_LAYERS = ("body.2", "body.6", "body.9")
"""The first and second blocks' activations (pooled over space) and the pooled 64 channels; with the classifier's
input (``head``), 4 layers."""


def synthetic_loader(num_samples: int, shape: tuple[int, ...], batch_size: int) -> DataLoader:
    """``num_samples`` Gaussian images of ``shape`` with balanced labels, in order."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(num_samples, *shape, generator=generator)
    labels = torch.arange(num_samples) % NUM_CLASSES
    return DataLoader(TensorDataset(inputs, labels), batch_size=batch_size)


def plain_pass(model: nn.Module, loader: DataLoader) -> None:
    """One inference pass of ``model`` over ``loader``."""
    with torch.inference_mode():
        for inputs, _ in loader:
            model(inputs)


def cost(repeats: int) -> None:
    """Print the cost ratio of measuring 4 layers of the ConvNet to one inference pass."""
    model = ConvNet(1, NUM_CLASSES, feature_dim=64).eval()
    loader = synthetic_loader(2000, (1, 28, 28), batch_size=250)
    plan = MeasurementPlan(("head", *CONVNET_LAYERS), "head", NUM_CLASSES)
    inference = best_time(lambda: plain_pass(model, loader), repeats)
    measured = best_time(lambda: measure_layers(model, plan, loader), repeats)
    verdict = "meets" if measured / inference <= 3 else "misses"
    threads = torch.get_num_threads()
    print(f"ConvNet, 2000 images 1x28x28, {threads} thread(s): one inference pass {inference * 1e3:.1f} ms")
    ratio = measured / inference
    print(f"every metric at 4 layers: {measured * 1e3:.1f} ms, ratio {ratio:.2f} (target <= 3: {verdict})")


class WideMap(nn.Module):
    """A 64×32×32 activation (``map``), then global average pooling and a linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.map = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(64, NUM_CLASSES)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.map(inputs).mean(dim=(2, 3)))


def peak_megabytes() -> float:
    """Peak resident memory of this process so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child() -> None:
    """In a fresh process: peak memory after a plain pass, then after the measurement; printed as JSON."""
    model = WideMap().eval()
    loader = synthetic_loader(2000, (3, 32, 32), batch_size=100)
    plain_pass(model, loader)
    before = peak_megabytes()
    plan = MeasurementPlan(("head", "map"), "head", NUM_CLASSES, feature_map=FeatureMap.FLATTEN)
    measure_layers(model, plan, loader)
    print(json.dumps({"before": before, "after": peak_megabytes()}))


def memory() -> None:
    """Run :func:`memory_child` in a subprocess and print what the measurement added."""
    command = [sys.executable, "-m", "benchmarks.bench_layer_monitor", "--memory-child"]
    peaks = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    added = peaks["after"] - peaks["before"]
    verdict = "meets" if added <= 1024 else "misses"
    print(
        f"flattened 64x32x32 map (p = 65536), C = 10, 2000 images: peak {peaks['before']:.0f} MB after a plain pass, "
        f"{peaks['after']:.0f} MB after measuring; added {added:.0f} MB (target <= 1024 MB: {verdict})"
    )


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child()
        return
    cost(args.repeats)
    memory()


if __name__ == "__main__":
    main()
