"""The deep UFM (``model=deep_ufm``): its model, its objective and its fused full-batch steps.

Depth 1 is the UFM (same start, same trajectory); the objective is the deep oracles' own; the fused steps of
hand-written backpropagation follow autograd on the same objective for every activation, loss, bias setting and
depth, through every optimiser path, and stop at every step a callback declares."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tests.test_fused_descent import LabelledRows
from ufm_torch.callbacks.training_curves import TrainingCurves
from ufm_torch.data import class_major_labels
from ufm_torch.data.ufm import RepeatedBatch
from ufm_torch.models import (
    Activation,
    DeepUnconstrainedFeatures,
    UnconstrainedFeatures,
    has_closed_form,
    has_free_features,
    has_free_layers,
)
from ufm_torch.objectives.deep_ufm import DeepObjective
from ufm_torch.objectives.ufm import Objective
from ufm_torch.theory.deep_problem import ACTIVATIONS, DeepUFMProblem, deep_forward, deep_ufm_objective
from ufm_torch.training.module import CollapseModule

NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, WIDTH, STEPS = 3, 3, 6, 5, 300
LABELS = class_major_labels(NUM_CLASSES, SAMPLES_PER_CLASS)
LOSS_NAMES = ("sum_squared", "mean_squared", "cross_entropy")
DECAYS = {"feature_decay": 0.01, "classifier_decay": 0.02, "hidden_decay": 0.03}
LEARNING_RATES = {"sum_squared": 0.05, "mean_squared": 0.3, "cross_entropy": 0.3}
"""Plain descent's step size per loss (the mean-reduced losses carry 1/n), so that 300 steps move."""
OPTIMIZERS = {
    "momentum": functools.partial(torch.optim.SGD, lr=0.02, momentum=0.9),
    "adam": functools.partial(torch.optim.Adam, lr=1e-2),
}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as in ``tests/test_regularized_training.py`` (a loaded machine's OpenMP waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def deep_ufm(depth: int = 3, activation: str = "relu", bias: bool = False, **keys) -> DeepUnconstrainedFeatures:
    """C = 3, N = 3, p = 6, d = 5, two replicas (ε = 1.5 and 1.2)."""
    settings = {"init_scale": [1.5, 1.2], "seed": 5} | keys
    return DeepUnconstrainedFeatures(
        NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, depth=depth, width=WIDTH, activation=activation, bias=bias,
        **settings,
    )  # fmt: skip


def weights_of(model: DeepUnconstrainedFeatures) -> list[Tensor]:
    """``[W_1, …, W_L]``, read from the modules (not from ``free_layers``)."""
    return [layer.weight for layer in model.layers] + [model.head.weight]


def reference_objective(
    model: DeepUnconstrainedFeatures, labels: Tensor, loss: str, label_smoothing: float = 0.0,
    feature_decay: float = 0.0, classifier_decay: float = 0.0, hidden_decay: float | None = None,
    bias_decay: float = 0.0, indices: Tensor | None = None,
) -> Tensor:  # fmt: skip
    """Σ_r f_r written out with ``torch.nn.functional`` and the oracle's ``deep_forward``: the data term of the
    samples ``indices`` (default all; row i of the features has label ``labels[i]``) plus the decays of all of H_1,
    every W_l (``hidden_decay`` None: λ_W) and b."""
    indices = torch.arange(labels.numel()) if indices is None else indices
    weights = weights_of(model)
    logits = deep_forward(model.features[..., indices, :], weights, model.activation.value)[-1]
    logits = logits + model.head.bias.unsqueeze(-2)
    targets = labels[indices]
    if loss == "cross_entropy":
        data = F.cross_entropy(logits.transpose(-1, -2), targets.expand(*logits.shape[:-1]), reduction="none",
                               label_smoothing=label_smoothing).mean(-1)  # fmt: skip
    else:
        data = 0.5 * (logits - F.one_hot(targets, model.num_classes).to(logits)).square().sum(dim=(-1, -2))
        data = data / indices.numel() if loss == "mean_squared" else data
    hidden = classifier_decay if hidden_decay is None else hidden_decay
    total = data.sum() + 0.5 * feature_decay * model.features.square().sum()
    total = total + 0.5 * classifier_decay * weights[-1].square().sum()
    total = total + sum(0.5 * hidden * weight.square().sum() for weight in weights[:-1])
    return total + (0.5 * bias_decay * model.head.bias.square().sum() if model.head.has_bias else 0.0)


def objective_settings(loss: str, bias: bool) -> dict[str, float | str]:
    """The ``module.*`` keys of a case: every decay (λ_b with a bias), label smoothing 0.1 for the cross-entropy."""
    settings: dict[str, float | str] = {"loss": loss, **DECAYS}
    if bias:
        settings["bias_decay"] = 0.04
    if loss == "cross_entropy":
        settings["label_smoothing"] = 0.1
    return settings


def autograd_trajectory(
    model: DeepUnconstrainedFeatures, optimizer_factory, steps: int, labels: Tensor = LABELS,
    indices: Tensor | None = None, **settings,
) -> DeepUnconstrainedFeatures:  # fmt: skip
    """A plain PyTorch loop: the autograd gradient of :func:`reference_objective`, one optimiser step at a time."""
    optimizer = optimizer_factory(model.parameters())
    for _ in range(steps):
        optimizer.zero_grad()
        reference_objective(model, labels, indices=indices, **settings).backward()
        optimizer.step()
    return model


def fused_trajectory(
    model: DeepUnconstrainedFeatures, optimizer_factory, steps: int, tmp_path: Path,
    callbacks: list[L.Callback] | None = None, datamodule: L.LightningDataModule | None = None, **settings,
) -> tuple[L.Trainer, CollapseModule]:  # fmt: skip
    """The same run through the Trainer and :class:`CollapseModule` (fused blocks of at most 64 steps), the rows of
    the full batch shuffled (:class:`LabelledRows`) unless ``datamodule`` is given."""
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="64-true", default_root_dir=tmp_path, accelerator="cpu",
        callbacks=callbacks,
    )  # fmt: skip
    module = CollapseModule(model, optimizer_factory, fused_steps=64, **settings)
    trainer.fit(module, datamodule=datamodule or LabelledRows(LABELS))
    return trainer, module


