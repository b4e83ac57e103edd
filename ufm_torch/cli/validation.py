"""Checks on the composed config, run before anything is built: one readable line per mistake.

Each key's type and range is the typed schema's (:mod:`ufm_torch.cli.schema`); the rules that tie keys together
(the stable SGD step size, the rank needed for strong collapse) are written out here, except the precision
policy's (:mod:`ufm_torch.training.precision`, shared with the Trainer's construction).
"""

from __future__ import annotations

import warnings
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from pydantic import ValidationError

from ufm_torch.cli.schema import TrainConfig, schema_error
from ufm_torch.errors import ConfigError
from ufm_torch.metrics.tags import scalar_tags
from ufm_torch.models import default_loss_name, target_object
from ufm_torch.training.precision import resolve_precision


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """``OmegaConf.to_container(cfg, resolve=True)`` with the ``hydra`` node left out (it is Hydra's to check).

    A ``???`` value or an interpolation that cannot be resolved raises :class:`ConfigError` naming its key.
    """
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
        if missing:
            raise ConfigError(f"{missing[0]} has no value; set it on the command line ({missing[0]}=...)")
        return {key: _plain(cfg[key]) for key in cfg if key != "hydra"}
    except InterpolationResolutionError as error:
        raise ConfigError(f"{error.full_key} cannot be resolved: {str(error).splitlines()[0]}") from None


def _plain(value: Any) -> Any:
    """A resolved config value as plain Python containers."""
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def check_schema(config: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first key of the resolved ``config`` whose value the schema forbids."""
    try:
        TrainConfig.model_validate(config)
    except ValidationError as error:
        raise ConfigError(schema_error(error.errors()[0], config)) from None


def effective_loss(cfg: DictConfig) -> str:
    """``module.loss``, or the default for the configured network when it is null."""
    network_factory = target_object(str(OmegaConf.select(cfg, "model._target_", default="")))
    return cfg.module.get("loss") or default_loss_name(network_factory)


def _bias_stability_limit(cfg: DictConfig) -> float | None:
    """Largest stable SGD step size along the bias direction for a squared loss.

    The logits are linear in ``b``, so on ``b`` the summed squared loss has curvature equal to the batch size B
    (∇_b R = A1, ∂²R/∂b² = B·I) and the batch-mean one curvature 1. Heavy-ball SGD with momentum μ diverges along
    it when ``lr >= 2(1 + μ)/curvature``. For the UFM's full batch B = CN.
    """
    loss = effective_loss(cfg)
    if str(cfg.optimizer.get("_target_", "")) != "torch.optim.SGD" or loss not in ("sum_squared", "mean_squared"):
        return None
    curvature = 1.0
    if loss == "sum_squared" and "num_classes" in cfg.data and "samples_per_class" in cfg.data:
        num_samples = cfg.data.num_classes * cfg.data.samples_per_class
        curvature = float(min(cfg.data.get("batch_size") or num_samples, num_samples))
    return 2.0 * (1.0 + cfg.optimizer.get("momentum", 0.0)) / curvature


def validate_config(cfg: DictConfig) -> None:
    """Check every user-facing key; raise :class:`ConfigError` on the first mistake, warn on hopeless settings."""
    check_schema(resolved_config(cfg))
    objective = cfg.get("objective")
    if objective is not None and objective not in scalar_tags():
        raise ConfigError(f"objective={objective} is not a metric tag; use null or one of {', '.join(scalar_tags())}")
    resolve_precision(cfg)
    limit = _bias_stability_limit(cfg)
    if limit is not None and cfg.optimizer.lr >= limit and not cfg.allow_unstable:
        raise ConfigError(
            f"optimizer.lr={cfg.optimizer.lr} must be < {limit:.6g} = 2(1+momentum)/batch size for this SGD run "
            "(the bias direction diverges otherwise); set allow_unstable=true to run it anyway"
        )
    feature_dim = OmegaConf.select(cfg, "model.feature_dim")
    num_classes = OmegaConf.select(cfg, "data.num_classes")
    if feature_dim is not None and num_classes is not None and feature_dim < num_classes - 1:
        warnings.warn(
            f"model.feature_dim={feature_dim} < num_classes - 1 = {num_classes - 1}: strong neural collapse is "
            "impossible (Theorem 3(c) needs rank W0 >= C - 1)",
            stacklevel=2,
        )
