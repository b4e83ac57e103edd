"""The metrics for many classes at C = 10 000, p = 512: time and peak memory of each against one ``W Wᵀ`` product.

``W`` ``(C, p)``: random Gaussian rows in float64 (the metrics compute in float64 whatever they are given), the worst
case for ρ's pruning (every row must be solved; a symmetric code needs one). GNC1 reads float32 features, ``n = C ×
--samples-per-class`` rows around ``W``'s rows, as a network would give them. Two pieces of the collapse monitor's
layer metrics run on ``W``'s rows as class means: ``mean_geometry`` (``geometry_of_means``: the Helmert coordinates
``QᵀM̄ᵀ`` and their SVD) and ``pair_statistics`` (CDNV's and GNC2's sums over the ``C(C−1)/2`` pairs and the
smallest distances, from the coordinates of that geometry, over Gram tiles). Each metric runs in its own process:

- **peak memory added**: the peak resident memory during the metric's first call less the resident memory before
  it, the data built and BLAS warmed up (Linux: the peak ``VmHWM`` is reset by writing 5 to ``/proc/self/clear_refs``).
  The children run with ``MALLOC_MMAP_THRESHOLD_=65536``, so that every block glibc hands to torch is returned to the
  system when freed and the figure is what the call holds at its peak, not what glibc's heap kept from earlier
  calls. A ``C × C`` float64 matrix held whole shows as 763 MiB (the baseline's own line);
- **time**: the first call (ρ) or the best of ``--repeats`` calls, divided by the best of 3 ``W @ W.T`` products
  timed after it in the same process (``C × C × p`` multiply-adds, float64).

Benchmarks never assert: the script prints the ratios. One thread by default (``--threads``). About 3.5 minutes here,
most of it ρ (5–7 ms a row, and random rows need every row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from benchmarks.common import best_time
from ufm_torch.metrics.hyperspherical import (
    gnc1,
    gnc3,
    hyperspherical_energy,
    log_hyperspherical_energy,
    max_pairwise_cosine,
    softmax_code_margin_bounds,
)
from ufm_torch.metrics.neural_collapse import geometry_of_means
from ufm_torch.metrics.variability import pair_statistics

METRICS = [
    "gram", "max_pairwise_cosine", "hyperspherical_energy", "log_hyperspherical_energy", "gnc1", "gnc3",
    "softmax_code_margin", "mean_geometry", "pair_statistics",
]  # fmt: skip
"""What a child process measures; ``gram`` is the baseline ``W @ W.T`` itself."""


def resident_mib(field: str) -> float:
    """``VmRSS`` (resident memory now) or ``VmHWM`` (its peak) of this process, MiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def reset_peak() -> None:
    """Make the peak resident memory ``VmHWM`` the current one (Linux, ``/proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def metric_call(name: str, weight: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> Callable[[], object]:
    """The call that computes ``name`` on the benchmark's data."""
    num_classes = weight.shape[0]
    coordinates = geometry_of_means(weight).coordinates if name == "pair_statistics" else None
    variances = weight.new_full((num_classes,), 0.25 * weight.shape[1])  # the features' σ_c² = 0.5² p
    calls = {
        "gram": lambda: weight @ weight.T,
        "max_pairwise_cosine": lambda: max_pairwise_cosine(weight),
        "hyperspherical_energy": lambda: hyperspherical_energy(weight),
        "log_hyperspherical_energy": lambda: log_hyperspherical_energy(weight),
        "gnc1": lambda: gnc1(features, labels, num_classes),
        "gnc3": lambda: gnc3(weight, weight.flip(0)),
        "softmax_code_margin": lambda: softmax_code_margin_bounds(weight),
        "mean_geometry": lambda: geometry_of_means(weight),
        "pair_statistics": lambda: pair_statistics(coordinates, variances),
    }
    return calls[name]


def child(name: str, num_classes: int, feature_dim: int, samples_per_class: int, repeats: int) -> None:
    """Build the data, measure ``name`` and the baseline, print one JSON line."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(num_classes, feature_dim, dtype=torch.float64, generator=generator)
    labels = torch.arange(num_classes).repeat(samples_per_class)
    features = torch.randn(labels.numel(), feature_dim, generator=generator).mul_(0.5).add_(weight[labels].float())
    call = metric_call(name, weight, features, labels)
    weight[:64] @ weight[:64].T, features[:64] @ features[:64].T  # BLAS's own buffers, allocated once
    reset_peak()
    before = resident_mib("VmRSS")
    start = time.perf_counter()
    result = call()
    first = time.perf_counter() - start
    added = resident_mib("VmHWM") - before
    seconds = first if name == "softmax_code_margin" else min(first, best_time(call, repeats))
    baseline = best_time(metric_call("gram", weight, features, labels), 3)
    extra = {}
    if name == "softmax_code_margin":
        extra = {"value": float(result.value), "gap": float(result.value - result.lower_bound),
                 "rows_solved": int(result.rows_solved)}  # fmt: skip
    print(json.dumps({"seconds": seconds, "baseline": baseline, "added_mib": added, **extra}))


def main() -> None:
    """Run one child per metric and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--samples-per-class", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", choices=METRICS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [str(args.classes), str(args.dim), str(args.samples_per_class), str(args.repeats)]
    if args.child:
        child(args.child, *map(int, sizes))
        return
    whole = args.classes**2 * 8 / 2**20
    print(f"C = {args.classes}, p = {args.dim}, W float64, GNC1 on n = {args.classes * args.samples_per_class} "
          f"float32 features; {args.threads} thread(s); a whole C x C float64 matrix is {whole:.0f} MiB")  # fmt: skip
    print(f"{'metric':<28}{'seconds':>10}{'/ W Wt':>10}{'peak added MiB':>16}")
    for name in METRICS:
        command = [sys.executable, "-m", "benchmarks.bench_hyperspherical", "--child", name, "--threads",
                   str(args.threads), "--classes", sizes[0], "--dim", sizes[1], "--samples-per-class", sizes[2],
                   "--repeats", sizes[3]]  # fmt: skip
        environment = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"}
        completed = subprocess.run(command, check=True, capture_output=True, text=True, env=environment)
        measured = json.loads(completed.stdout)
        label = "W @ W.T (baseline)" if name == "gram" else name
        ratio = measured["seconds"] / measured["baseline"]
        print(f"{label:<28}{measured['seconds']:>10.3f}{ratio:>10.2f}{measured['added_mib']:>16.1f}")
        if name == "softmax_code_margin":
            print(f"  rho = {measured['value']:.12f}, certified gap {measured['gap']:.1e}, "
                  f"{measured['rows_solved']} of {args.classes} rows solved")  # fmt: skip


if __name__ == "__main__":
    main()
