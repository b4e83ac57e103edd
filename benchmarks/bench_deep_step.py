"""Cost per replica-step of ufm-train's fused path on the deep UFM against a hand-written numpy loop.

C = 4, N = 5 (n = 20), p = d = 8, L = 3, ReLU, no bias, float64, one CPU thread, plain full-batch gradient descent
on f = D + λ_{H_1}/2‖H_1‖²_F + Σ_{l<L} λ_hidden/2‖W_l‖²_F + λ_{W_L}/2‖W_L‖²_F (Súkeník et al. 2023) with D the
batch-mean squared error ``mean_squared`` or the label-smoothed ``cross_entropy``. The numpy baseline takes the same
steps with backpropagation written out (``G_{l−1} = (G_l W_l) ⊙ [A_l > 0]``), timed in the same process. ufm-train
runs through ``build_and_fit`` with its default callbacks and logger less the collapse monitor, which cannot measure
the deep UFM yet. Prints the ratios (framework time per replica-step) / (numpy time per step): target ≤ 3 for one
replica, ≤ 0.15 for 64.

Then the design choice inside a block: the fused steps of :mod:`ufm_torch.training.deep_steps` (hand-written batched
backpropagation) against the same steps with the gradient from ``torch.autograd.grad``, both on the same tensors
outside Lightning, at 1 and 64 replicas.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from benchmarks.common import best_time, print_replica_step_ratios, single_thread
from ufm_torch.data import class_major_labels
from ufm_torch.models import DeepUnconstrainedFeatures
from ufm_torch.objectives.deep_ufm import DeepObjective
from ufm_torch.objectives.ufm import Objective
from ufm_torch.training.deep_steps import free_layer_steps

NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, WIDTH, DEPTH, INIT_SCALE = 4, 5, 8, 8, 3, 1.0
LEARNING_RATE, FEATURE_DECAY, HIDDEN_DECAY, CLASSIFIER_DECAY, LABEL_SMOOTHING = 0.5, 1e-3, 2e-3, 5e-3, 0.1
SETTINGS = {
    "mean_squared": [],
    "cross_entropy": [f"module.label_smoothing={LABEL_SMOOTHING}"],
}


def numpy_deep_descent(loss: str, steps: int) -> None:
    """The hand-written baseline: ``steps`` gradient steps on one deep UFM (columns are samples, as in the papers)."""
    rng = np.random.default_rng(0)
    num_samples = NUM_CLASSES * SAMPLES_PER_CLASS
    dims = [FEATURE_DIM] + [WIDTH] * (DEPTH - 1) + [NUM_CLASSES]
    features = rng.standard_normal((FEATURE_DIM, num_samples))
    features *= INIT_SCALE / np.linalg.norm(features)
    weights = []
    for layer in range(DEPTH):
        weight = rng.standard_normal((dims[layer + 1], dims[layer]))
        weights.append(weight * INIT_SCALE / np.linalg.norm(weight))
    decays = [HIDDEN_DECAY] * (DEPTH - 1) + [CLASSIFIER_DECAY]
    targets = np.kron(np.eye(NUM_CLASSES), np.ones((1, SAMPLES_PER_CLASS)))
    if loss == "cross_entropy":
        targets = (1 - LABEL_SMOOTHING) * targets + LABEL_SMOOTHING / NUM_CLASSES
    for _ in range(steps):
        layers = [features]
        for weight in weights[:-1]:
            layers.append(np.maximum(weight @ layers[-1], 0.0))
        logits = weights[-1] @ layers[-1]
        if loss == "cross_entropy":
            exponentials = np.exp(logits - logits.max(axis=0))
            gradient = (exponentials / exponentials.sum(axis=0) - targets) / num_samples
        else:
            gradient = (logits - targets) / num_samples
        new_weights = []
        for layer in range(DEPTH - 1, -1, -1):
            weight = weights[layer]
            new_weights.append(weight - LEARNING_RATE * (gradient @ layers[layer].T + decays[layer] * weight))
            upstream = weight.T @ gradient
            gradient = upstream * (layers[layer] > 0) if layer else upstream
        features = features - LEARNING_RATE * (gradient + FEATURE_DECAY * features)
        weights = new_weights[::-1]


def ufm_train_overrides(loss: str, steps: int, replicas: int) -> list[str]:
    """The composed config of the same problem through ufm-train."""
    return [
        "model=deep_ufm", f"data.num_classes={NUM_CLASSES}", f"data.samples_per_class={SAMPLES_PER_CLASS}",
        f"model.feature_dim={FEATURE_DIM}", f"model.width={WIDTH}", f"model.depth={DEPTH}",
        f"model.init_scale={INIT_SCALE}", f"model.replicas={replicas}", "~callbacks.collapse_monitor",
        f"trainer.max_steps={steps}", f"optimizer.lr={LEARNING_RATE}", f"module.loss={loss}",
        f"module.feature_decay={FEATURE_DECAY}", f"module.hidden_decay={HIDDEN_DECAY}",
        f"module.classifier_decay={CLASSIFIER_DECAY}", *SETTINGS[loss],
    ]  # fmt: skip


def deep_objective(loss: str) -> DeepObjective:
    """The benchmark's objective."""
    smoothing = LABEL_SMOOTHING if loss == "cross_entropy" else 0.0
    objective = Objective(loss, smoothing, FEATURE_DECAY, CLASSIFIER_DECAY)
    return DeepObjective(objective, HIDDEN_DECAY)


