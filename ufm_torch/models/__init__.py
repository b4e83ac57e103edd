"""Networks: the unconstrained features model (single-layer and deep), backbones and the shared linear head."""

from ufm_torch.models.backbones import MLP, Backbone, ConvNet, resnet18_small
from ufm_torch.models.contract import (
    BACKBONE_DEFAULT_LOSS,
    UFM_DEFAULT_LOSS,
    ClosedFormNetwork,
    FreeLayers,
    FreeLayersNetwork,
    Network,
    ReplicaIdentity,
    default_loss_name,
    has_closed_form,
    has_free_features,
    has_free_layers,
    has_fused_steps,
    target_object,
)
from ufm_torch.models.deep_ufm import Activation, DeepUnconstrainedFeatures
from ufm_torch.models.head import LinearHead
from ufm_torch.models.ufm import UnconstrainedFeatures, expand_init_scales, replica_seeds

__all__ = [
    "BACKBONE_DEFAULT_LOSS",
    "MLP",
    "UFM_DEFAULT_LOSS",
    "Activation",
    "Backbone",
    "ClosedFormNetwork",
    "ConvNet",
    "DeepUnconstrainedFeatures",
    "FreeLayers",
    "FreeLayersNetwork",
    "LinearHead",
    "Network",
    "ReplicaIdentity",
    "UnconstrainedFeatures",
    "default_loss_name",
    "expand_init_scales",
    "has_closed_form",
    "has_free_features",
    "has_free_layers",
    "has_fused_steps",
    "replica_seeds",
    "resnet18_small",
    "target_object",
]
