"""Target 2: achieved FLOP/s of a gradient-descent step on a large UFM against ``torch.matmul`` alone.

C = 100, N = 1000, p = 512 (n = 100 000 samples), float32. One step needs three products of 2·n·p·C flops each:
logits F·Wᵀ, ∇_F = A·W and ∇_W = Aᵀ·F. The baseline times exactly those three ``torch.matmul`` calls on the same
shapes; the framework time is a Trainer run of ``ufm-train``'s code path (fused closed-form steps), with and without
the collapse monitor (target 4: the monitor at its default schedule adds at most 10%). Prints the ratios and the
cost of one evaluation in units of a step (the schedule's number of evaluations grows like log(steps), so the
overhead falls with the run's length).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import best_time, train_with_ufm_train
from ufm_torch.metrics.schedule import evaluation_steps

NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM = 100, 1000, 512


def matmul_only(steps: int) -> None:
    """The three products of ``steps`` gradient steps, nothing else."""
    generator = torch.Generator().manual_seed(0)
    num_samples = NUM_CLASSES * SAMPLES_PER_CLASS
    features = torch.randn(num_samples, FEATURE_DIM, generator=generator)
    weight = torch.randn(NUM_CLASSES, FEATURE_DIM, generator=generator)
    residual = torch.randn(num_samples, NUM_CLASSES, generator=generator)
    for _ in range(steps):
        torch.matmul(features, weight.T)
        torch.matmul(residual, weight)
        torch.matmul(residual.T, features)


def main() -> None:
    """Measure and print FLOP/s and ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flops_per_step = 3 * 2 * NUM_CLASSES * SAMPLES_PER_CLASS * FEATURE_DIM * NUM_CLASSES
    baseline = best_time(lambda: matmul_only(args.steps), repeats=2) / args.steps
    shape = [
        f"data.num_classes={NUM_CLASSES}", f"data.samples_per_class={SAMPLES_PER_CLASS}",
        f"model.feature_dim={FEATURE_DIM}", "model.dtype=float32", "trainer.precision=32-true",
        f"trainer.max_steps={args.steps}", f"threads={args.threads}", "optimizer.lr=1e-6",
    ]
    without_monitor = train_with_ufm_train(*shape, "~callbacks.collapse_monitor") / args.steps
    with_monitor = train_with_ufm_train(*shape) / args.steps
    print(f"{args.threads} thread(s), {args.steps} steps, {flops_per_step / 1e9:.1f} GFLOP per step")
    print(f"torch.matmul alone:       {flops_per_step / baseline / 1e9:7.1f} GFLOP/s")
    print(
        f"ufm-train (no monitor):   {flops_per_step / without_monitor / 1e9:7.1f} GFLOP/s, "
        f"ratio {baseline / without_monitor:.3f} (target >= 0.7)"
    )
    evaluations = len(evaluation_steps(args.steps))
    per_evaluation = (with_monitor - without_monitor) * args.steps / evaluations / without_monitor
    print(
        f"ufm-train (with monitor): {flops_per_step / with_monitor / 1e9:7.1f} GFLOP/s; the monitor adds "
        f"{with_monitor / without_monitor - 1:+.1%} (target <= +10%): {evaluations} evaluations, "
        f"{per_evaluation:.2f} steps' time each"
    )


if __name__ == "__main__":
    main()
