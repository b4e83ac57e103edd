"""Networks: the unconstrained features model, backbones and the shared linear head."""

from ufm_torch.models.backbones import MLP, Backbone, ConvNet, resnet18_small
from ufm_torch.models.head import LinearHead
from ufm_torch.models.kind import ReplicaIdentity, default_loss_name, has_free_features, target_object
from ufm_torch.models.ufm import UnconstrainedFeatures, expand_init_scales, replica_seeds

__all__ = [
    "MLP",
    "Backbone",
    "ConvNet",
    "LinearHead",
    "ReplicaIdentity",
    "UnconstrainedFeatures",
    "default_loss_name",
    "expand_init_scales",
    "has_free_features",
    "replica_seeds",
    "resnet18_small",
    "target_object",
]