def fused_block(model: DeepUnconstrainedFeatures, loss: str, steps: int) -> None:
    """``steps`` steps of :func:`~ufm_torch.training.deep_steps.free_layer_steps` (plain descent in place)."""
    optimizer = LightningOptimizer(torch.optim.SGD(model.parameters(), lr=LEARNING_RATE))
    labels = class_major_labels(NUM_CLASSES, SAMPLES_PER_CLASS)
    free_layer_steps(model, labels, optimizer, steps, deep_objective(loss))


def autograd_block(model: DeepUnconstrainedFeatures, loss: str, steps: int) -> None:
    """The same steps with the gradient of f from ``torch.autograd.grad`` and the same in-place updates."""
    objective = deep_objective(loss)
    labels = class_major_labels(NUM_CLASSES, SAMPLES_PER_CLASS)
    indices = torch.arange(labels.numel())
    parameters = list(model.parameters())
    features, weights, _ = model.free_layers()
    for _ in range(steps):
        value = objective.value(model(indices), labels, features, weights, None).sum()
        gradients = torch.autograd.grad(value, parameters)
        with torch.no_grad():
            for parameter, gradient in zip(parameters, gradients, strict=True):
                parameter.sub_(gradient, alpha=LEARNING_RATE)


def print_block_comparison(loss: str, steps: int) -> None:
    """Time per step of the hand-written block and the autograd block, best of 3, at 1 and 64 replicas."""
    for replicas in (1, 64):
        times = {}
        for name, block in (("hand-written", fused_block), ("autograd", autograd_block)):
            model = DeepUnconstrainedFeatures(NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, DEPTH, WIDTH,
                                              init_scale=INIT_SCALE, replicas=replicas)  # fmt: skip
            times[name] = best_time(lambda block=block, model=model: block(model, loss, steps)) / steps
        print(
            f"{loss}: block alone, {replicas:>2} replica(s): hand-written backpropagation "
            f"{times['hand-written'] * 1e6:.2f} us/step, autograd {times['autograd'] * 1e6:.2f} us/step "
            f"(autograd / hand-written {times['autograd'] / times['hand-written']:.2f})"
        )


def main() -> None:
    """Measure and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--loss", choices=sorted(SETTINGS), nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    single_thread()
    for loss in args.loss:
        numpy_per_step = best_time(lambda loss=loss: numpy_deep_descent(loss, args.steps)) / args.steps
        print(f"{loss}: numpy loop {numpy_per_step * 1e6:.2f} us/step")
        print_replica_step_ratios(
            f"{loss}: ", numpy_per_step, args.steps, {1: 3.0, 64: 0.15},
            lambda replicas, loss=loss: ufm_train_overrides(loss, args.steps, replicas),
        )  # fmt: skip
        print_block_comparison(loss, args.steps // 4)


if __name__ == "__main__":
    main()
