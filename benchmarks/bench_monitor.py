"""Target 4 (paper setting): wall time the collapse monitor adds to the paper experiment's training.

``experiment=paper``'s training (C = N = 3, p = 15, float64, 30 replicas, 20 000 steps) with and without the
monitor at its default schedule (10 evaluations per decade: 44 evaluations), one CPU thread, best of three.
Target: at most +10%. (For the large UFM of target 2 see ``bench_large_ufm.py``.)
"""

from __future__ import annotations

from benchmarks.common import best_time, single_thread, train_with_ufm_train

PAPER = [
    "model.init_scale=[1.0,1e-1,1e-2,1e-3,1e-4,1e-5]",
    "model.replicas=5",
    "trainer.max_steps=20000",
]


def main() -> None:
    """Measure and print the overhead."""
    single_thread()
    without = best_time(lambda: train_with_ufm_train(*PAPER, "~callbacks.collapse_monitor"))
    with_monitor = best_time(lambda: train_with_ufm_train(*PAPER))
    print(f"paper training without monitor: {without:.3f} s, with monitor: {with_monitor:.3f} s")
    print(f"the monitor adds {with_monitor / without - 1:+.1%} (target <= +10%)")


if __name__ == "__main__":
    main()
