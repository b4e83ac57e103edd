"""Target 4 (paper setting): wall time the collapse monitor adds to the paper experiment's training.

``experiment=paper``'s training (C = N = 3, p = 15, float64, 30 replicas, 20 000 steps) with and without the
monitor at its default schedule (10 evaluations per decade: 44 evaluations), one CPU thread. The two runs alternate,
``--pairs`` times, so that both see the same load; the overhead is printed from the fastest run of each and as the
median of the pairs' ratios (the two agree within a few points on a quiet machine; on a noisy one, trust the median).
Target: at most +10%. (For the large UFM of target 2 see ``bench_large_ufm.py``.)
"""

from __future__ import annotations

import argparse
import statistics

from benchmarks.common import single_thread, train_with_ufm_train

PAPER = [
    "model.init_scale=[1.0,1e-1,1e-2,1e-3,1e-4,1e-5]",
    "model.replicas=5",
    "trainer.max_steps=20000",
]


def main() -> None:
    """Measure and print the overhead."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5, help="alternating runs without and with the monitor")
    pairs = parser.parse_args().pairs
    single_thread()
    train_with_ufm_train(*PAPER)
    without, with_monitor = [], []
    for _ in range(pairs):
        without.append(train_with_ufm_train(*PAPER, "~callbacks.collapse_monitor"))
        with_monitor.append(train_with_ufm_train(*PAPER))
    ratios = [monitored / plain - 1 for plain, monitored in zip(without, with_monitor, strict=True)]
    print(f"paper training without monitor: {min(without):.3f} s, with monitor: {min(with_monitor):.3f} s (fastest)")
    print(
        f"the monitor adds {min(with_monitor) / min(without) - 1:+.1%} (fastest runs), "
        f"{statistics.median(ratios):+.1%} (median of {pairs} pairs) (target <= +10%)"
    )


if __name__ == "__main__":
    main()
