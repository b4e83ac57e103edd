"""The config checks of per-replica hyperparameters (:mod:`ufm_torch.hyperparameters`): one line, exit 2, each.

- A shape key (:data:`~ufm_torch.hyperparameters.SHAPE_KEYS`: C, p, depth, width) given a list: it cannot vary
  between replicas, which share one tensor per parameter (:func:`check_shape_keys`, before the schema).
- Lists on a network that trains one replica (a backbone), tied keys with different lists, or ``optimizer.lr`` as a
  list for an optimiser other than ``torch.optim.SGD`` (:func:`check_replica_grid`).
- The step-size stability bound of :mod:`ufm_torch.cli.validation`, per replica: η_r < 2(1 + μ)/(κ + λ_b,r); the
  line names every offending pair of values (:func:`check_step_sizes`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ufm_torch.errors import ConfigError
from ufm_torch.hyperparameters import SHAPE_KEYS, HyperparameterGrid, hyperparameter_grid

SGD_TARGET = "torch.optim.SGD"
"""The optimiser that takes one step size per replica (:class:`~ufm_torch.training.replica_sgd.ReplicaSGD`)."""


def nonzero(value: Any) -> bool:
    """Whether a number, or any number of a per-replica list, is non-zero (None counts as 0)."""
    if isinstance(value, list | tuple | ListConfig):
        return any(bool(item) for item in value)
    return bool(value)


def check_shape_keys(config: Mapping[str, Any]) -> None:
    """A list at a key of :data:`SHAPE_KEYS` of the resolved ``config`` is one line: every replica shares the
    shapes, so such a grid is a sweep of jobs."""
    for key in SHAPE_KEYS:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, list):
            sweep = ",".join(str(item) for item in value)
            raise ConfigError(
                f"{key}={value} is not allowed: it sets the shapes of the tensors, which every replica shares, so it "
                f"takes one number; sweep it as jobs instead (ufm-train -m {key}={sweep})"
            )


def check_replica_grid(cfg: DictConfig) -> HyperparameterGrid:
    """The grid of ``cfg``'s per-replica lists, checked: tied keys hold one list, the network takes a grid (its
    class has a ``hyperparameters`` argument, as :class:`~ufm_torch.models.UnconstrainedFeatures`), and a list of
    step sizes has ``torch.optim.SGD`` (imports the network's class, hence torch)."""
    try:
        grid = hyperparameter_grid(cfg)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not grid.axes:
        return grid
    from ufm_torch.models import target_object

    key = grid.keys[0]
    value = OmegaConf.to_container(OmegaConf.select(cfg, key), resolve=True)
    target = str(OmegaConf.select(cfg, "model._target_", default=""))
    network = target_object(target)
    if network is None or "hyperparameters" not in inspect.signature(network).parameters:
        raise ConfigError(
            f"{key}={value} gives each replica group its own value, but model {target} trains no replica groups; "
            f"use model=ufm, or sweep it as jobs (ufm-train -m {key}={','.join(map(str, value))})"
        )
    optimizer = str(OmegaConf.select(cfg, "optimizer._target_", default=""))
    if "optimizer.lr" in grid.keys and optimizer != SGD_TARGET:
        step_sizes = OmegaConf.to_container(cfg.optimizer.lr, resolve=True)
        raise ConfigError(
            f"optimizer.lr={step_sizes} gives each replica group its own step size, which needs optimizer=sgd or "
            f"optimizer=momentum ({SGD_TARGET}), not {optimizer}; give one number, or sweep it as jobs (-m)"
        )
    return grid


def check_step_sizes(cfg: DictConfig, grid: HyperparameterGrid, curvature: float, momentum: float) -> None:
    """Heavy-ball SGD diverges along the bias exactly when η ≥ 2(1 + μ)/(κ + λ_b) (:mod:`ufm_torch.cli.validation`);
    checked for every replica group's η and λ_b (numbers shared by all, or their own), naming each offending pair
    in one line, unless ``allow_unstable``."""
    if cfg.get("allow_unstable"):
        return
    shared = {"optimizer.lr": cfg.optimizer.lr, "module.bias_decay": OmegaConf.select(cfg, "module.bias_decay")}
    offending: dict[tuple[float, float], float] = {}
    for setting in grid.settings():
        step_size, bias_decay = (float(setting.get(key, shared[key]) or 0.0) for key in shared)
        limit = 2.0 * (1.0 + momentum) / (curvature + bias_decay)
        if step_size >= limit:
            offending[(step_size, bias_decay)] = limit
    if not offending:
        return
    if len(offending) == 1 and len(grid) == 1:
        ((step_size, bias_decay), limit), total = next(iter(offending.items())), curvature + bias_decay
        reason = (
            f"optimizer.lr={step_size:g} must be < {limit:.6g} = 2(1+momentum)/{total:g} for this SGD run, {total:g} "
            "being the bias direction's curvature (batch size for sum_squared, 1 for mean_squared, plus "
            "module.bias_decay; it diverges otherwise)"
        )
    else:
        pairs = "; ".join(
            f"optimizer.lr={step_size:g} with module.bias_decay={bias_decay:g} (limit {limit:.6g})"
            for (step_size, bias_decay), limit in offending.items()
        )
        reason = (
            f"optimizer.lr must be < 2(1+momentum)/({curvature:g} + module.bias_decay) in every replica group of this "
            f"SGD run, {curvature:g} being the bias direction's curvature (batch size for sum_squared, 1 for "
            f"mean_squared; it diverges otherwise), but {len(offending)} groups are not: {pairs}"
        )
    raise ConfigError(f"{reason}; set allow_unstable=true to run it anyway")
