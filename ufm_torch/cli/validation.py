"""Range checks on the composed config, run before anything is built: one readable line per mistake."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from ufm_torch.errors import ConfigError
from ufm_torch.models.backbones import ACTIVATIONS
from ufm_torch.models.kind import target_has_free_features
from ufm_torch.training.losses import LOSSES

CONFIG_GROUPS = ("data", "model", "optimizer", "trainer", "callbacks", "logger", "experiment")
PRECISIONS = {"64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true"}


@dataclass(frozen=True)
class Rule:
    """A check on one config key: ``accepts(value)`` and the allowed range in words."""

    key: str
    accepts: Callable[[Any], bool]
    allowed: str
    required: bool = False


def is_int(value: Any) -> bool:
    """True for Python integers (not booleans)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for finite real numbers (not booleans)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def positive_ints(value: Any) -> bool:
    """A non-empty list of integers >= 1."""
    return isinstance(value, list | ListConfig) and bool(value) and all(is_int(v) and v >= 1 for v in value)


def positive_scales(value: Any) -> bool:
    """A positive number or a non-empty list of positive numbers."""
    values = list(value) if isinstance(value, list | ListConfig) else [value]
    return bool(values) and all(is_real(v) and v > 0 for v in values)


RULES = (
    Rule("seed", lambda v: is_int(v) and v >= 0, "an integer >= 0", required=True),
    Rule("data.num_classes", lambda v: is_int(v) and v >= 2, "an integer >= 2"),
    Rule("data.samples_per_class", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("data.batch_size", lambda v: v is None or (is_int(v) and v >= 1), "null (full batch) or an integer >= 1"),
    Rule("data.steps_per_epoch", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("model.feature_dim", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("model.init_scale", positive_scales, "a number > 0 or a non-empty list of numbers > 0"),
    Rule("model.replicas", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("model.dtype", lambda v: v in ("float64", "float32"), "one of float64, float32"),
    Rule("optimizer.lr", lambda v: is_real(v) and v > 0, "a number > 0", required=True),
    Rule("optimizer.momentum", lambda v: is_real(v) and 0 <= v < 1, "a number in [0, 1)"),
    Rule("optimizer.weight_decay", lambda v: is_real(v) and v >= 0, "a number >= 0"),
    Rule("trainer.max_steps", lambda v: is_int(v) and v >= 1, "an integer >= 1", required=True),
    Rule("trainer.precision", lambda v: str(v) in PRECISIONS, f"one of {', '.join(sorted(PRECISIONS))}"),
    Rule("module.loss", lambda v: v is None or v in LOSSES, f"null or one of {', '.join(sorted(LOSSES))}"),
    Rule("threads", lambda v: v is None or (is_int(v) and v >= 1), "null or an integer >= 1"),
    Rule("callbacks.collapse_monitor.points_per_decade", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule(
        "callbacks.collapse_monitor.every_n_steps",
        lambda v: v is None or (is_int(v) and v >= 1),
        "null or an integer >= 1",
    ),
    Rule("allow_unstable", lambda v: isinstance(v, bool), "true or false"),
    Rule("data.input_dim", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("data.in_channels", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("data.heldout_per_class", lambda v: is_int(v) and v >= 0, "an integer >= 0"),
    Rule("data.eval_batch_size", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("data.separation", lambda v: is_real(v) and v >= 0, "a number >= 0"),
    Rule("data.noise_std", lambda v: is_real(v) and v >= 0, "a number >= 0"),
    Rule("data.download", lambda v: isinstance(v, bool), "true or false"),
    Rule("model.width", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("model.depth", lambda v: is_int(v) and v >= 1, "an integer >= 1"),
    Rule("model.activation", lambda v: v in ACTIVATIONS, f"one of {', '.join(sorted(ACTIVATIONS))}"),
    Rule("model.batch_norm", lambda v: isinstance(v, bool), "true or false"),
    Rule("model.channels", positive_ints, "a non-empty list of integers >= 1"),
)


def check_group_choices(overrides: list[str], config_dir: Path) -> None:
    """Reject ``group=option`` overrides whose option has no file in ``conf/<group>/`` (before Hydra composes).

    Sweeps (``group=a,b``) and option lists (``group=[a,b]``) are checked option by option.
    """
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or key not in CONFIG_GROUPS or value in ("", "null"):
            continue
        available = sorted(path.stem for path in (config_dir / key).glob("*.yaml"))
        for option in value.strip("[]").split(","):
            if option.strip() not in available:
                raise ConfigError(f"{key}={option.strip()} is not a known option; choose one of {', '.join(available)}")


def effective_loss(cfg: DictConfig) -> str:
    """``module.loss``, or the default for the configured network when it is null."""
    free_features = target_has_free_features(str(OmegaConf.select(cfg, "model._target_", default="")))
    return cfg.module.get("loss") or ("sum_squared" if free_features else "mean_squared")


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
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} has no value; set it on the command line ({missing[0]}=...)")
    for rule in RULES:
        value = OmegaConf.select(cfg, rule.key, default=KeyError)
        if value is KeyError:
            if rule.required:
                raise ConfigError(f"{rule.key} is missing; it must be {rule.allowed}")
            continue
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_object(value)
        if not rule.accepts(value):
            raise ConfigError(f"{rule.key}={value!r} is not allowed; it must be {rule.allowed}")
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
