"""Checks on the composed config, run before anything is built: one readable line per mistake.

Each key's type and range is the typed schema's (:mod:`ufm_torch.cli.schema`); the rules that tie keys together
(the stable SGD step size, the rank needed for strong collapse) are written out here, except the precision
policy's (:mod:`ufm_torch.training.precision`, shared with the Trainer's construction).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from pydantic import ValidationError

from ufm_torch.cli.schema import TrainConfig, schema_error
from ufm_torch.data.ufm import class_sizes
from ufm_torch.errors import ConfigError
from ufm_torch.metrics.tags import scalar_tags
from ufm_torch.models import default_loss_name, target_object
from ufm_torch.training.precision import resolve_precision, trains_free_features


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


DECAYS_OF_THE_ORACLE = ("feature_decay", "classifier_decay")
"""λ_H and λ_W: the global optimum (:mod:`ufm_torch.theory.optimum`) is known when both are > 0."""


def training_samples(cfg: DictConfig) -> int | None:
    """n = Σ_k n_k, the number of training samples of a UFM-style data config (None when it has no class sizes)."""
    if "num_classes" not in cfg.data or "samples_per_class" not in cfg.data:
        return None
    try:
        sizes = class_sizes(
            cfg.data.num_classes,
            _plain(cfg.data.samples_per_class),
            cfg.data.get("imbalance_ratio", 1.0),
            cfg.data.get("minority_classes"),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return sum(sizes)


def _bias_stability_limit(cfg: DictConfig) -> float | None:
    """Largest stable SGD step size along the bias direction for a squared loss (None: no bound applies).

    The logits are linear in ``b``, so on ``b`` the objective f = D + λ_b/2‖b‖² (+ the other penalties, which do
    not involve b) is an exact quadratic with Hessian (κ + λ_b)·I, where κ = B, the batch size, for the summed
    loss (∇_b D = A1, ∂²D/∂b² = B·I) and κ = 1 for the batch-mean one (∂²D/∂b² = I). Along it heavy-ball SGD with
    momentum μ multiplies the bias error by the roots of z² − (1 + μ − η(κ + λ_b))z + μ, which leave the unit disc
    exactly when η ≥ 2(1 + μ)/(κ + λ_b). Without a bias (``model.bias=false``) or for cross-entropy (not quadratic
    in b, curvature at most ½ + λ_b and falling as the softmax saturates) no step size is certain to diverge.
    """
    loss = effective_loss(cfg)
    has_bias = OmegaConf.select(cfg, "model.bias", default=True)
    if str(cfg.optimizer.get("_target_", "")) != "torch.optim.SGD" or loss not in ("sum_squared", "mean_squared"):
        return None
    if not has_bias:
        return None
    curvature = 1.0
    num_samples = training_samples(cfg)
    if loss == "sum_squared" and num_samples is not None:
        curvature = float(min(cfg.data.get("batch_size") or num_samples, num_samples))
    curvature += float(cfg.module.get("bias_decay") or 0.0)
    return 2.0 * (1.0 + cfg.optimizer.get("momentum", 0.0)) / curvature


def check_class_sizes(cfg: DictConfig) -> None:
    """A list ``data.samples_per_class`` must have one entry per class; ``data.minority_classes`` at most C."""
    sizes = OmegaConf.select(cfg, "data.samples_per_class")
    num_classes = OmegaConf.select(cfg, "data.num_classes")
    if isinstance(sizes, ListConfig) and num_classes is not None and len(sizes) != num_classes:
        raise ConfigError(
            f"data.samples_per_class={list(sizes)} has {len(sizes)} entries; it must be an integer or a list of "
            f"data.num_classes={num_classes} integers >= 1"
        )
    minority = OmegaConf.select(cfg, "data.minority_classes")
    if minority is not None and num_classes is not None and minority > num_classes:
        raise ConfigError(f"data.minority_classes={minority} must be at most data.num_classes={num_classes}")


def check_regularisers(cfg: DictConfig) -> None:
    """``module.bias_decay`` needs a bias; ``module.label_smoothing`` belongs to cross-entropy."""
    bias_decay = OmegaConf.select(cfg, "module.bias_decay", default=0.0) or 0.0
    if bias_decay and OmegaConf.select(cfg, "model.bias", default=True) is False:
        raise ConfigError(
            f"module.bias_decay={bias_decay} needs a bias, but model.bias=false; set module.bias_decay=0 or "
            "model.bias=true"
        )
    smoothing = OmegaConf.select(cfg, "module.label_smoothing", default=0.0) or 0.0
    if smoothing and effective_loss(cfg) != "cross_entropy":
        raise ConfigError(
            f"module.label_smoothing={smoothing} applies to module.loss=cross_entropy only (now "
            f"{effective_loss(cfg)}); set module.label_smoothing=0 or module.loss=cross_entropy"
        )


def check_backbone_only_keys(cfg: DictConfig) -> None:
    """``module.scheduler`` (a scheduler partial) and ``callbacks.collapse_monitor.in_epochs`` apply to backbones:
    the UFM's fused closed-form steps bypass Lightning's scheduler stepping, and its epochs are not passes over data."""
    scheduler = OmegaConf.select(cfg, "module.scheduler")
    if scheduler is not None and (not isinstance(scheduler, DictConfig) or "_target_" not in scheduler):
        raise ConfigError(
            f"module.scheduler={scheduler} is not allowed; it must be null or a scheduler partial (_target_, "
            "_partial_: true, and its arguments)"
        )
    if not trains_free_features(cfg):
        return
    if scheduler is not None:
        raise ConfigError(
            f"module.scheduler={scheduler._target_} applies to backbones only: the UFM's closed-form steps do not "
            "go through Lightning's scheduler; set module.scheduler=null"
        )
    if OmegaConf.select(cfg, "callbacks.collapse_monitor.in_epochs"):
        raise ConfigError(
            "callbacks.collapse_monitor.in_epochs=true applies to backbones only (a UFM batch is a block of fused "
            "steps, not a pass over data); set it to false and use points_per_decade or every_n_steps"
        )


def check_accelerator(cfg: DictConfig) -> None:
    """``trainer.accelerator=gpu`` (``trainer=gpu``, ``trainer=ddp``, the Papyan presets) needs a CUDA device."""
    if OmegaConf.select(cfg, "trainer.accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={cfg.trainer.accelerator} needs a CUDA device and torch sees none (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}); use trainer=default on this machine"
        )


def validate_config(cfg: DictConfig) -> None:
    """Check every user-facing key; raise :class:`ConfigError` on the first mistake, warn on hopeless settings."""
    check_schema(resolved_config(cfg))
    check_accelerator(cfg)
    check_class_sizes(cfg)
    training_samples(cfg)
    check_regularisers(cfg)
    check_backbone_only_keys(cfg)
    objective = cfg.get("objective")
    if objective is not None and objective not in scalar_tags():
        raise ConfigError(f"objective={objective} is not a metric tag; use null or one of {', '.join(scalar_tags())}")
    resolve_precision(cfg)
    limit = _bias_stability_limit(cfg)
    if limit is not None and cfg.optimizer.lr >= limit and not cfg.allow_unstable:
        curvature = 2.0 * (1.0 + cfg.optimizer.get("momentum", 0.0)) / limit
        raise ConfigError(
            f"optimizer.lr={cfg.optimizer.lr} must be < {limit:.6g} = 2(1+momentum)/{curvature:g} for this SGD run, "
            f"{curvature:g} being the bias direction's curvature (batch size for sum_squared, 1 for mean_squared, "
            "plus module.bias_decay; it diverges otherwise); set allow_unstable=true to run it anyway"
        )
    feature_dim = OmegaConf.select(cfg, "model.feature_dim")
    num_classes = OmegaConf.select(cfg, "data.num_classes")
    if feature_dim is not None and num_classes is not None and feature_dim < num_classes - 1:
        warnings.warn(
            f"model.feature_dim={feature_dim} < num_classes - 1 = {num_classes - 1}: strong neural collapse is "
            "impossible (Theorem 3(c) needs rank W0 >= C - 1)",
            stacklevel=2,
        )
    decays = [OmegaConf.select(cfg, f"module.{name}", default=0.0) or 0.0 for name in DECAYS_OF_THE_ORACLE]
    if all(decays) and feature_dim is not None and num_classes is not None and feature_dim < num_classes:
        warnings.warn(
            f"model.feature_dim={feature_dim} < data.num_classes={num_classes}: the global-optimum oracle needs "
            "p >= C, so the optimum/ metrics are not logged",
            stacklevel=2,
        )
