"""Names of the TensorBoard runs a training run writes: one per replica, and one summary run per init scale ε."""

from __future__ import annotations


def replica_run_name(init_scale: float | None, copy: int) -> str:
    """``eps=<ε>/rep=<copy>`` for a UFM replica, ``backbone`` for a backbone (no init scale)."""
    return "backbone" if init_scale is None else f"eps={init_scale:g}/rep={copy}"


def replica_group_name(run_name: str) -> str | None:
    """``eps=<ε>`` for the replica run ``eps=<ε>/rep=<copy>`` (the summary run of that ε), None for ``backbone``."""
    group, separator, _ = run_name.rpartition("/rep=")
    return group if separator else None


def measurement_run_name(replica_run: str, layer: str, split: str, main_layer: str) -> str:
    """The run of one replica, layer and split: ``replica_run`` for the main layer's training split, then
    ``/layer=<module name>`` for another layer and ``/<split>`` for a split other than ``train``
    (``backbone/layer=body.3/heldout``)."""
    parts = [replica_run]
    if layer != main_layer:
        parts.append(f"layer={layer}")
    if split != "train":
        parts.append(split)
    return "/".join(parts)
