"""Every metric of one layer streamed in two passes against the whole-tensor functions and the public baseline.

Synthetic float32 features with class structure, streamed in batches of 1 000 rows, for the sizes of ``--sizes``
(default all three): ``small`` n = 50 000, p = 512, C = 10; ``classes`` n = 20 000, p = 2 048, C = 100; ``wide``
n = 10 000, p = 16 384, C = 10. Timed, best of ``--repeats`` interleaved rounds (3; 2 for ``wide``):

- **streaming**: ``ClassMeansAccumulator`` over the batches, ``CentredMomentsAccumulator`` with the classifier over
  them again, ``layer_metrics_from_statistics`` (NC1–NC4, CDNV, GNC2, UNC3, agreement, accuracy);
- **whole tensor**: ``nc_metrics`` and ``layer_metrics`` on the (n, p) float32 tensor;
- **public baseline**: the float32 accumulators of rhubarbwu/neural-collapse re-expressed in torch (a pass for the
  class means; a pass for the p × p within-class covariance, the per-class variance norms and the classifier/NCC
  decisions; then ``covariance_ratio`` with a p × p pseudo-inverse, CDNV, GNC2, UNC3, agreement). At p = 16 384 its
  covariance pass is timed on its first batch and scaled to all of them (each batch costs the same), and its
  16 384 × 16 384 pseudo-inverse is not run (minutes and several GiB); the line says so.

Memory is reported as what each path holds besides the data: the accumulators' states and buffers (streaming), the
(n, p) float32 features (whole tensor: it needs them all at once), the float32 p × p covariance (baseline). Prints
the ratio streaming / whole tensor (target: ≤ 1.5 at every size). One thread by default (``--threads``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from ufm_torch.metrics import (
    CentredMomentsAccumulator,
    ClassMeansAccumulator,
    layer_metrics,
    layer_metrics_from_statistics,
    nc_metrics,
)

SIZES = {"small": (50_000, 512, 10), "classes": (20_000, 2_048, 100), "wide": (10_000, 16_384, 10)}
"""name → (n, p, C)."""
REPEATS = {"small": 3, "classes": 3, "wide": 2}
"""Interleaved rounds per size (the wide one's calls take seconds each)."""

BATCH = 1_000
BASELINE_FULL_PINV_UP_TO = 4_096
"""Largest p at which the baseline's p × p pseudo-inverse is run (and its covariance pass timed over every batch)."""


def synthetic_layer(num_samples: int, feature_dim: int, num_classes: int) -> tuple[torch.Tensor, ...]:
    """float32 features: class means at distance ~3 from each other plus unit noise; a classifier near the means."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num_samples) % num_classes
    means = 3 * torch.randn(num_classes, feature_dim, generator=generator) / feature_dim**0.5
    features = torch.randn(num_samples, feature_dim, generator=generator) / feature_dim**0.5
    features += means[labels]
    weight = means + 0.1 * torch.randn(num_classes, feature_dim, generator=generator) / feature_dim**0.5
    return features, labels, weight, torch.zeros(num_classes)


def batches(features: torch.Tensor, labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive batches of :data:`BATCH` rows (views)."""
    return [(features[start : start + BATCH], labels[start : start + BATCH]) for start in range(0, len(labels), BATCH)]


def streaming(features, labels, weight, bias) -> tuple[dict[str, torch.Tensor], int]:
    """The two passes and every metric; the bytes of the accumulators' states and buffers."""
    means = ClassMeansAccumulator(weight.shape[0], features.shape[1])
    for rows, batch_labels in batches(features, labels):
        means.update(rows, batch_labels)
    moments = CentredMomentsAccumulator(means.compute(), weight, bias)
    for rows, batch_labels in batches(features, labels):
        moments.update(rows, batch_labels)
    values = layer_metrics_from_statistics(moments.compute(), weight, bias)
    held = [*means.metric_state.values(), *moments.metric_state.values(), *moments.buffers()]
    return values, sum(tensor.numel() * tensor.element_size() for tensor in held)


def public_baseline(features, labels, weight, full: bool) -> tuple[float, int]:
    """rhubarbwu/neural-collapse's float32 accumulators and measurements (see the module docstring), timed; its
    covariance pass over one batch scaled to all when not ``full``. Returns (seconds, bytes of the covariance)."""
    num_classes, feature_dim = weight.shape
    eps = torch.finfo(torch.float32).eps
    first_start = time.perf_counter()
    counts = torch.zeros(num_classes, dtype=torch.int32)
    totals = torch.zeros(num_classes, feature_dim)
    for rows, batch_labels in batches(features, labels):
        indicators = batch_labels[:, None] == torch.arange(num_classes)
        counts += indicators.sum(dim=0, dtype=torch.int32)
        totals += indicators.mT.to(torch.float32) @ rows
    means = totals / (counts[:, None] + eps)
    global_mean = means.mean(dim=0)
    first = time.perf_counter() - first_start
    covariance = torch.zeros(feature_dim, feature_dim)
    var_norms = torch.zeros(num_classes)
    agree = torch.zeros(num_classes, dtype=torch.int32)
    timed = batches(features, labels) if full else batches(features, labels)[:1]
    second_start = time.perf_counter()
    for rows, batch_labels in timed:
        indicators = (batch_labels[:, None] == torch.arange(num_classes)).mT.to(torch.float32)
        differences = rows - means[batch_labels]
        covariance += differences.mT @ differences
        var_norms += (indicators @ differences**2).sum(dim=-1)
        distances = (rows**2).sum(-1, keepdim=True) + (means**2).sum(-1) - 2 * rows @ means.mT
        matches = ((rows @ weight.mT).argmax(-1) == distances.argmin(-1)).to(torch.int32)
        agree.scatter_add_(0, batch_labels, matches)
    second = (time.perf_counter() - second_start) * len(labels) / sum(len(rows) for rows, _ in timed)
    third_start = time.perf_counter()
    covariance /= counts.sum() + eps
    var_norms /= counts + eps
    centred = means - global_mean
    between = centred.mT @ centred / num_classes
    if full:
        _ = torch.trace(torch.linalg.pinv(between) @ covariance) / num_classes
    pairs = torch.triu_indices(num_classes, num_classes, 1)
    squared = ((means[pairs[0]] - means[pairs[1]]) ** 2).sum(-1)
    _ = ((var_norms[pairs[0]] + var_norms[pairs[1]]) / 2 / squared).mean()
    unit = centred / (centred.norm(dim=-1, keepdim=True) + eps)
    _ = (unit[pairs[0]] - unit[pairs[1]]).norm(dim=-1).reciprocal().log().var(correction=0)
    cosines = torch.nn.functional.cosine_similarity(weight, centred)
    _ = cosines.std(correction=0) / cosines.mean()
    _ = agree.sum() / counts.sum()
    third = time.perf_counter() - third_start
    return first + second + third, covariance.numel() * covariance.element_size()


def interleaved_best_times(functions: list[Callable[[], object]], repeats: int) -> tuple[list[float], list[object]]:
    """Smallest wall time of each function over ``repeats`` rounds, the functions alternating within a round (so a
    burst of load from other processes slows all of them), and each one's last result."""
    times: list[list[float]] = [[] for _ in functions]
    results: list[object] = [None] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            results[index] = function()
            times[index].append(time.perf_counter() - start)
    return [min(each) for each in times], results


def mib(size: int) -> str:
    return f"{size / 2**20:8.1f} MiB"


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="rounds per size (default: 3, 2 for wide)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s), float32 features in batches of {BATCH} rows; best of interleaved rounds")
    for name in args.sizes:
        measure(name, args.repeats)


