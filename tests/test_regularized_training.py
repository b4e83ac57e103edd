"""The regularised and cross-entropy objectives: the fused full-batch path follows autograd on the same objective for
every loss, bias setting, decay and optimiser, on balanced and imbalanced classes, and ``train/loss`` is f."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer

from tests.test_fused_descent import (
    OPTIMIZERS,
    autograd_trajectory,
    fused_trajectory,
    reference_objective,
)
from ufm_torch.callbacks.training_curves import TrainingCurves
from ufm_torch.data import class_major_labels
from ufm_torch.data.ufm import RepeatedBatch
from ufm_torch.models import MLP, LinearHead, UnconstrainedFeatures
from ufm_torch.objectives.losses import cross_entropy
from ufm_torch.objectives.ufm import Objective
from ufm_torch.training import fused_descent
from ufm_torch.training.fused_descent import closed_form_steps
from ufm_torch.training.module import CollapseModule

NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, STEPS = 3, 3, 8, 300
LOSS_NAMES = ("sum_squared", "mean_squared", "cross_entropy")
DECAYS = {
    "no_decay": {},
    "decays": {"feature_decay": 0.02, "classifier_decay": 0.05, "bias_decay": 0.03},
    "equal_decays": {"classifier_decay": 0.04, "bias_decay": 0.04},
}
PATHS = {
    "gd_folded": ("gradient_descent", fused_descent.FOLDED_BIAS_LIMIT),
    "gd_in_place": ("gradient_descent", 0),
    "momentum": ("momentum", fused_descent.FOLDED_BIAS_LIMIT),
    "adam": ("adam", fused_descent.FOLDED_BIAS_LIMIT),
}
LEARNING_RATE_FACTOR = {"sum_squared": 1.0, "mean_squared": 4.0, "cross_entropy": 4.0}
"""SGD step sizes of the mean-reduced losses are scaled up (their gradient carries 1/n), so that 300 steps move."""


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a loaded machine an OpenMP region of a tiny float64 op (the reference's
    ``F.cross_entropy``) can wait milliseconds for its second thread; the trajectories do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def objective_settings(loss: str, decays: str, bias: bool) -> dict[str, float | str]:
    """The ``module.*`` keys of a case: the loss, its decays (no λ_b without a bias) and, for the regularised
    cross-entropy, label smoothing 0.1."""
    settings: dict[str, float | str] = {"loss": loss, **DECAYS[decays]}
    if not bias:
        settings.pop("bias_decay", None)
    if loss == "cross_entropy" and decays != "no_decay":
        settings["label_smoothing"] = 0.1
    return settings


def optimizer_for(name: str, loss: str) -> functools.partial:
    """The optimiser of :data:`OPTIMIZERS`, with SGD's step size scaled for the loss."""
    factory = OPTIMIZERS[name]
    if factory.func is not torch.optim.SGD:
        return factory
    return functools.partial(torch.optim.SGD, **(factory.keywords | {"lr": factory.keywords["lr"] *
                                                                     LEARNING_RATE_FACTOR[loss]}))


def without_bias(model: UnconstrainedFeatures) -> UnconstrainedFeatures:
    """The same UFM with a bias-free head (``LinearHead(bias=False)``: b is a zero buffer) and the same W."""
    weight = model.head.weight.detach().clone()
    model.head = LinearHead(model.num_classes, model.feature_dim, replica_shape=(model.num_replicas,),
                            dtype=weight.dtype, bias=False)
    with torch.no_grad():
        model.head.weight.copy_(weight)
    return model


def small_ufm(bias: bool = True, num_samples: int | None = None) -> UnconstrainedFeatures:
    """C = 3, N = 3, p = 8, two replicas (ε = 1 and 0.3); ``num_samples`` rows of features instead of CN."""
    model = UnconstrainedFeatures(NUM_CLASSES, SAMPLES_PER_CLASS, FEATURE_DIM, init_scale=[1.0, 0.3], seed=5)
    if num_samples is not None:
        generator = torch.Generator().manual_seed(11)
        features = torch.randn(model.num_replicas, num_samples, FEATURE_DIM, generator=generator, dtype=torch.float64)
        model.features = torch.nn.Parameter(features / features.norm(dim=(-1, -2), keepdim=True))
    return model if bias else without_bias(model)


