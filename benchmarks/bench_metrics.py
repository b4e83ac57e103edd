"""Target 3: every NC/SNC metric at scale costs no more than one gradient step, and streaming memory is O(p² + Cp).

n = 100 000 samples (C = 100, N = 1000), p = 512, float32 features as a large UFM holds them (``--dtype float64``
for a float64 UFM). Times
``collapse_metrics`` (float64 inside, NC1 through the (C−1)-dimensional span of the class means, no p×p
pseudo-inverse) against one closed-form gradient step on the same shapes inside a fused block, and prints the
ratio. Then feeds
the streaming accumulator 10 000 and 100 000 samples and prints the bytes its states hold (they must not grow).
"""

from __future__ import annotations

import argparse

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from benchmarks.common import best_time
from ufm_torch.data import class_major_labels
from ufm_torch.metrics import ClassStatisticsAccumulator, collapse_metrics
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.training.fused_descent import closed_form_steps

NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM = 100, 1000, 512
STEPS = 4
"""One step costs (time of a block of 1 + STEPS steps − time of a block of 1 step) / STEPS: a block also computes
the logits of the state it leaves, once, which is not part of a step."""


def accumulator_bytes(num_samples: int, batch_size: int = 10_000) -> int:
    """Bytes held by the accumulator's states after ``num_samples`` samples in batches."""
    accumulator = ClassStatisticsAccumulator(NUM_CLASSES, FEATURE_DIM)
    generator = torch.Generator().manual_seed(0)
    for start in range(0, num_samples, batch_size):
        count = min(batch_size, num_samples - start)
        accumulator.update(torch.randn(count, FEATURE_DIM, generator=generator), torch.arange(count) % NUM_CLASSES)
    return sum(state.numel() * state.element_size() for state in accumulator.metric_state.values())


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="the UFM's dtype")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = UnconstrainedFeatures(NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, init_scale=1.0, dtype=args.dtype)
    labels = class_major_labels(NUM_CLASSES, SAMPLES_PER_CLASS)
    optimizer = LightningOptimizer(torch.optim.SGD(model.parameters(), lr=1e-6))
    block = best_time(lambda: closed_form_steps(model, labels, optimizer, steps=1))
    step = (best_time(lambda: closed_form_steps(model, labels, optimizer, steps=1 + STEPS)) - block) / STEPS
    network = model.features.detach(), labels, model.head.weight.detach(), model.head.bias.detach()
    metrics = best_time(lambda: collapse_metrics(*network))
    print(f"{args.threads} thread(s), n = {labels.numel()}, p = {FEATURE_DIM}, C = {NUM_CLASSES}, UFM in {args.dtype}")
    print(f"one gradient step: {step * 1e3:8.1f} ms")
    print(f"all NC/SNC metrics: {metrics * 1e3:7.1f} ms, ratio {metrics / step:.2f} (target <= 1)")
    small, large = accumulator_bytes(10_000), accumulator_bytes(100_000)
    print(f"streaming accumulator state: {small} bytes after 1e4 samples, {large} bytes after 1e5 (must be equal)")


if __name__ == "__main__":
    main()