def assert_same_parameters(mine: torch.nn.Module, theirs: torch.nn.Module, atol: float = 1e-10) -> None:
    """Every parameter and buffer agrees to ``atol``."""
    for (name, value), (_, reference) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
        torch.testing.assert_close(value, reference, rtol=0, atol=atol, msg=name)


def moved(model: torch.nn.Module, start: torch.nn.Module) -> float:
    """The largest change of any parameter from ``start``."""
    return max(float((a - b).detach().abs().max()) for a, b in zip(model.parameters(), start.parameters(), strict=True))


# The model


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_depth_one_starts_exactly_where_the_ufm_starts(bias: bool) -> None:
    keys = {"init_scale": [1e-3, 1.0], "replicas": 2, "seed": 7, "samples_per_class": [4, 2, 1]}
    ufm = UnconstrainedFeatures(NUM_CLASSES, feature_dim=FEATURE_DIM, bias=bias, **keys)
    deep = DeepUnconstrainedFeatures(NUM_CLASSES, feature_dim=FEATURE_DIM, depth=1, bias=bias, **keys)
    assert ufm.state_dict().keys() == deep.state_dict().keys()
    for name, value in ufm.state_dict().items():
        assert torch.equal(deep.state_dict()[name], value), name
    assert deep.replica_identities() == ufm.replica_identities()
    assert deep.feature_dim == FEATURE_DIM and len(deep.layers) == 0


def test_every_factor_starts_at_frobenius_norm_epsilon_and_the_bias_at_zero() -> None:
    model = deep_ufm(depth=4, bias=True, init_scale=[0.3, 2.0], replicas=2)
    scales = torch.tensor([0.3, 0.3, 2.0, 2.0], dtype=torch.float64)
    for factor in (model.features, *weights_of(model)):
        torch.testing.assert_close(factor.detach().norm(dim=(-1, -2)), scales, rtol=1e-14, atol=0)
    assert [tuple(w.shape) for w in weights_of(model)] == [(4, 5, 6), (4, 5, 5), (4, 5, 5), (4, 3, 5)]
    assert torch.equal(model.head.bias, torch.zeros(4, NUM_CLASSES, dtype=torch.float64))
    assert [identity.copy for identity in model.replica_identities()] == [0, 1, 0, 1]


