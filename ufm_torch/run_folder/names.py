"""Names of the TensorBoard runs a training run writes: one per replica."""

from __future__ import annotations


def replica_run_name(init_scale: float | None, copy: int) -> str:
    """``eps=<ε>/rep=<copy>`` for a UFM replica, ``backbone`` for a backbone (no init scale)."""
    return "backbone" if init_scale is None else f"eps={init_scale:g}/rep={copy}"
