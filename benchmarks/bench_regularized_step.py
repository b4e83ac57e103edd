"""Cost per replica-step of ufm-train's fused path on the regularised objectives against a hand-written numpy loop.

C = 4, N = 5, p = 8, float64, one CPU thread, plain full-batch gradient descent on
f = D + λ_W/2‖W‖²_F + λ_H/2‖H‖²_F + λ_b/2‖b‖² with D the batch-mean squared error ``mean_squared`` or the
label-smoothed cross-entropy ``cross_entropy`` (Zhu et al. 2021's regularised UFM). The numpy baseline takes the
same steps with the closed-form gradient ∇_H = WᵀA + λ_H H, ∇_W = AHᵀ + λ_W W, ∇_b = A1 + λ_b b (A = (Z − Y)/n, or
(softmax(Z) − Y_s)/n with a max-shifted softmax), timed in the same process. ufm-train runs through
``build_and_fit`` with its default callbacks and logger (the collapse monitor, and with λ_W, λ_H > 0 the global
optimum it solves once and compares with at each evaluation). Prints the ratios (framework time per replica-step) /
(numpy time per step): target ≤ 3 for one replica, ≤ 0.15 for 64.

Then the per-replica mode (issue 24): the same 64 replicas with a different λ in every one (λ_H from λ_H/2 to 2λ_H
and λ_W = λ_H per replica, ``module.classifier_decay=${module.feature_decay}``: 64 replica groups, per-replica factors
in every fused step and 64 optima) against one λ, timed alternately in the same run: target ≤ 1.10.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import best_time, print_replica_step_ratios, single_thread, train_with_ufm_train

NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, LEARNING_RATE = 4, 5, 8, 0.5
FEATURE_DECAY, CLASSIFIER_DECAY, BIAS_DECAY, LABEL_SMOOTHING = 1e-3, 5e-3, 1e-3, 0.1
SETTINGS = {
    "mean_squared": [],
    "cross_entropy": [f"module.label_smoothing={LABEL_SMOOTHING}"],
}


def numpy_regularised_descent(loss: str, steps: int) -> None:
    """The hand-written baseline: ``steps`` closed-form gradient steps on one regularised UFM."""
    rng = np.random.default_rng(0)
    num_samples = NUM_CLASSES * SAMPLES_PER_CLASS
    features = rng.standard_normal((FEATURE_DIM, num_samples)) * 1e-1
    weight = rng.standard_normal((NUM_CLASSES, FEATURE_DIM)) * 1e-1
    bias = np.zeros(NUM_CLASSES)
    targets = np.kron(np.eye(NUM_CLASSES), np.ones((1, SAMPLES_PER_CLASS)))
    if loss == "cross_entropy":
        targets = (1 - LABEL_SMOOTHING) * targets + LABEL_SMOOTHING / NUM_CLASSES
    for _ in range(steps):
        logits = weight @ features + bias[:, None]
        if loss == "cross_entropy":
            exponentials = np.exp(logits - logits.max(axis=0))
            residual = (exponentials / exponentials.sum(axis=0) - targets) / num_samples
        else:
            residual = (logits - targets) / num_samples
        grad_features = weight.T @ residual + FEATURE_DECAY * features
        grad_weight = residual @ features.T + CLASSIFIER_DECAY * weight
        grad_bias = residual.sum(axis=1) + BIAS_DECAY * bias
        features = features - LEARNING_RATE * grad_features
        weight = weight - LEARNING_RATE * grad_weight
        bias = bias - LEARNING_RATE * grad_bias


def ufm_train_overrides(loss: str, steps: int, replicas: int) -> list[str]:
    """The composed config of the same problem through ufm-train."""
    return [
        f"data.num_classes={NUM_CLASSES}", f"data.samples_per_class={SAMPLES_PER_CLASS}",
        f"model.feature_dim={FEATURE_DIM}", "model.init_scale=1e-1", f"model.replicas={replicas}",
        f"trainer.max_steps={steps}", f"optimizer.lr={LEARNING_RATE}", f"module.loss={loss}",
        f"module.feature_decay={FEATURE_DECAY}", f"module.classifier_decay={CLASSIFIER_DECAY}",
        f"module.bias_decay={BIAS_DECAY}", *SETTINGS[loss],
    ]


PER_REPLICA_TARGET = 1.10
"""A λ per replica costs at most 10% more than one λ (issue 24)."""


def per_replica_lambdas(replicas: int) -> list[str]:
    """Overrides giving each of ``replicas`` copies its own λ_H (geometric, λ_H/2 to 2λ_H), λ_W = λ_H per replica."""
    values = np.geomspace(FEATURE_DECAY / 2, 2 * FEATURE_DECAY, replicas)
    listed = ",".join(f"{value:.6g}" for value in values)
    return ["model.replicas=1", f"module.feature_decay=[{listed}]", "module.classifier_decay=${module.feature_decay}"]


def print_per_replica_ratio(loss: str, steps: int, replicas: int = 64, repeats: int = 3) -> None:
    """Time ``replicas`` replicas with one λ and with a λ per replica, alternately (best of ``repeats`` each), and
    print the cost per replica-step of each and their ratio against :data:`PER_REPLICA_TARGET`."""
    one = ufm_train_overrides(loss, steps, replicas)
    each = one + per_replica_lambdas(replicas)
    times: dict[str, list[float]] = {"one": [], "each": []}
    for _ in range(repeats):
        for name, overrides in (("one", one), ("each", each)):
            times[name].append(train_with_ufm_train(*overrides))
    one_time, each_time = min(times["one"]), min(times["each"])
    ratio = each_time / one_time
    verdict = "meets" if ratio <= PER_REPLICA_TARGET else "misses"
    print(
        f"{loss}: {replicas} replicas, one λ {one_time / (steps * replicas) * 1e6:.2f} us/replica-step, a λ per "
        f"replica {each_time / (steps * replicas) * 1e6:.2f} us/replica-step, ratio {ratio:.3f} "
        f"(target <= {PER_REPLICA_TARGET}: {verdict})"
    )


def main() -> None:
    """Measure and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--loss", choices=sorted(SETTINGS), nargs="*", default=list(SETTINGS))
    parser.add_argument("--per-replica-only", action="store_true", help="only the λ-per-replica mode against one λ")
    args = parser.parse_args()
    single_thread()
    for loss in args.loss:
        if args.per_replica_only:
            print_per_replica_ratio(loss, args.steps)
            continue
        numpy_per_step = best_time(lambda loss=loss: numpy_regularised_descent(loss, args.steps)) / args.steps
        print(f"{loss}: numpy loop {numpy_per_step * 1e6:.2f} us/step")
        print_replica_step_ratios(
            f"{loss}: ", numpy_per_step, args.steps, {1: 3.0, 64: 0.15},
            lambda replicas, loss=loss: ufm_train_overrides(loss, args.steps, replicas),
        )  # fmt: skip
        print_per_replica_ratio(loss, args.steps)

if __name__ == "__main__":
    main()
