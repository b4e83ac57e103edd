"""Checks on the composed config, run before anything is built: one readable line per mistake.

Each key's type and range is the typed schema's (:mod:`ufm_torch.cli.schema`); the rules that tie keys together
(the stable SGD step size, the rank needed for strong collapse) are written out here, except the precision
policy's (:mod:`ufm_torch.training.precision`, shared with the Trainer's construction).

Cost: this module imports neither torch nor Lightning. The schema and the rules that need nothing but the config run
first, so most rejected configs answer in a fraction of a second (``benchmarks/bench_rejected_config.py``). The rules
that depend on what the network is (its default loss, the precision policy, backbone-only keys), on the class sizes,
on the metric tags or on the devices ask the modules that know (:mod:`ufm_torch.models`,
:mod:`ufm_torch.training.precision`, :mod:`ufm_torch.metrics.tags`, torch), which import torch (not Lightning); they run
last, and only once the cheaper checks have passed.
"""

from __future__ import annotations

import warnings
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from pydantic import ValidationError

from ufm_torch.cli.memory import check_memory
from ufm_torch.cli.replica_checks import check_replica_grid, check_shape_keys, check_step_sizes, nonzero
from ufm_torch.cli.schema import TrainConfig, schema_error
from ufm_torch.errors import ConfigError
from ufm_torch.objectives.losses import LABEL_SMOOTHING_LOSSES, LOSSES


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


def check_schema(config: dict[str, Any]) -> dict[str, Any]:
    """Raise :class:`ConfigError` naming the first key of the resolved ``config`` whose value the schema forbids;
    return the checked values (integral floats of integer keys as integers)."""
    try:
        return TrainConfig.model_validate(config).model_dump()
    except ValidationError as error:
        raise ConfigError(schema_error(error.errors()[0], config)) from None


def write_integers(cfg: DictConfig, config: dict[str, Any], checked: dict[str, Any]) -> None:
    """Write into ``cfg`` each integer the schema read from an integral float of the resolved ``config``
    (``trainer.max_steps=1e3`` becomes 1000), so that what is built gets an ``int``. A key whose value is an
    interpolation is left as it is: it follows the key it names."""
    for key, value in config.items():
        new = checked.get(key) if isinstance(checked, dict) else None
        if isinstance(value, dict) and isinstance(new, dict):
            write_integers(cfg[key], value, new)
        elif _became_integer(value, new) and not OmegaConf.is_interpolation(cfg, key):
            cfg[key] = new


def _became_integer(value: Any, checked: Any) -> bool:
    """Whether the schema turned a float of ``value`` (or of its list) into an integer."""
    if isinstance(value, list) and isinstance(checked, list) and len(value) == len(checked):
        return any(_became_integer(item, new) for item, new in zip(value, checked, strict=True))
    return isinstance(value, float) and isinstance(checked, int) and not isinstance(checked, bool)


def effective_loss(cfg: DictConfig) -> str:
    """``module.loss``, or the default for the configured network when it is null (asks the network's class,
    which imports torch)."""
    loss = cfg.module.get("loss")
    if loss:
        return loss
    from ufm_torch.models import default_loss_name, target_object

    return default_loss_name(target_object(str(OmegaConf.select(cfg, "model._target_", default=""))))


DECAYS_OF_THE_ORACLE = ("feature_decay", "classifier_decay")
"""λ_H and λ_W: the global optimum (:mod:`ufm_torch.theory.optimum`) is known when both are > 0."""


def training_samples(cfg: DictConfig) -> int | None:
    """n = Σ_k n_k, the number of training samples of a UFM-style data config (None when it has no class sizes)."""
    if "num_classes" not in cfg.data or "samples_per_class" not in cfg.data:
        return None
    from ufm_torch.models.ufm import class_sizes

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


def _bias_curvature(cfg: DictConfig) -> float | None:
    """κ, the data term's curvature along the bias for an SGD run of a loss quadratic in b (None: no bound applies).

    The logits are linear in ``b``, so on ``b`` the objective f = D + λ_b/2‖b‖² (+ the other penalties, which do
    not involve b) is, for a squared loss, an exact quadratic with Hessian (κ + λ_b)·I, κ the loss's
    :meth:`~ufm_torch.objectives.losses.Loss.bias_curvature` over a batch (B for the summed loss, 1 for the batch
    mean; B = 1 when the data has no class sizes to count it, the loosest bound). Along it heavy-ball SGD with
    momentum μ multiplies the bias error by the roots of z² − (1 + μ − η(κ + λ_b))z + μ, which leave the unit disc
    exactly when η ≥ 2(1 + μ)/(κ + λ_b) (checked per replica group by
    :func:`~ufm_torch.cli.replica_checks.check_step_sizes`). Without a bias (``model.bias=false``) or for a loss
    without a bias curvature (cross-entropy) no step size is certain to diverge.
    """
    if str(cfg.optimizer.get("_target_", "")) != "torch.optim.SGD":
        return None
    if not OmegaConf.select(cfg, "model.bias", default=True):
        return None
    num_samples = training_samples(cfg)
    batch_size = 1 if num_samples is None else min(cfg.data.get("batch_size") or num_samples, num_samples)
    return LOSSES[effective_loss(cfg)].bias_curvature(batch_size)


