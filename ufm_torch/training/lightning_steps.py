"""The one adapter between the fused closed-form blocks and Lightning's step counting.

Lightning counts an optimiser step when ``LightningOptimizer.step`` runs: the manual-optimisation loop binds the
optimiser's ``_on_before_step`` / ``_on_after_step`` to its step progress, and ``trainer.global_step`` is that
progress' completed count (``lightning.pytorch.loops.optimization.manual``). A fused block of plain gradient descent
updates the parameters without the optimiser, so that a step costs its arithmetic only; :func:`count_fused_steps`
then records the block's steps with the same two calls, once per step, after the block. Nothing else in the package
touches Lightning's private API; ``tests/test_lightning_contract.py`` fails loudly if Lightning stops binding these
hooks, counts differently, or is outside :data:`TESTED_LIGHTNING`. Every other optimiser takes its steps through the
public ``LightningOptimizer.step`` (precision plugin, ``on_before_optimizer_step`` hooks and all).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.core.optimizer import LightningOptimizer

TESTED_LIGHTNING = ("2.6", "2.7")
"""Lightning versions ``[low, high)`` this adapter is tested with; ``pyproject.toml`` pins the same range."""


def count_fused_steps(optimizer: LightningOptimizer, steps: int) -> None:
    """Advance ``trainer.global_step`` by ``steps``, exactly as ``steps`` calls of ``optimizer.step()`` would.

    Call it only from ``training_step`` under manual optimisation (the loop binds the hooks there), after the
    block's parameters hold the state of its last step.
    """
    for _ in range(steps):
        optimizer._on_before_step()
        optimizer._on_after_step()


def sees_every_optimizer_step(trainer: L.Trainer) -> bool:
    """Whether a callback or the module overrides ``on_before_optimizer_step``: such a hook runs inside
    ``LightningOptimizer.step``, so plain descent then steps through the optimiser too (no fused block)."""
    hooks = [type(callback).on_before_optimizer_step is not L.Callback.on_before_optimizer_step
             for callback in trainer.callbacks]
    module = trainer.lightning_module
    hooks.append(type(module).on_before_optimizer_step is not L.LightningModule.on_before_optimizer_step)
    return any(hooks)
