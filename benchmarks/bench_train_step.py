"""Target 1: cost per replica-step of ufm-train's code path against a hand-written numpy loop (paper size).

C = N = 3, p = 15, float64, one CPU thread. The numpy baseline is full-batch gradient descent with the
closed-form gradient ∇_H = WᵀA, ∇_W = AHᵀ, ∇_b = A1, timed in the same process. Prints the ratios
(framework time per replica-step) / (numpy time per step): target ≤ 3 for one replica, ≤ 0.1 for 64.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import best_time, print_replica_step_ratios, single_thread

NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, LEARNING_RATE = 3, 3, 15, 0.05


def numpy_gradient_descent(steps: int) -> None:
    """The hand-written baseline: ``steps`` closed-form gradient steps on one UFM."""
    rng = np.random.default_rng(0)
    num_samples = NUM_CLASSES * SAMPLES_PER_CLASS
    features = rng.standard_normal((FEATURE_DIM, num_samples)) * 1e-3
    weight = rng.standard_normal((NUM_CLASSES, FEATURE_DIM)) * 1e-3
    bias = np.zeros(NUM_CLASSES)
    targets = np.kron(np.eye(NUM_CLASSES), np.ones((1, SAMPLES_PER_CLASS)))
    for _ in range(steps):
        residual = weight @ features + bias[:, None] - targets
        grad_features, grad_weight, grad_bias = weight.T @ residual, residual @ features.T, residual.sum(axis=1)
        features = features - LEARNING_RATE * grad_features
        weight = weight - LEARNING_RATE * grad_weight
        bias = bias - LEARNING_RATE * grad_bias


def main() -> None:
    """Measure and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20000)
    args = parser.parse_args()
    single_thread()
    numpy_per_step = best_time(lambda: numpy_gradient_descent(args.steps)) / args.steps
    print(f"numpy loop: {numpy_per_step * 1e6:.2f} us/step")
    print_replica_step_ratios(
        "", numpy_per_step, args.steps, {1: 3.0, 64: 0.1},
        lambda replicas: [f"trainer.max_steps={args.steps}", f"model.replicas={replicas}", "model.init_scale=1e-3"],
    )  # fmt: skip

if __name__ == "__main__":
    main()
