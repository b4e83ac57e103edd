"""Steps at which callbacks must see the exact state: a fused block of gradient steps never crosses one.

The contract (docs/architecture.md, "Fused steps and callbacks"): a callback that acts at given optimiser steps
declares them with ``next_due_step(step) -> int | None``, the first step after ``step`` at which it acts. A fused
block ends at every declared step, at ``max_steps`` and at most ``module.fused_steps`` steps after it started;
``on_train_batch_end`` runs at each block end with ``trainer.global_step`` equal to the step just taken. A callback
that declares nothing sees the state at block ends only (``module.fused_steps=1`` makes every step a block end).
"""

from __future__ import annotations

import lightning as L


def next_required_step(callback: L.Callback, step: int) -> int | None:
    """The first step after ``step`` at which ``callback`` acts, or None if it declares none (``next_due_step``)."""
    next_due_step = getattr(callback, "next_due_step", None)
    return next_due_step(step) if callable(next_due_step) else None


def steps_until_boundary(trainer: L.Trainer, limit: int) -> int:
    """How many optimiser steps may run before the next step a callback or ``max_steps`` needs (at least 1)."""
    step = trainer.global_step
    allowed = min(limit, trainer.max_steps - step) if trainer.max_steps > 0 else limit
    for callback in trainer.callbacks:
        due = next_required_step(callback, step)
        if due is not None:
            allowed = min(allowed, due - step)
    return max(allowed, 1)


def due_within(trainer: L.Trainer, after: int, step: int, exclude: L.Callback | None = None) -> bool:
    """Whether some callback (other than ``exclude``) acts at a step in ``(after, step]``, or ``step`` is the last."""
    if trainer.max_steps > 0 and step >= trainer.max_steps:
        return True
    for callback in trainer.callbacks:
        if callback is exclude:
            continue
        due = next_required_step(callback, after)
        if due is not None and due <= step:
            return True
    return False