def _trains_free_features(cfg: DictConfig) -> bool:
    """Whether the configured network is an unconstrained features model (asks its class)."""
    from ufm_torch.models import has_free_features, target_object

    return has_free_features(target_object(str(OmegaConf.select(cfg, "model._target_", default=""))))


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


def check_bias_decay(cfg: DictConfig) -> None:
    """``module.bias_decay`` needs a bias (the spherical UFM's own message: :func:`check_spherical`)."""
    bias_decay = OmegaConf.select(cfg, "module.bias_decay", default=0.0) or 0.0
    if OmegaConf.select(cfg, "model.normalize", default=False):
        return
    if nonzero(bias_decay) and OmegaConf.select(cfg, "model.bias", default=True) is False:
        raise ConfigError(
            f"module.bias_decay={bias_decay} needs a bias, but model.bias=false; set module.bias_decay=0 or "
            "model.bias=true"
        )


def check_label_smoothing(cfg: DictConfig) -> None:
    """``module.label_smoothing`` belongs to the losses that support it (cross-entropy)."""
    smoothing = OmegaConf.select(cfg, "module.label_smoothing", default=0.0) or 0.0
    if nonzero(smoothing) and not LOSSES[effective_loss(cfg)].supports_label_smoothing:
        losses = " or ".join(f"module.loss={name}" for name in LABEL_SMOOTHING_LOSSES)
        raise ConfigError(
            f"module.label_smoothing={smoothing} applies to {losses} only (now {effective_loss(cfg)}); set "
            f"module.label_smoothing=0 or {losses}"
        )


def check_spherical(cfg: DictConfig) -> None:
    """``model.normalize`` (the spherical UFM) has no bias and no decay (``λ/2‖x‖²`` is constant on the sphere, and
    the regularised UFM's oracle would not apply) and trains by full-batch Riemannian descent, plain or heavy ball
    (SGD with momentum; Adam's coordinate-wise scaling has no counterpart on the product of spheres here);
    ``module.temperature`` (a number, or a list of one τ per replica group; each > 0, the schema's check) belongs
    to it and to the cross-entropy."""
    temperature = _plain(OmegaConf.select(cfg, "module.temperature", default=None))
    normalize = OmegaConf.select(cfg, "model.normalize", default=False)
    if temperature is not None and not normalize:
        raise ConfigError(
            f"module.temperature={temperature} applies to the spherical UFM only; set model.normalize=true"
        )
    if temperature is not None and effective_loss(cfg) != "cross_entropy":
        raise ConfigError(
            f"module.temperature={temperature} needs module.loss=cross_entropy (now {effective_loss(cfg)}); set "
            "module.loss=cross_entropy or module.temperature=null"
        )
    if not normalize:
        return
    if OmegaConf.select(cfg, "model.bias", default=True):
        raise ConfigError("model.normalize=true puts H and W on the unit sphere without a bias; set model.bias=false")
    bias_decay = OmegaConf.select(cfg, "module.bias_decay", default=0.0) or 0.0
    if nonzero(bias_decay):
        raise ConfigError(
            f"module.bias_decay={bias_decay} has no bias to act on with model.normalize=true; set it to 0"
        )
    for name in ("feature_decay", "classifier_decay"):
        decay = OmegaConf.select(cfg, f"module.{name}", default=0.0) or 0.0
        if nonzero(decay):
            raise ConfigError(
                f"module.{name}={decay} is a constant on the unit sphere (model.normalize=true); set it to 0"
            )
    optimizer = str(OmegaConf.select(cfg, "optimizer._target_", default=""))
    weight_decay = OmegaConf.select(cfg, "optimizer.weight_decay", default=0.0) or 0.0
    if optimizer != "torch.optim.SGD" or weight_decay:
        raise ConfigError(
            f"model.normalize=true trains by Riemannian gradient descent, plain or with momentum (now {optimizer}, "
            f"weight_decay={weight_decay}); use optimizer=sgd or optimizer=momentum with weight_decay=0"
        )
    if OmegaConf.select(cfg, "data.batch_size", default=None) is not None:
        raise ConfigError("model.normalize=true trains on the full batch; set data.batch_size=null")


def check_scheduler_shape(cfg: DictConfig) -> None:
    """``module.scheduler`` is null or a scheduler partial."""
    scheduler = OmegaConf.select(cfg, "module.scheduler")
    if scheduler is not None and (not isinstance(scheduler, DictConfig) or "_target_" not in scheduler):
        raise ConfigError(
            f"module.scheduler={scheduler} is not allowed; it must be null or a scheduler partial (_target_, "
            "_partial_: true, and its arguments)"
        )


