"""What a network is: the one place where the UFM and backbones differ for training, measurement and checks.

Every network of ufm-torch declares ``free_features`` (class attribute): True for the unconstrained features model,
whose features are parameters (Mixon et al., Section 2), False for a backbone, whose features are a function of its
inputs. The training module, the collapse monitor and the config checks ask this once, through
:func:`has_free_features` on a network, or on the class a config's ``_target_`` names (:func:`target_object`).
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


def has_free_features(network: nn.Module | object) -> bool:
    """Whether ``network`` (a network, or the class or factory that builds one) is an unconstrained features model.

    A factory function (``resnet18_small``) declares nothing and builds a backbone.
    """
    return bool(getattr(network, "free_features", False))


def target_object(target: str) -> object | None:
    """The class or factory a config's ``_target_`` names; None when it cannot be imported (instantiation reports
    it)."""
    try:
        return get_object(target)
    except Exception:
        return None


def default_loss_name(network: nn.Module | object) -> str:
    """The loss when ``module.loss`` is null: the paper's summed ½‖WH + b1ᵀ − Y‖²_F for the UFM (Mixon et al.,
    Section 2), the batch mean ½ mean_i ‖Wh_i + b − y_i‖² for backbones."""
    return "sum_squared" if has_free_features(network) else "mean_squared"