def test_float32_and_the_seed_are_honoured() -> None:
    single = deep_ufm(dtype="float32")
    assert all(parameter.dtype == torch.float32 for parameter in single.parameters())
    assert torch.equal(deep_ufm().features, deep_ufm().features)
    assert not torch.equal(deep_ufm().features, deep_ufm(seed=6).features)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_forward_is_the_oracles_deep_forward(depth: int, activation: str) -> None:
    model = deep_ufm(depth=depth, activation=activation, bias=True)
    with torch.no_grad():
        model.head.bias.normal_()
        indices = torch.tensor([4, 0, 8])
        layers = deep_forward(model.features[..., indices, :], weights_of(model), activation)
        torch.testing.assert_close(model.forward_features(indices), layers[-2], rtol=0, atol=0)
        torch.testing.assert_close(model(indices), layers[-1] + model.head.bias.unsqueeze(-2), rtol=0, atol=0)
    assert model.feature_dim == (WIDTH if depth > 1 else FEATURE_DIM) == model.head.weight.shape[-1]


def test_it_declares_free_layers_and_no_closed_form() -> None:
    model = deep_ufm(depth=3, activation="linear")
    assert has_free_features(model) and has_free_layers(model) and not has_closed_form(model)
    assert not hasattr(DeepUnconstrainedFeatures, "closed_form_features")
    features, weights, activation = model.free_layers()
    assert features is model.features and weights[-1] is model.head.weight and activation is Activation.LINEAR
    assert [weight is layer.weight for weight, layer in zip(weights, model.layers, strict=False)] == [True, True]


def test_relu_backward_is_autograds_relu_derivative() -> None:
    pre = torch.tensor([[-1.0, 0.0, 2.0]], dtype=torch.float64, requires_grad=True)
    gradient = torch.tensor([[3.0, 4.0, 5.0]], dtype=torch.float64)
    output = Activation.RELU.apply(pre)
    (expected,) = torch.autograd.grad(output, pre, gradient)
    assert torch.equal(Activation.RELU.backward(gradient, output.detach()), expected)
    assert Activation.LINEAR.backward(gradient, output) is gradient


# The objective


