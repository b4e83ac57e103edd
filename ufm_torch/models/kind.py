"""What a network is: the one place where the UFM and backbones differ for training, measurement and checks.

Every network of ufm-torch declares ``free_features`` (class attribute): True for the unconstrained features model,
whose features are parameters (Mixon et al., Section 2), False for a backbone, whose features are a function of its
inputs. The training module, the collapse monitor and the config checks ask this once, through
:func:`has_free_features` (an instance) or :func:`target_has_free_features` (a config's ``_target_``).
"""

from __future__ import annotations

from typing import NamedTuple

from hydra.utils import get_object
from torch import nn


class ReplicaIdentity(NamedTuple):
    """Who a replica is: its init scale ε (None for a backbone), its copy index and its seed."""

    init_scale: float | None
    copy: int
    seed: int | None


def has_free_features(network: nn.Module) -> bool:
    """Whether ``network`` is an unconstrained features model (features are parameters)."""
    return bool(getattr(network, "free_features", False))


def target_has_free_features(target: str) -> bool:
    """Whether the class or factory a config's ``_target_`` names builds an unconstrained features model.

    A factory function (``resnet18_small``) declares nothing and builds a backbone; a ``_target_`` that cannot be
    imported is a backbone here (instantiation reports it).
    """
    try:
        built = get_object(target)
    except Exception:
        return False
    return bool(getattr(built, "free_features", False))


def default_loss_name(network: nn.Module) -> str:
    """The loss when ``module.loss`` is null: the paper's summed ½‖WH + b1ᵀ − Y‖²_F for the UFM (Mixon et al.,
    Section 2), the batch mean ½ mean_i ‖Wh_i + b − y_i‖² for backbones."""
    return "sum_squared" if has_free_features(network) else "mean_squared"
