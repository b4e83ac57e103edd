"""Real backbones: networks of inputs whose penultimate features h(x) ∈ ℝᵖ feed the shared linear head.

Every backbone is a :class:`Backbone`: a ``body`` mapping inputs to features ``(B, p)`` and a
:class:`LinearHead` (empty replica shape) mapping them to logits ``Wh + b`` ``(B, C)``, the classifier of
Papyan, Han & Donoho (2020) and of the UFM (Mixon et al., Section 1). The features are the output of
the body's last nonlinearity, as in Papyan et al., where neural collapse is measured.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from types import ModuleType

from torch import Tensor, nn

from ufm_torch.models.contract import ReplicaIdentity
from ufm_torch.models.head import LinearHead

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}
RESNET_FEATURE_DIM = 512


def require_torchvision() -> ModuleType:
    """``torchvision``, imported on first use; a one-line ``ImportError`` naming the ``vision`` extra otherwise."""
    try:
        import torchvision
    except (ImportError, RuntimeError, OSError) as error:
        raise ImportError(
            f"torchvision is needed here but cannot be imported ({error}); install it with "
            "pip install 'ufm-torch[vision]' (a torchvision build matching your torch)"
        ) from error
    return torchvision


def activation_layer(name: str) -> nn.Module:
    """The activation module called ``name`` (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation={name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def dense_block(in_features: int, out_features: int, activation: str, batch_norm: bool) -> list[nn.Module]:
    """``Linear → [BatchNorm1d] → activation``."""
    norm = [nn.BatchNorm1d(out_features)] if batch_norm else []
    return [nn.Linear(in_features, out_features), *norm, activation_layer(activation)]


class Backbone(nn.Module):
    """A feature map ``body: x ↦ h(x) ∈ ℝᵖ`` followed by the linear classifier ``h ↦ Wh + b``.

    A :class:`~ufm_torch.models.contract.Network` with one replica and no free features; it trains by autograd.
    """

    num_replicas = 1
    free_features = False

    def __init__(self, body: nn.Module, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.body = body
        self.head = LinearHead(num_classes, feature_dim)

    def replica_identities(self) -> list[ReplicaIdentity]:
        """One replica, seeded by the global seed that ``lightning.seed_everything`` recorded in ``PL_GLOBAL_SEED``
        (None if unset), with no init scale."""
        seed = os.environ.get("PL_GLOBAL_SEED")
        return [ReplicaIdentity(None, 0, int(seed) if seed is not None else None)]

    def forward_features(self, inputs: Tensor) -> Tensor:
        """Penultimate features ``h(x)``, shape ``(B, p)``."""
        return self.body(inputs)

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits ``W h(x) + b``, shape ``(B, C)``."""
        return self.head(self.forward_features(inputs))


class MLP(Backbone):
    """Fully connected network: flatten, ``depth − 1`` blocks of ``width`` units, then a block of ``p`` units.

    Each block is ``Linear → [BatchNorm1d] → activation``; inputs of any shape ``(B, …)`` with
    ``input_dim`` entries per sample are flattened first.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        feature_dim: int,
        width: int = 256,
        depth: int = 3,
        activation: str = "relu",
        batch_norm: bool = False,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth={depth} must be >= 1")
        sizes = [input_dim] + [width] * (depth - 1) + [feature_dim]
        layers: list[nn.Module] = [nn.Flatten()]
        for in_features, out_features in itertools.pairwise(sizes):
            layers += dense_block(in_features, out_features, activation, batch_norm)
        super().__init__(nn.Sequential(*layers), num_classes, feature_dim)


class ConvNet(Backbone):
    """Small convolutional network for small images (8×8 digits, 28×28 MNIST, 32×32 CIFAR).

    One block per entry of ``channels``: ``Conv3×3 → [BatchNorm2d] → activation → MaxPool2×2``; then a
    global average pool and ``Linear → [BatchNorm1d] → activation`` to the ``p`` features.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feature_dim: int,
        channels: Sequence[int] = (32, 64),
        activation: str = "relu",
        batch_norm: bool = True,
    ) -> None:
        layers: list[nn.Module] = []
        for in_width, out_width in zip([in_channels, *channels[:-1]], channels, strict=True):
            norm = [nn.BatchNorm2d(out_width)] if batch_norm else []
            conv = nn.Conv2d(in_width, out_width, kernel_size=3, padding=1, bias=not batch_norm)
            layers += [conv, *norm, activation_layer(activation), nn.MaxPool2d(2)]
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers += dense_block(channels[-1], feature_dim, activation, batch_norm)
        super().__init__(nn.Sequential(*layers), num_classes, feature_dim)


def resnet18_small(num_classes: int, in_channels: int = 3, feature_dim: int | None = None) -> Backbone:
    """torchvision's ResNet-18 for small images: a 3×3 stride-1 first convolution and no max-pool.

    The features are the 512 globally pooled activations (He et al. 2016), or, when ``feature_dim`` is
    another p, those followed by ``Linear → BatchNorm1d → ReLU`` to p units. Needs the ``vision`` extra.
    """
    resnet = require_torchvision().models.resnet18(weights=None)
    resnet.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    resnet.maxpool = nn.Identity()
    if feature_dim is None or feature_dim == RESNET_FEATURE_DIM:
        feature_dim = RESNET_FEATURE_DIM
        resnet.fc = nn.Identity()
    else:
        resnet.fc = nn.Sequential(*dense_block(RESNET_FEATURE_DIM, feature_dim, "relu", batch_norm=True))
    return Backbone(resnet, num_classes, feature_dim)