def assert_same_parameters(mine: torch.nn.Module, theirs: torch.nn.Module) -> None:
    """Every parameter and buffer agrees to 1e-10."""
    for (name, value), (_, reference) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
        torch.testing.assert_close(value, reference, rtol=0, atol=1e-10, msg=name)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("decays", ["no_decay", "decays"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_fused_path_follows_autograd_on_the_regularised_objective(
    loss: str, bias: bool, decays: str, path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    optimizer, folded_bias_limit = PATHS[path]
    monkeypatch.setattr(fused_descent, "FOLDED_BIAS_LIMIT", folded_bias_limit)
    settings, factory = objective_settings(loss, decays, bias), optimizer_for(optimizer, loss)
    labels = class_major_labels(NUM_CLASSES, SAMPLES_PER_CLASS)
    reference = autograd_trajectory(small_ufm(bias), factory, STEPS, **settings)
    fused = small_ufm(bias)
    trainer = fused_trajectory(fused, factory, STEPS, tmp_path, labels=labels, callbacks=[TrainingCurves()], **settings)
    assert trainer.global_step == STEPS
    assert_same_parameters(fused, reference)
    final_objective = reference_objective(fused, labels, **settings).detach() / fused.num_replicas
    torch.testing.assert_close(trainer.callback_metrics["train/loss"], final_objective, rtol=1e-12, atol=0)
    if not bias:
        assert "head.bias" not in dict(fused.named_parameters())
        assert torch.equal(fused.head.bias, torch.zeros_like(fused.head.bias))


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_equal_classifier_and_bias_decays_fold_into_one_factor(loss: str, tmp_path: Path) -> None:
    settings, factory = objective_settings(loss, "equal_decays", True), optimizer_for("gradient_descent", loss)
    reference = autograd_trajectory(small_ufm(), factory, STEPS, **settings)
    fused = small_ufm()
    fused_trajectory(fused, factory, STEPS, tmp_path, labels=class_major_labels(NUM_CLASSES, SAMPLES_PER_CLASS),
                     **settings)
    assert_same_parameters(fused, reference)


@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_plain_descent_through_the_optimizer_follows_autograd(loss: str, tmp_path: Path) -> None:
    """A hook on every ``on_before_optimizer_step`` sends plain descent through ``optimizer.step()`` with the
    closed-form gradients of f in ``.grad``: called once per step, same trajectory (no bias, every decay)."""
    calls: list[int] = []

    class EveryStep(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            calls.append(trainer.global_step)

    settings, factory = objective_settings(loss, "decays", False), optimizer_for("gradient_descent", loss)
    reference = autograd_trajectory(small_ufm(False), factory, 150, **settings)
    fused = small_ufm(False)
    fused_trajectory(fused, factory, 150, tmp_path, labels=class_major_labels(NUM_CLASSES, SAMPLES_PER_CLASS),
                     callbacks=[EveryStep()], **settings)
    assert calls == list(range(150))
    assert_same_parameters(fused, reference)


@pytest.mark.parametrize("optimizer", ["gradient_descent", "adam"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_imbalanced_classes_follow_autograd(loss: str, optimizer: str, tmp_path: Path) -> None:
    """n_k = (4, 2, 1): seven rows of features, labels in a shuffled order, every decay on."""
    labels = torch.tensor([0, 1, 0, 2, 0, 1, 0])
    settings, factory = objective_settings(loss, "decays", True), optimizer_for(optimizer, loss)
    reference = autograd_trajectory(small_ufm(num_samples=7), factory, STEPS, labels=labels, **settings)
    fused = small_ufm(num_samples=7)
    trainer = fused_trajectory(fused, factory, STEPS, tmp_path, labels=labels, **settings)
    assert trainer.global_step == STEPS
    assert_same_parameters(fused, reference)


@pytest.mark.parametrize("folded_bias_limit", [fused_descent.FOLDED_BIAS_LIMIT, 0], ids=["folded", "in_place"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_block_returns_the_logits_of_the_state_it_leaves(
    loss: str, bias: bool, folded_bias_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_descent, "FOLDED_BIAS_LIMIT", folded_bias_limit)
    model = small_ufm(bias)
    objective = Objective(loss, **DECAYS["decays"])
    optimizer = LightningOptimizer(torch.optim.SGD(model.parameters(), lr=0.2))
    before = model.head(model.features).detach().clone()
    logits = closed_form_steps(model, class_major_labels(3, 3), optimizer, steps=4, objective=objective)
    torch.testing.assert_close(logits, model.head(model.features), rtol=0, atol=1e-14)
    assert not torch.allclose(logits, before)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("loss", LOSS_NAMES)
def test_closed_form_gradient_is_the_autograd_gradient(loss: str, bias: bool) -> None:
    model = small_ufm(bias, num_samples=7)
    labels = torch.tensor([2, 1, 0, 2, 0, 1, 0])
    settings = objective_settings(loss, "decays", bias)
    objective = Objective(**settings)
    head = model.head
    bias_tensor = head.bias if bias else None
    gradients = objective.gradients(model.features, head.weight, bias_tensor, labels)
    value = objective.value(model.features, head.weight, bias_tensor, labels)
    torch.testing.assert_close(value.sum(), reference_objective(model, labels, **settings), rtol=1e-13, atol=0)
    value.sum().backward()
    expected = [model.features.grad, head.weight.grad, head.bias.grad if bias else None]
    for mine, theirs in zip(gradients, expected, strict=True):
        if theirs is None:
            assert mine is None
        else:
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-14)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.7])
def test_cross_entropy_is_torchs_with_label_smoothing(label_smoothing: float) -> None:
    logits = torch.randn(2, 7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3, 1, 0, 2, 0, 1, 0])
    mine = cross_entropy(logits, labels, label_smoothing)
    theirs = torch.stack([F.cross_entropy(replica, labels, label_smoothing=label_smoothing) for replica in logits])
    torch.testing.assert_close(mine, theirs, rtol=1e-14, atol=0)


def test_backbone_feature_decay_is_on_the_batch_features(tmp_path: Path) -> None:
    """A backbone's λ_H covers the batch's penultimate features ``forward_features(inputs)``: Lightning's automatic
    optimisation follows a hand-written loop of ``CE + λ_H/2‖h(x)‖² + λ_W/2‖W‖² + λ_b/2‖b‖²``."""
    torch.manual_seed(0)
    network = MLP(5, 3, feature_dim=4, width=8, depth=1).double()
    inputs = torch.randn(12, 5, dtype=torch.float64)
    labels = torch.arange(12) % 3
    settings = {"feature_decay": 0.1, "classifier_decay": 0.05, "bias_decay": 0.02, "label_smoothing": 0.1}
    reference = copy.deepcopy(network)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(20):
        optimizer.zero_grad()
        features = reference.forward_features(inputs)
        loss = F.cross_entropy(reference.head(features), labels, label_smoothing=0.1)
        loss = loss + 0.05 * features.square().sum() + 0.025 * reference.head.weight.square().sum()
        (loss + 0.01 * reference.head.bias.square().sum()).backward()
        optimizer.step()

    class FixedBatch(L.LightningDataModule):
        def train_dataloader(self) -> RepeatedBatch:
            return RepeatedBatch((inputs, labels), 100)

    trainer = L.Trainer(
        max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="64-true", default_root_dir=tmp_path, accelerator="cpu",
    )
    module = CollapseModule(network, functools.partial(torch.optim.SGD, lr=0.1), loss="cross_entropy", **settings)
    trainer.fit(module, datamodule=FixedBatch())
    assert_same_parameters(network, reference)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"loss": "mean_squared", "label_smoothing": 0.1}, "cross_entropy only"),
        ({"loss": "cross_entropy", "label_smoothing": 1.0}, r"\[0, 1\)"),
        ({"feature_decay": -1.0}, "feature_decay"),
        ({"classifier_decay": float("nan")}, "classifier_decay"),
        ({"loss": "hinge"}, "not one of"),
    ],
)
def test_module_rejects_objectives_it_cannot_train(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CollapseModule(small_ufm(), OPTIMIZERS["gradient_descent"], **settings)
