"""The linear classifier z ↦ Wz + b shared by the UFM and every backbone."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class LinearHead(nn.Module):
    """Linear head: weight ``W`` of shape ``(*replica_shape, C, p)``, bias ``b`` of shape ``(*replica_shape, C)``.

    ``forward`` maps features ``(..., B, p)`` to logits ``Wh + b`` of shape ``(..., B, C)``. With an empty
    ``replica_shape`` it matches ``nn.Linear`` (same layout and default initialisation). ``bias=False`` gives the
    bias-free head ``Wh``: ``bias`` is then a zero buffer (every reader of ``head.bias`` sees b = 0, no optimiser
    updates it) and ``has_bias`` is False.
    """

    def __init__(
        self,
        num_classes: int,
        feature_dim: int,
        replica_shape: tuple[int, ...] = (),
        dtype: torch.dtype | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.has_bias = bias
        bound = 1.0 / math.sqrt(feature_dim)
        weight = torch.empty(*replica_shape, num_classes, feature_dim, dtype=dtype)
        self.weight = nn.Parameter(weight.uniform_(-bound, bound))
        if bias:
            self.bias = nn.Parameter(torch.empty(*replica_shape, num_classes, dtype=dtype).uniform_(-bound, bound))
        else:
            self.register_buffer("bias", torch.zeros(*replica_shape, num_classes, dtype=dtype))

    def forward(self, features: Tensor) -> Tensor:
        """Logits ``features · Wᵀ + b``."""
        return features @ self.weight.transpose(-1, -2) + self.bias.unsqueeze(-2)
