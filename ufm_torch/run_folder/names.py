"""Names of the TensorBoard runs a training run writes: one per replica, and one summary run per replica group.

A UFM replica's run is ``<group>/rep=<copy>``, its group named by the values that set it apart
(:mod:`ufm_torch.hyperparameters`): the per-replica hyperparameters that vary (``lam_W=0.01/lam_H=0.02``) and its
init scale ``eps=<ε>`` when the run varies no hyperparameter or ε differs between its replicas. So a run of init
scales alone keeps ``eps=<ε>/rep=<copy>``, a λ grid at one ε gives ``lam_W=0.01/lam_H=0.02/rep=0``, and both give
``lam_W=0.01/eps=0.1/rep=0``. A backbone's run is ``backbone``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ufm_torch.hyperparameters import INIT_SCALE_LABEL, HyperparameterSetting

BACKBONE_RUN = "backbone"
"""The run of a network without replicas (no init scale)."""


def replica_run_name(
    init_scale: float | None, copy: int, setting: Mapping[str, float] | None = None, show_scale: bool = True
) -> str:
    """``<hyperparameters>/eps=<ε>/rep=<copy>`` for a UFM replica (module docstring; ``eps=<ε>`` only with
    ``show_scale``), ``backbone`` for a backbone (no init scale)."""
    if init_scale is None:
        return BACKBONE_RUN
    parts = HyperparameterSetting.of(setting or {}).run_name_parts()
    if show_scale or not parts:
        parts.append(f"{INIT_SCALE_LABEL}={init_scale:g}")
    return "/".join([*parts, f"rep={copy}"])


def replica_run_names(
    init_scales: Sequence[float | None], copies: Sequence[int], settings: Sequence[Mapping[str, float]]
) -> list[str]:
    """The run of every replica of one training run (module docstring): ``eps=<ε>`` is part of the names when no
    hyperparameter varies or the init scales differ."""
    show_scale = not any(settings) or len(set(init_scales)) > 1
    return [
        replica_run_name(scale, copy, setting, show_scale)
        for scale, copy, setting in zip(init_scales, copies, settings, strict=True)
    ]


def replica_group_name(run_name: str) -> str | None:
    """The group of the replica run ``<group>/rep=<copy>`` (the name of its summary run: ``eps=<ε>``,
    ``lam_W=0.01/lam_H=0.02``), None for ``backbone``."""
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
