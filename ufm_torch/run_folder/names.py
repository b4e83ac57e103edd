"""Names of the TensorBoard runs a training run writes: one per replica, and one summary run per init scale ε."""

from __future__ import annotations


def replica_run_name(init_scale: float | None, copy: int) -> str:
    """``eps=<ε>/rep=<copy>`` for a UFM replica, ``backbone`` for a backbone (no init scale)."""
    return "backbone" if init_scale is None else f"eps={init_scale:g}/rep={copy}"


def replica_group_name(run_name: str) -> str | None:
    """``eps=<ε>`` for the replica run ``eps=<ε>/rep=<copy>`` (the summary run of that ε), None for ``backbone``."""
    group, separator, _ = run_name.rpartition("/rep=")
    return group if separator else None
