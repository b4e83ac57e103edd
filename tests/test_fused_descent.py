"""The fused closed-form path gives the same trajectory as plain autograd steps, and every step is counted."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer

from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
from ufm_torch.data import UFMDataModule, class_major_labels
from ufm_torch.data.ufm import RepeatedBatch
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.objectives.losses import sum_squared_error
from ufm_torch.training import fused_descent
from ufm_torch.training.fused_descent import closed_form_steps, plain_gradient_descent_rate
from ufm_torch.training.module import CollapseModule

OPTIMIZERS = {
    "gradient_descent": functools.partial(torch.optim.SGD, lr=0.05),
    "momentum": functools.partial(torch.optim.SGD, lr=0.02, momentum=0.9),
    "weight_decay": functools.partial(torch.optim.SGD, lr=0.05, weight_decay=1e-3),
    "adam": functools.partial(torch.optim.Adam, lr=1e-2),
}


def reference_objective(
    model: UnconstrainedFeatures,
    labels: torch.Tensor,
    loss: str = "sum_squared",
    label_smoothing: float = 0.0,
    feature_decay: float = 0.0,
    classifier_decay: float = 0.0,
    bias_decay: float = 0.0,
) -> torch.Tensor:
    """Σ_r f_r written out with ``torch.nn.functional`` (row ``i`` of the features has label ``labels[i]``): the
    data term of ``module.loss`` plus λ_W/2‖W‖² + λ_H/2‖H‖² + λ_b/2‖b‖² (no λ_b term without a bias)."""
    indices = torch.arange(labels.numel(), device=labels.device)
    logits = model(indices)
    if loss == "cross_entropy":
        data = F.cross_entropy(
            logits.transpose(-1, -2), labels.expand(*logits.shape[:-1]), reduction="none",
            label_smoothing=label_smoothing,
        ).mean(-1)
    else:
        targets = F.one_hot(labels, model.num_classes).to(logits.dtype)
        data = 0.5 * (logits - targets).square().sum(dim=(-1, -2))
        data = data / labels.numel() if loss == "mean_squared" else data
    head, total = model.head, data.sum()
    if classifier_decay:
        total = total + 0.5 * classifier_decay * head.weight.square().sum()
    if feature_decay:
        total = total + 0.5 * feature_decay * model.features.square().sum()
    if bias_decay and head.has_bias:
        total = total + 0.5 * bias_decay * head.bias.square().sum()
    return total


def autograd_trajectory(
    model: UnconstrainedFeatures, optimizer_factory, steps: int, labels: torch.Tensor | None = None, **objective
) -> UnconstrainedFeatures:
    """Plain PyTorch loop on the model's device: autograd gradient of the summed objective (the paper's loss unless
    ``objective`` holds ``module.*`` keys), one optimiser step at a time; ``labels`` default to class-major ones."""
    if labels is None:
        labels = class_major_labels(model.num_classes, model.samples_per_class)
    labels = labels.to(model.features.device)
    optimizer = optimizer_factory(model.parameters())
    for _ in range(steps):
        optimizer.zero_grad()
        reference_objective(model, labels, **objective).backward()
        optimizer.step()
    return model


class LabelledRows(L.LightningDataModule):
    """Every row of a UFM's feature table as one full batch per step, with any labels (any class sizes).

    The batch lists the rows in the order ``order`` (default: a fixed shuffle), so that the module must put the
    labels back in row order."""

    def __init__(self, labels: torch.Tensor, order: torch.Tensor | None = None) -> None:
        super().__init__()
        if order is None:
            order = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))
        self.labels, self.order = labels, order

    def train_dataloader(self) -> RepeatedBatch:
        return RepeatedBatch((self.order, self.labels[self.order]), 1000)


def fused_trajectory(
    model: UnconstrainedFeatures, optimizer_factory, steps: int, tmp_path: Path, accelerator: str = "cpu",
    labels: torch.Tensor | None = None, callbacks: list[L.Callback] | None = None, **objective,
) -> L.Trainer:
    """The same run through the Trainer (on one device of ``accelerator``, with ``callbacks``) and the fused
    closed-form path; the ``module.*`` keys in ``objective`` go to the module, ``labels`` (row order) to a
    :class:`LabelledRows`."""
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="64-true", default_root_dir=tmp_path, accelerator=accelerator,
        devices=1, callbacks=callbacks,
    )
    module = CollapseModule(model, optimizer_factory, fused_steps=64, **objective)
    data = UFMDataModule(model.num_classes, model.samples_per_class) if labels is None else LabelledRows(labels)
    trainer.fit(module, datamodule=data)
    return trainer


@pytest.mark.parametrize("folded_bias_limit", [fused_descent.FOLDED_BIAS_LIMIT, 0], ids=["folded", "in_place"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_fused_path_follows_the_autograd_trajectory(
    name: str, folded_bias_limit: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_descent, "FOLDED_BIAS_LIMIT", folded_bias_limit)

    def make() -> UnconstrainedFeatures:
        return UnconstrainedFeatures(3, 4, 15, init_scale=[1.0, 1e-2], replicas=2, seed=3)

    reference = autograd_trajectory(make(), OPTIMIZERS[name], steps=400)
    fused = make()
    trainer = fused_trajectory(fused, OPTIMIZERS[name], steps=400, tmp_path=tmp_path)
    assert trainer.global_step == 400
    for mine, theirs in zip(fused.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)


def test_plain_descent_is_recognised_only_without_momentum_or_decay() -> None:
    parameter = [torch.nn.Parameter(torch.zeros(2))]
    assert plain_gradient_descent_rate(torch.optim.SGD(parameter, lr=0.1)) == 0.1
    assert plain_gradient_descent_rate(torch.optim.SGD(parameter, lr=0.1, momentum=0.5)) is None
    assert plain_gradient_descent_rate(torch.optim.SGD(parameter, lr=0.1, weight_decay=0.1)) is None
    assert plain_gradient_descent_rate(torch.optim.Adam(parameter, lr=0.1)) is None


def test_monitor_sees_every_scheduled_step_inside_fused_blocks(tmp_path: Path) -> None:
    model = UnconstrainedFeatures(3, 3, 15, init_scale=1e-2, seed=0)
    seen: list[int] = []
    reused: list[int] = []

    class RecordingMonitor(CollapseMonitor):
        def evaluate(self, trainer, pl_module, step):
            seen.append(step)
            torch.testing.assert_close(pl_module.network.features, checkpoints[step])
            if (logits := pl_module.current_logits()) is not None:
                reused.append(step)
                fresh = pl_module.network.head(pl_module.network.features)
                torch.testing.assert_close(logits, fresh, rtol=0, atol=1e-15)
            super().evaluate(trainer, pl_module, step)

    reference = UnconstrainedFeatures(3, 3, 15, init_scale=1e-2, seed=0)
    labels, indices = class_major_labels(3, 3), torch.arange(9)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    checkpoints = {0: reference.features.detach().clone()}
    for step in range(1, 301):
        optimizer.zero_grad()
        sum_squared_error(reference(indices), labels).sum().backward()
        optimizer.step()
        checkpoints[step] = reference.features.detach().clone()
    trainer = L.Trainer(
        max_steps=300, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="64-true", default_root_dir=tmp_path,
        callbacks=[RecordingMonitor(output_dir=str(tmp_path), points_per_decade=5, every_n_steps=70)],
    )
    trainer.fit(CollapseModule(model, functools.partial(torch.optim.SGD, lr=0.05)), datamodule=UFMDataModule(3, 3))
    assert seen == evaluation_steps(300, points_per_decade=5, every_n_steps=70)
    assert reused == seen[1:], "every evaluation after step 0 reuses the logits of the block that ended there"


@pytest.mark.parametrize("folded_bias_limit", [fused_descent.FOLDED_BIAS_LIMIT, 0], ids=["folded", "in_place"])
def test_block_returns_the_logits_of_the_state_it_leaves(
    folded_bias_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_descent, "FOLDED_BIAS_LIMIT", folded_bias_limit)
    model = UnconstrainedFeatures(3, 3, 15, init_scale=1.0, replicas=2, seed=1)
    optimizer = LightningOptimizer(torch.optim.SGD(model.parameters(), lr=0.05))
    before = model.head(model.features).detach().clone()
    logits = closed_form_steps(model, class_major_labels(3, 3), optimizer, steps=4)
    torch.testing.assert_close(logits, model.head(model.features), rtol=0, atol=1e-14)
    assert not torch.allclose(logits, before)


def test_kept_logits_are_dropped_once_a_parameter_changes(tmp_path: Path) -> None:
    model = UnconstrainedFeatures(3, 3, 15, init_scale=1e-2, seed=0)
    module = CollapseModule(model, functools.partial(torch.optim.SGD, lr=0.05), fused_steps=64)
    trainer = L.Trainer(
        max_steps=100, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, precision="64-true", default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=UFMDataModule(3, 3))
    torch.testing.assert_close(module.current_logits(), model.head(model.features), rtol=0, atol=1e-15)
    with torch.no_grad():
        model.features.add_(1.0)
    assert module.current_logits() is None
