"""The fused path's contract with Lightning: steps counted as Lightning counts them, hooks that see every step they
ask for, no private Lightning API outside the one adapter, and the tested Lightning range pinned."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer

from tests.helpers import REPO, quiet_trainer
from tests.test_fused_descent import OPTIMIZERS, autograd_trajectory
from ufm_torch.data import UFMDataModule
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.training import lightning_steps
from ufm_torch.training.module import CollapseModule


def test_lightning_is_in_the_tested_range_and_pyproject_pins_it() -> None:
    low, high = lightning_steps.TESTED_LIGHTNING
    version = tuple(int(part) for part in L.__version__.split(".")[:2])
    assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split("."))), L.__version__
    pin = re.search(r'"lightning([^"]*)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pin == f">={low},<{high}"


def test_counted_steps_are_lightnings_own_steps(tmp_path: Path) -> None:
    """Inside ``training_step`` the manual loop binds the hooks the adapter calls: counting n steps moves
    ``global_step`` by n, and a checkpoint stores and restores that count."""
    seen: list[tuple[int, int]] = []

    class CountingModule(CollapseModule):
        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            assert isinstance(optimizer, LightningOptimizer)
            before = self.trainer.global_step
            lightning_steps.count_fused_steps(optimizer, 5)
            seen.append((before, self.trainer.global_step))
            return {"loss": torch.zeros(())}

    model = UnconstrainedFeatures(3, 3, 15, init_scale=1e-2, seed=0)
    trainer = quiet_trainer(tmp_path, 20, [])
    trainer.fit(CountingModule(model, functools.partial(torch.optim.SGD, lr=0.05)), datamodule=UFMDataModule(3, 3))
    assert seen == [(0, 5), (5, 10), (10, 15), (15, 20)]
    trainer.save_checkpoint(tmp_path / "counted.ckpt")
    assert torch.load(tmp_path / "counted.ckpt", weights_only=False)["global_step"] == 20


def test_a_hook_on_every_optimizer_step_sees_every_plain_descent_step(tmp_path: Path) -> None:
    """A callback overriding ``on_before_optimizer_step`` turns fused plain descent into public optimiser steps:
    it is called once per step, and the trajectory is still the autograd one."""
    calls: list[int] = []

    class EveryStep(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            calls.append(trainer.global_step)

    def make() -> UnconstrainedFeatures:
        return UnconstrainedFeatures(3, 4, 15, init_scale=[1.0, 1e-2], replicas=2, seed=3)

    fused = make()
    trainer = quiet_trainer(tmp_path, 150, [EveryStep()])
    module = CollapseModule(fused, OPTIMIZERS["gradient_descent"], fused_steps=64)
    trainer.fit(module, datamodule=UFMDataModule(3, 4))
    assert calls == list(range(150))
    reference = autograd_trajectory(make(), OPTIMIZERS["gradient_descent"], steps=150)
    for mine, theirs in zip(fused.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("optimizer", ["gradient_descent", "adam"])
def test_a_callback_declaring_its_steps_sees_each_of_them(optimizer: str, tmp_path: Path) -> None:
    """The documented contract: ``next_due_step`` makes every fused block end at the declared steps."""
    seen: list[int] = []

    class EverySeventh(L.Callback):
        def next_due_step(self, step: int) -> int:
            return (step // 7 + 1) * 7

        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step % 7 == 0:
                seen.append(trainer.global_step)

    model = UnconstrainedFeatures(3, 3, 15, init_scale=1e-2, seed=0)
    trainer = quiet_trainer(tmp_path, 100, [EverySeventh()])
    trainer.fit(CollapseModule(model, OPTIMIZERS[optimizer], fused_steps=1000), datamodule=UFMDataModule(3, 3))
    assert seen == list(range(7, 100, 7))
    assert trainer.global_step == 100


def test_no_private_lightning_api_outside_the_adapter() -> None:
    """``_on_before_step``/``_on_after_step`` only in lightning_steps.py; no private ModelCheckpoint attribute and no
    raw ``optimizer.optimizer.step()`` anywhere in the package."""
    private = re.compile(r"\._on_(before|after)_step|_every_n_train_steps|\.optimizer\.step\(")
    offenders = []
    for path in [*(REPO / "ufm_torch").rglob("*.py"), *(REPO / "callbacks").rglob("*.py")]:
        if path.name == "lightning_steps.py":
            continue
        offenders += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                      if private.search(line)]
    assert offenders == []
