"""Networks: the unconstrained features model, backbones and the shared linear head."""

from ufm_torch.models.backbones import MLP, Backbone, ConvNet, resnet18_small
from ufm_torch.models.head import LinearHead
from ufm_torch.models.ufm import UnconstrainedFeatures, expand_init_scales, replica_seeds

__all__ = [
    "MLP",
    "Backbone",
    "ConvNet",
    "LinearHead",
    "UnconstrainedFeatures",
    "expand_init_scales",
    "replica_seeds",
    "resnet18_small",
]
