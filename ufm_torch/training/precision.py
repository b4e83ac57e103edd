"""The precision policy: the one place that decides which precision the Lightning Trainer trains in.

| network  | ``model.dtype``   | ``trainer.precision: null`` (default) | an explicit ``trainer.precision``      |
|----------|-------------------|---------------------------------------|----------------------------------------|
| UFM      | float64 (default) | ``64-true``                           | ``64-true`` (or ``64``) only           |
| UFM      | float32           | ``32-true``                           | ``32-true`` (or ``32``) only           |
| backbone | (none)            | ``32-true`` (``bf16-mixed`` on gpu)   | any of :data:`PRECISIONS` (Lightning's) |

The UFM trains in ``model.dtype`` (float64 is the paper's setting): its fused closed-form steps
(:mod:`ufm_torch.training.fused_descent`) multiply the parameters directly, in their own dtype, so Lightning's mixed
or half precision cannot apply to them, and a precision that disagrees with ``model.dtype`` would silently convert
the parameters. Both are configuration mistakes (:class:`~ufm_torch.errors.ConfigError`). Backbones train in
float32 unless asked otherwise. The collapse metrics are float64 whatever the precision.

:func:`resolve_precision` is called by the config checks (before anything is built) and when the Trainer is built.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from ufm_torch.errors import ConfigError
from ufm_torch.models import has_free_features, target_object

LIGHTNING_ALIASES = {"64": "64-true", "32": "32-true", "16": "16-mixed", "bf16": "bf16-mixed"}
"""Lightning's historical spellings and the precision each stands for."""

PRECISIONS = tuple(sorted(("16-mixed", "16-true", "bf16-mixed", "bf16-true", "32-true", "64-true", *LIGHTNING_ALIASES)))
"""Every ``trainer.precision`` accepted (Lightning's values, less ``transformer-engine``, which needs an extra)."""

UFM_PRECISION_OF_DTYPE = {"float64": "64-true", "float32": "32-true"}
"""The UFM's precision for each ``model.dtype``."""

UFM_DEFAULT_DTYPE = "float64"
BACKBONE_DEFAULT_PRECISION = "32-true"
BACKBONE_GPU_PRECISION = "bf16-mixed"
"""A backbone's precision on an explicit GPU preset (``trainer=gpu``, ``trainer.accelerator: gpu``): bf16 autocast
with float32 weights, Lightning's ``bf16-mixed`` (Ampere or newer; set ``trainer.precision=16-mixed`` or ``32-true``
on older GPUs)."""


def canonical_precision(value: Any) -> str:
    """``value`` (a string, or an int as Hydra parses ``trainer.precision=64``) in Lightning's unified spelling.

    Raises :class:`ConfigError` when Lightning does not accept it.
    """
    name = str(value)
    if isinstance(value, bool) or name not in PRECISIONS:
        allowed = ", ".join(PRECISIONS)
        raise ConfigError(f"trainer.precision={value!r} is not allowed; it must be null or one of {allowed}")
    return LIGHTNING_ALIASES.get(name, name)


def trains_free_features(cfg: DictConfig) -> bool:
    """Whether ``cfg.model`` builds the unconstrained features model (its ``_target_`` declares ``free_features``)."""
    return has_free_features(target_object(str(OmegaConf.select(cfg, "model._target_", default=""))))


def resolve_precision(cfg: DictConfig) -> str:
    """The ``precision`` the Trainer gets for the composed ``cfg``, by the policy in this module's table.

    ``trainer.precision`` null (or absent) lets the policy decide: the UFM's ``model.dtype``, float32 for a backbone
    (``bf16-mixed`` when ``trainer.accelerator`` is ``gpu``, as in the ``trainer=gpu`` preset).
    On the UFM an explicit value must agree with ``model.dtype``; mixed or half precision is refused. Raises
    :class:`ConfigError` with one line naming the keys and what is allowed.
    """
    requested = OmegaConf.select(cfg, "trainer.precision")
    precision = None if requested is None else canonical_precision(requested)
    if not trains_free_features(cfg):
        if precision is None and OmegaConf.select(cfg, "trainer.accelerator") == "gpu":
            return BACKBONE_GPU_PRECISION
        return precision or BACKBONE_DEFAULT_PRECISION
    dtype = str(OmegaConf.select(cfg, "model.dtype", default=UFM_DEFAULT_DTYPE))
    derived = UFM_PRECISION_OF_DTYPE.get(dtype)
    if derived is None:
        raise ConfigError(f"model.dtype={dtype} is not allowed; it must be one of {', '.join(UFM_PRECISION_OF_DTYPE)}")
    if precision is None or precision == derived:
        return derived
    if precision not in UFM_PRECISION_OF_DTYPE.values():
        raise ConfigError(
            f"trainer.precision={requested} is not allowed for the UFM: its closed-form steps run in "
            f"model.dtype={dtype}, never in mixed or half precision; leave trainer.precision=null (it is then "
            f"{derived}) and choose model.dtype=float64 or float32"
        )
    dtype_for_request = next(name for name, value in UFM_PRECISION_OF_DTYPE.items() if value == precision)
    raise ConfigError(
        f"trainer.precision={requested} disagrees with model.dtype={dtype}: the UFM trains in model.dtype; leave "
        f"trainer.precision=null, set it to {derived}, or set model.dtype={dtype_for_request}"
    )