@pytest.mark.parametrize("hidden_decay", [None, 0.07])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_mean_squared_objective_is_the_oracles(depth: int, activation: str, hidden_decay: float | None) -> None:
    model = deep_ufm(depth=depth, activation=activation)
    objective = DeepObjective(Objective("mean_squared", feature_decay=0.01, classifier_decay=0.02), hidden_decay)
    problem = DeepUFMProblem(
        (SAMPLES_PER_CLASS,) * NUM_CLASSES, FEATURE_DIM, WIDTH, depth, feature_decay=0.01,
        hidden_decay=0.02 if hidden_decay is None else hidden_decay, classifier_decay=0.02, activation=activation,
    )  # fmt: skip
    with torch.no_grad():
        expected = deep_ufm_objective(model.features, weights_of(model), LABELS, problem)
        mine = objective.value(model(torch.arange(LABELS.numel())), LABELS, model.features, weights_of(model), None)
        module = CollapseModule(model, functools.partial(torch.optim.SGD, lr=0.1), loss="mean_squared",
                                feature_decay=0.01, classifier_decay=0.02, hidden_decay=hidden_decay)  # fmt: skip
        logits = model(torch.arange(LABELS.numel()))
        from_module = module.objective_value(logits, LABELS, model.forward_features(torch.arange(LABELS.numel())))
    torch.testing.assert_close(mine, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(from_module, expected, rtol=1e-14, atol=0)


def test_a_negative_hidden_decay_is_refused() -> None:
    with pytest.raises(ValueError, match="hidden_decay"):
        DeepObjective(Objective(), hidden_decay=-0.1)
    assert DeepObjective(Objective(classifier_decay=0.3)).layer_decays(3) == (0.3, 0.3, 0.3)
    assert DeepObjective(Objective(classifier_decay=0.3), 0.1).layer_decays(3) == (0.1, 0.1, 0.3)


# Training


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_fused_gradient_descent_follows_autograd(
    activation: str, loss: str, bias: bool, depth: int, tmp_path: Path
) -> None:
    settings = objective_settings(loss, bias)
    factory = functools.partial(torch.optim.SGD, lr=LEARNING_RATES[loss])
    reference = autograd_trajectory(deep_ufm(depth, activation, bias), factory, STEPS, **settings)
    fused = deep_ufm(depth, activation, bias)
    trainer, module = fused_trajectory(fused, factory, STEPS, tmp_path, callbacks=[TrainingCurves()], **settings)
    assert trainer.global_step == STEPS and not module.automatic_optimization
    assert moved(fused, deep_ufm(depth, activation, bias)) > 1e-2
    assert_same_parameters(fused, reference)
    with torch.no_grad():
        final = reference_objective(fused, LABELS, **settings) / fused.num_replicas
    torch.testing.assert_close(trainer.callback_metrics["train/loss"], final, rtol=1e-12, atol=0)
    if not bias:
        assert torch.equal(fused.head.bias, torch.zeros_like(fused.head.bias))


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_other_optimizers_step_on_the_backpropagated_gradients(optimizer: str, loss: str, tmp_path: Path) -> None:
    settings = objective_settings(loss, bias=True)
    reference = autograd_trajectory(deep_ufm(bias=True), OPTIMIZERS[optimizer], STEPS, **settings)
    fused = deep_ufm(bias=True)
    trainer, _ = fused_trajectory(fused, OPTIMIZERS[optimizer], STEPS, tmp_path, **settings)
    assert trainer.global_step == STEPS
    assert_same_parameters(fused, reference)


def test_plain_descent_goes_through_the_optimizer_when_a_hook_sees_every_step(tmp_path: Path) -> None:
    calls: list[int] = []

    class EveryStep(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            calls.append(trainer.global_step)

    settings, factory = objective_settings("mean_squared", True), functools.partial(torch.optim.SGD, lr=0.3)
    reference = autograd_trajectory(deep_ufm(bias=True), factory, 100, **settings)
    fused = deep_ufm(bias=True)
    fused_trajectory(fused, factory, 100, tmp_path, callbacks=[EveryStep()], **settings)
    assert calls == list(range(100))
    assert_same_parameters(fused, reference)


def test_a_block_ends_at_every_step_a_callback_declares(tmp_path: Path) -> None:
    """A callback due every 7 steps sees the state autograd reaches after exactly that many steps."""
    seen: dict[int, dict[str, Tensor]] = {}

    class EverySeventhStep(L.Callback):
        def next_due_step(self, step: int) -> int:
            return (step // 7 + 1) * 7

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step % 7 == 0:
                seen[trainer.global_step] = {k: v.clone() for k, v in pl_module.network.state_dict().items()}

    settings, factory = objective_settings("mean_squared", False), functools.partial(torch.optim.SGD, lr=0.3)
    fused_trajectory(deep_ufm(), factory, 30, tmp_path, callbacks=[EverySeventhStep()], **settings)
    assert sorted(seen) == [7, 14, 21, 28]
    reference = deep_ufm()
    for step in sorted(seen):
        autograd_trajectory(reference, factory, 7, **settings)
        for name, value in reference.state_dict().items():
            torch.testing.assert_close(seen[step][name], value, rtol=0, atol=1e-12, msg=f"{name} at step {step}")


class SubBatch(L.LightningDataModule):
    """The same five of the nine samples at every step: not the full batch, so each step is an autograd step."""

    indices = torch.tensor([0, 2, 3, 5, 7])

    def train_dataloader(self) -> RepeatedBatch:
        return RepeatedBatch((self.indices, LABELS[self.indices]), 1000)


def test_a_minibatch_takes_autograd_steps_of_the_whole_objective(tmp_path: Path) -> None:
    """Data term of the batch, decays of all of H_1 and every W_l."""
    settings, factory = objective_settings("mean_squared", True), functools.partial(torch.optim.SGD, lr=0.3)
    reference = autograd_trajectory(deep_ufm(bias=True), factory, 20, indices=SubBatch.indices, **settings)
    fused = deep_ufm(bias=True)
    trainer, _ = fused_trajectory(fused, factory, 20, tmp_path, datamodule=SubBatch(), **settings)
    assert trainer.global_step == 20
    assert_same_parameters(fused, reference, atol=1e-12)
