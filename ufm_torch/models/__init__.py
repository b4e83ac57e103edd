"""Networks: the unconstrained features model, backbones and the shared linear head."""

from ufm_torch.models.backbones import MLP, Backbone, ConvNet, resnet18_small
from ufm_torch.models.contract import (
    BACKBONE_DEFAULT_LOSS,
    UFM_DEFAULT_LOSS,
    ClosedFormNetwork,
    Network,
    ReplicaIdentity,
    default_loss_name,
    has_closed_form,
    has_free_features,
    target_object,
)
from ufm_torch.models.head import LinearHead
from ufm_torch.models.ufm import UnconstrainedFeatures, expand_init_scales, replica_seeds

__all__ = [
    "BACKBONE_DEFAULT_LOSS",
    "MLP",
    "UFM_DEFAULT_LOSS",
    "Backbone",
    "ClosedFormNetwork",
    "ConvNet",
    "LinearHead",
    "Network",
    "ReplicaIdentity",
    "UnconstrainedFeatures",
    "default_loss_name",
    "expand_init_scales",
    "has_closed_form",
    "has_free_features",
    "replica_seeds",
    "resnet18_small",
    "target_object",
]