def measure(name: str, repeats: int | None) -> None:
    """Time the three paths at one size and print."""
    num_samples, feature_dim, num_classes = SIZES[name]
    features, labels, weight, bias = synthetic_layer(num_samples, feature_dim, num_classes)
    warm_up = slice(0, 2 * BATCH)  # first calls pay for lazy initialisation
    streaming(features[warm_up], labels[warm_up], weight, bias)
    layer_metrics(features[warm_up], labels[warm_up], weight, bias)
    (streamed, classic, whole), ((values, held), _, expected) = interleaved_best_times(
        [
            lambda: streaming(features, labels, weight, bias),
            lambda: nc_metrics(features, labels, weight, bias),
            lambda: layer_metrics(features, labels, weight, bias),
        ],
        repeats or REPEATS[name],
    )
    full = feature_dim <= BASELINE_FULL_PINV_UP_TO
    public, covariance = public_baseline(features, labels, weight, full)
    difference = max(float((values[name] - value).abs() / value.abs().clamp(min=1e-300)) for name, value in
                     expected.items())  # fmt: skip
    verdict = "meets" if streamed <= 1.5 * whole else "misses"
    note = "" if full else " (covariance pass scaled from 1 batch; p × p pinv not run)"
    print(f"\n{name}: n = {num_samples}, p = {feature_dim}, C = {num_classes}")
    print(f"  streaming, two passes, all metrics: {streamed:8.3f} s   holds {mib(held)}")
    print(f"  nc_metrics, whole tensor:           {classic:8.3f} s   holds {mib(features.numel() * 4)} (features)")
    print(f"  layer_metrics, whole tensor:        {whole:8.3f} s")
    print(f"  public baseline (float32, p × p):   {public:8.3f} s   holds {mib(covariance)}{note}")
    print(f"  streaming / layer_metrics: {streamed / whole:.2f} (target <= 1.5: {verdict}); "
          f"streaming / nc_metrics: {streamed / classic:.2f}; streaming / public: {streamed / public:.2f}; "
          f"largest relative difference streaming vs whole: {difference:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
