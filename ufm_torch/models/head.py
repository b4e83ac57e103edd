"""The linear classifier z ↦ Wz + b shared by the UFM and every backbone."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LinearHead(nn.Module):
    """Linear head: weight ``W`` of shape ``(*replica_shape, C, p)``, bias ``b`` of shape ``(*replica_shape, C)``.

    ``forward`` maps features ``(..., B, p)`` to logits ``Wh + b`` of shape ``(..., B, C)``. With an empty
    ``replica_shape`` it matches ``nn.Linear`` (same layout and default initialisation).
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        replica_shape: tuple[int, ...] = (),
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        bound = 1.0 / math.sqrt(feature_dim)
        weight = torch.empty(*replica_shape, num_classes, feature_dim, dtype=dtype)
        self.weight = nn.Parameter(weight.uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(*replica_shape, num_classes, dtype=dtype).uniform_(-bound, bound))

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``features · Wᵀ + b``."""
        return features @ self.weight.transpose(-1, -2) + self.bias.unsqueeze(-2)
