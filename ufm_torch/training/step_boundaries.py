"""Steps at which callbacks must see the exact state: a fused block of gradient steps never crosses one."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def next_required_step(callback: L.Callback, step: int) -> int | None:
    """The first step after ``step`` at which ``callback`` acts, or None if it never needs an exact step.

    Callbacks of this package declare it with ``next_due_step(step)``; Lightning's ``ModelCheckpoint`` with
    ``every_n_train_steps = k`` acts at multiples of k.
    """
    if hasattr(callback, "next_due_step"):
        return callback.next_due_step(step)
    if isinstance(callback, ModelCheckpoint):
        interval = getattr(callback, "_every_n_train_steps", 0)
        return (step // interval + 1) * interval if interval else None
    return None


def steps_until_boundary(trainer: L.Trainer, limit: int) -> int:
    """How many optimiser steps may run before the next step a callback or ``max_steps`` needs (at least 1)."""
    step = trainer.global_step
    allowed = min(limit, trainer.max_steps - step) if trainer.max_steps > 0 else limit
    for callback in trainer.callbacks:
        due = next_required_step(callback, step)
        if due is not None:
            allowed = min(allowed, due - step)
    return max(allowed, 1)
