"""Shared helpers for the benchmarks: one CPU thread, best-of-k timing, runs through ufm-train's code path."""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_module

from ufm_torch.cli.train import build_and_fit


def single_thread() -> None:
    """Pin torch (and through it BLAS) to one thread and silence Lightning's chatter."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def best_time(function: Callable[[], object], repeats: int = 3) -> float:
    """Smallest wall time of ``repeats`` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def train_with_ufm_train(*overrides: str) -> float:
    """Wall time of ``build_and_fit`` (Trainer, default callbacks and logger) for the composed config, on the CPU
    (the baselines are CPU code; ``bench_gpu_crossover.py`` compares devices)."""
    with (
        tempfile.TemporaryDirectory() as run_dir,
        initialize_config_module(config_module="ufm_torch.conf", version_base="1.3"),
    ):
        quiet = ["callbacks.progress.refresh_rate=0", "trainer.accelerator=cpu"]
        cfg = compose(config_name="train", overrides=[f"run_dir={run_dir}", *quiet, *overrides])
        start = time.perf_counter()
        build_and_fit(cfg)
        elapsed = time.perf_counter() - start
    return elapsed


def print_replica_step_ratios(
    label: str, numpy_per_step: float, steps: int, targets: dict[int, float], overrides: Callable[[int], list[str]]
) -> None:
    """Time ``ufm-train`` (best of 2) for each replica count of ``targets`` with ``overrides(replicas)`` and print
    the cost per replica-step, its ratio to ``numpy_per_step`` (timed in the same run) and the verdict."""
    for replicas, target in targets.items():
        elapsed = best_time(lambda replicas=replicas: train_with_ufm_train(*overrides(replicas)), repeats=2)
        per_replica_step = elapsed / (steps * replicas)
        ratio = per_replica_step / numpy_per_step
        verdict = "meets" if ratio <= target else "misses"
        print(
            f"{label}ufm-train, {replicas:>2} replica(s): {per_replica_step * 1e6:.2f} us/replica-step, "
            f"ratio {ratio:.3f} (target <= {target}: {verdict})"
        )
