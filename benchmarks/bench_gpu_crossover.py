"""From which UFM size one CUDA device beats the CPU: one fused full-batch gradient step, CPU against GPU.

Sizes grow from the paper's (C = N = 3, p = 15) to C = 100, N = 1000, p = 512. For each, one step of plain gradient
descent inside a fused block (``ufm_torch.training.fused_descent.closed_form_steps``, the path ``ufm-train`` takes
on a full-batch UFM) is timed on the CPU, the baseline, and on the first CUDA device in the same run; a step costs
(a block of 1 + k steps − a block of 1 step) / k, since a block also computes the logits of the state it leaves.
The CPU time is the better of all threads and one thread (one thread is timed at growing sizes until it is twice
as slow: on larger problems it cannot win). Prints CPU time / GPU time per size and the smallest size from which
the GPU is faster at it and at every larger size. Without a CUDA device it says so and times the CPU only, up to
the first size whose step takes over 20 ms: a quick smoke check of the same path.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NamedTuple

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from benchmarks.common import best_time
from ufm_torch.data import class_major_labels
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.training.fused_descent import closed_form_steps

SIZES = [(3, 3, 15), (10, 10, 32), (10, 100, 64), (30, 100, 128), (100, 100, 256), (100, 300, 512), (100, 1000, 512)]
"""(C, N, p) from the paper's problem to the large UFM of ``bench_large_ufm.py``."""
BLOCK_SECONDS = 0.02
"""The k extra steps of a timed block run for at least this long (k doubles until they do, best of 3 each)."""
ONE_THREAD_LOSES_BY = 2.0
"""One thread is timed at growing sizes until it is this many times slower than all threads (it cannot win again
on larger problems)."""
CPU_ONLY_LIMIT_SECONDS = 0.02
"""Without a GPU, sizes stop after the first whose CPU step takes longer (a quick smoke check)."""


def step_seconds(num_classes: int, samples_per_class: int, feature_dim: int, dtype: str, device: str) -> float:
    """Seconds per fused gradient step of a UFM of this size on ``device`` (best of 3 blocks)."""
    model = UnconstrainedFeatures(num_classes, samples_per_class, feature_dim, init_scale=1.0, dtype=dtype).to(device)
    labels = class_major_labels(num_classes, samples_per_class).to(device)
    optimizer = LightningOptimizer(torch.optim.SGD(model.parameters(), lr=1e-6))

    def block(steps: int) -> Callable[[], None]:
        def run() -> None:
            closed_form_steps(model, labels, optimizer, steps=steps)
            if device == "cuda":
                torch.cuda.synchronize()

        return run

    block(1)()  # warm-up: allocations, cuBLAS handles, kernel choice
    first = best_time(block(1))
    extra = 1
    while (longer := best_time(block(1 + extra))) - first < BLOCK_SECONDS and extra < 2**14:
        extra *= 2
    return max(longer - first, 0.0) / extra


class CpuTiming(NamedTuple):
    """Seconds per step on all threads and on one thread (None where not timed), and the better of the two."""

    all_threads: float
    one_thread: float | None

    @property
    def best(self) -> float:
        return min(self.all_threads, self.one_thread or self.all_threads)


def cpu_seconds(size: tuple[int, int, int], dtype: str, threads: int, one_thread: bool) -> CpuTiming:
    """CPU time per step for ``size`` on all ``threads``, and on one thread if ``one_thread``."""
    torch.set_num_threads(threads)
    all_threads = step_seconds(*size, dtype, "cpu")
    if threads == 1 or not one_thread:
        return CpuTiming(all_threads, all_threads if threads == 1 else None)
    torch.set_num_threads(1)
    one = step_seconds(*size, dtype, "cpu")
    torch.set_num_threads(threads)
    return CpuTiming(all_threads, one)


def crossover(sizes: list[tuple[int, int, int]], speedups: list[float]) -> tuple[int, int, int] | None:
    """The smallest size from which every speed-up is above 1 (None if the largest is not)."""
    found = None
    for size, speedup in reversed(list(zip(sizes, speedups, strict=True))):
        if speedup <= 1:
            break
        found = size
    return found


def describe(size: tuple[int, int, int]) -> str:
    """``C=…, N=…, p=…``."""
    return "C={}, N={}, p={}".format(*size)


def microseconds(seconds: float | None) -> str:
    """``seconds`` in µs, or a dash where not timed."""
    return "–" if seconds is None else f"{seconds * 1e6:.1f}"


def main() -> None:
    """Measure and print the table and the crossover."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64", help="the UFM's dtype")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="CPU threads (the most tried)")
    args = parser.parse_args()
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        print(f"GPU: {torch.cuda.get_device_name(0)}; CPU: {args.threads} thread(s); UFM in {args.dtype}")
    else:
        print(f"No CUDA device (torch.cuda.is_available() is False): timing the CPU only ({args.threads} thread(s)), "
              f"UFM in {args.dtype}, up to a step of {CPU_ONLY_LIMIT_SECONDS} s.")  # fmt: skip
    columns = ("C", "N", "p", "n·p", f"CPU {args.threads} th µs", "CPU 1 th µs", "GPU µs", "CPU/GPU")
    widths = (4, 5, 4, 10, 13, 12, 10, 8)
    print(" ".join(f"{column:>{width}}" for column, width in zip(columns, widths, strict=True)))
    speedups, one_thread = [], True
    for size in SIZES:
        cpu = cpu_seconds(size, args.dtype, args.threads, one_thread)
        one_thread = cpu.one_thread is not None and cpu.one_thread < ONE_THREAD_LOSES_BY * cpu.all_threads
        gpu = step_seconds(*size, args.dtype, "cuda") if on_gpu else None
        num_classes, samples_per_class, feature_dim = size
        row = (
            num_classes, samples_per_class, feature_dim, num_classes * samples_per_class * feature_dim,
            microseconds(cpu.all_threads), microseconds(cpu.one_thread), microseconds(gpu),
            "–" if gpu is None else f"{cpu.best / gpu:.2f}",
        )  # fmt: skip
        print(" ".join(f"{entry:>{width}}" for entry, width in zip(row, widths, strict=True)))
        if gpu is not None:
            speedups.append(cpu.best / gpu)
        elif cpu.best > CPU_ONLY_LIMIT_SECONDS:
            print("Larger sizes are left out without a GPU.")
            break
    if not on_gpu:
        print("The crossover needs a CUDA device: run `make gpu-check` on a machine with one.")
        return
    found = crossover(SIZES, speedups)
    if found is None:
        print("The GPU is not faster at the largest size measured: keep trainer.accelerator=cpu.")
    elif found == SIZES[0]:
        print(f"The GPU is faster at every size measured, from the paper's ({describe(found)}) on.")
    else:
        print(f"The GPU pays off from {describe(found)} on (faster there and at every larger size measured); "
              f"below it, pin trainer.accelerator=cpu.")  # fmt: skip


if __name__ == "__main__":
    main()
