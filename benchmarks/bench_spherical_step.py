"""One Riemannian step of the spherical UFM at C = 10 000 classes, p = 512, N = 10 samples per class (n = 100 000),
against the matrix products of the same shapes timed in the same run, and the peak memory of step and metrics.

The step is :func:`ufm_torch.training.fused_descent.spherical_descent` on a
:class:`~ufm_torch.models.UnconstrainedFeatures` built with ``normalize=True`` (float64, cross-entropy at τ = 0.1):
the data term's gradients over chunks of samples (:mod:`ufm_torch.objectives.sample_chunks`; the ``n × C`` logits,
8 GB, are never held), the tangent projections and the retractions. The baselines are the products of the same
shapes, chunk by chunk as the step takes them, without anything else:

- **two products**: ``Z_c = F_c Wᵀ`` and ``Z_c W`` (``(b × p)(p × C)`` and ``(b × C)(C × p)``), the issue's baseline;
- **three products**: those and ``Z_cᵀ F_c`` (``(C × b)(b × p)``), the arithmetic any exact gradient step must do
  (the logits, ``∇_F = RW`` and ``∇_W = RᵀF``, each ``2nCp`` flops); the step's ratio to two products is therefore
  at least 1.5 plus the softmax's share.

Each figure is the best of ``--repeats`` (step and baselines alternate). **Peak memory**: this process's peak resident
memory ``VmHWM`` (Linux) over the whole script, data, step and one evaluation of every metric the collapse monitor
records for this network (:func:`ufm_torch.metrics.network.measure_free_features`, f and the accuracy in chunks, ρ(W)
over every row), against the 6 GB the issue allows; ``--skip-metrics`` leaves the metrics out (ρ alone takes about a
minute at this size). ``--device cuda`` times the same on a GPU (``make gpu-check``), where the peak is
``torch.cuda.max_memory_allocated``. Benchmarks never assert: the script prints the ratios.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from ufm_torch.metrics.network import measure_free_features
from ufm_torch.metrics.statistics import class_labels
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.objectives.sample_chunks import chunk_rows, chunked_data_term, row_chunks
from ufm_torch.objectives.ufm import Objective
from ufm_torch.training.fused_descent import spherical_descent


def resident_gib(field: str) -> float:
    """``VmRSS`` or its peak ``VmHWM`` of this process in GiB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 2**20


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def chunked_products(features: torch.Tensor, weight: torch.Tensor, count: int) -> None:
    """The baseline: per chunk of samples the first ``count`` of ``Z_c = F_c Wᵀ``, ``Z_c W``, ``Z_cᵀ F_c``."""
    rows = chunk_rows(features.shape[0], weight.shape[-2])
    for chunk in row_chunks(features.shape[-2], rows):
        block = features[:, chunk]
        logits = torch.bmm(block, weight.transpose(-1, -2))
        if count >= 2:
            torch.bmm(logits, weight)
        if count >= 3:
            torch.bmm(logits.transpose(-1, -2), block)


def timed(call: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``call``."""
    synchronize(device)
    start = time.perf_counter()
    call()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    """Build the network, time step and baselines, measure the metrics, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--classes", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--samples-per-class", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-metrics", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    network = UnconstrainedFeatures(
        args.classes, args.samples_per_class, args.dim, bias=False, normalize=True, seed=0
    ).to(device)
    labels = torch.arange(args.classes, device=device).repeat_interleave(args.samples_per_class)
    objective = Objective("cross_entropy", temperature=0.1)
    features, weight = network.closed_form_features(), network.head.weight
    n = labels.numel()
    print(f"C = {args.classes}, p = {args.dim}, n = {n} (N = {args.samples_per_class}), float64, {device}, "
          f"{torch.get_num_threads()} thread(s); chunks of {chunk_rows(1, args.classes)} samples; the logits "
          f"whole would be {n * args.classes * 8 / 1e9:.1f} GB")  # fmt: skip
    calls = {
        "spherical step": lambda: spherical_descent(network, labels, 1, 1.0, objective),
        "two products": lambda: chunked_products(features, weight, 2),
        "three products": lambda: chunked_products(features, weight, 3),
    }
    with torch.no_grad():
        chunked_products(features[:, :64], weight[:, :64], 1)  # BLAS's own buffers
        best = {name: min(timed(call, device) for _ in range(args.repeats)) for name, call in calls.items()}
    flops = 2 * n * args.classes * args.dim
    print(f"{'':<18}{'seconds':>10}{'/ two':>8}{'/ three':>9}{'GFLOP/s per product':>22}")
    for name, seconds in best.items():
        products = {"spherical step": 3, "two products": 2, "three products": 3}[name]
        print(f"{name:<18}{seconds:>10.2f}{seconds / best['two products']:>8.3f}"
              f"{seconds / best['three products']:>9.3f}{products * flops / seconds / 1e9:>22.1f}")  # fmt: skip
    if not args.skip_metrics:
        start = time.perf_counter()
        term = chunked_data_term(features, weight, labels, objective)
        measurement = measure_free_features(
            network, class_labels(labels, n, args.classes), "head",
            lambda logits, rows, _: objective.data_term(logits, rows), None, (term.value, term.accuracy),
        )
        values = measurement.layers[0].values
        shown = ", ".join(f"{tag.split('/')[-1]} {float(values[tag][0]):.4g}" for tag in (
            "train/loss", "train/accuracy", "collapse/max_cosine", "collapse/softmax_margin", "collapse/gnc1",
        ))  # fmt: skip
        print(f"metrics (measure_free_features): {time.perf_counter() - start:.1f} s; {shown}")
    if device.type == "cuda":
        print(f"peak memory allocated on the device: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    else:
        print(f"peak resident memory of the whole script: {resident_gib('VmHWM'):.2f} GiB (6 GB = 5.59 GiB)")


if __name__ == "__main__":
    main()