def check_backbone_only_keys(cfg: DictConfig) -> None:
    """``module.scheduler`` and ``callbacks.collapse_monitor.in_epochs`` apply to networks trained by autograd: the
    fused steps of the UFM and the deep UFM (:func:`~ufm_torch.models.has_fused_steps`) bypass Lightning's scheduler
    stepping, and their epochs are not passes over data."""
    from ufm_torch.models import has_fused_steps, target_object

    scheduler = OmegaConf.select(cfg, "module.scheduler")
    if not has_fused_steps(target_object(str(OmegaConf.select(cfg, "model._target_", default="")))):
        return
    if scheduler is not None:
        raise ConfigError(
            f"module.scheduler={scheduler._target_} applies to backbones only: the UFM's fused steps do not "
            "go through Lightning's scheduler; set module.scheduler=null"
        )
    if OmegaConf.select(cfg, "callbacks.collapse_monitor.in_epochs"):
        raise ConfigError(
            "callbacks.collapse_monitor.in_epochs=true applies to backbones only (a UFM batch is a block of fused "
            "steps, not a pass over data); set it to false and use points_per_decade or every_n_steps"
        )


def check_hidden_decay(cfg: DictConfig) -> None:
    """``module.hidden_decay`` needs hidden weight layers of the objective: the deep UFM's
    (a :class:`~ufm_torch.models.FreeLayersNetwork`)."""
    hidden_decay = OmegaConf.select(cfg, "module.hidden_decay")
    if hidden_decay is None:
        return
    from ufm_torch.models import has_free_layers, target_object

    if not has_free_layers(target_object(str(OmegaConf.select(cfg, "model._target_", default="")))):
        raise ConfigError(
            f"module.hidden_decay={hidden_decay} applies to model=deep_ufm only (the decay of its hidden weights); "
            "set module.hidden_decay=null"
        )


def check_accelerator(cfg: DictConfig) -> None:
    """``trainer.accelerator=gpu`` (``trainer=gpu``, ``trainer=ddp``, the Papyan presets) needs a CUDA device."""
    if OmegaConf.select(cfg, "trainer.accelerator") not in ("gpu", "cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={cfg.trainer.accelerator} needs a CUDA device and torch sees none (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda is not None}); use trainer=default on this machine"
        )


def check_objective(cfg: DictConfig) -> None:
    """``objective`` is null or a scalar metric tag."""
    objective = cfg.get("objective")
    if objective is None:
        return
    from ufm_torch.metrics.tags import scalar_tags

    if objective not in scalar_tags():
        raise ConfigError(f"objective={objective} is not a metric tag; use null or one of {', '.join(scalar_tags())}")


def validate_config(cfg: DictConfig) -> None:
    """Check every user-facing key; raise :class:`ConfigError` on the first mistake, warn on hopeless settings.

    Integral floats of integer keys (``1e3``) are written back into ``cfg`` as integers. The checks that need only
    the config come first (no torch); those that ask the network's class, the metric tags or the devices come last.
    """
    config = resolved_config(cfg)
    check_shape_keys(config)
    write_integers(cfg, config, check_schema(config))
    check_class_sizes(cfg)
    check_bias_decay(cfg)
    check_scheduler_shape(cfg)
    # From here on the checks import torch (never Lightning).
    num_samples = training_samples(cfg)
    check_label_smoothing(cfg)
    check_spherical(cfg)
    check_backbone_only_keys(cfg)
    check_hidden_decay(cfg)
    check_objective(cfg)
    from ufm_torch.training.precision import resolve_precision

    resolve_precision(cfg)
    grid = check_replica_grid(cfg)
    curvature = _bias_curvature(cfg)
    if curvature is not None:
        check_step_sizes(cfg, grid, curvature, cfg.optimizer.get("momentum", 0.0))
    check_accelerator(cfg)
    check_memory(cfg, num_samples, _trains_free_features(cfg), LOSSES[effective_loss(cfg)])
    feature_dim = OmegaConf.select(cfg, "model.feature_dim")
    num_classes = OmegaConf.select(cfg, "data.num_classes")
    spherical = OmegaConf.select(cfg, "model.normalize", default=False)
    if not spherical and feature_dim is not None and num_classes is not None and feature_dim < num_classes - 1:
        warnings.warn(
            f"model.feature_dim={feature_dim} < num_classes - 1 = {num_classes - 1}: strong neural collapse is "
            "impossible (Theorem 3(c) needs rank W0 >= C - 1)",
            stacklevel=2,
        )
    decays = [nonzero(OmegaConf.select(cfg, f"module.{name}", default=0.0)) for name in DECAYS_OF_THE_ORACLE]
    if all(decays) and feature_dim is not None and num_classes is not None and feature_dim < num_classes:
        warnings.warn(
            f"model.feature_dim={feature_dim} < data.num_classes={num_classes}: the global-optimum oracle needs "
            "p >= C, so the optimum/ metrics are not logged",
            stacklevel=2,
        )
