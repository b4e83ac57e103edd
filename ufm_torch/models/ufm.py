"""The unconstrained features model: features H, classifier W and bias b as free parameters."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ufm_torch.models.head import LinearHead
from ufm_torch.models.kind import ReplicaIdentity


def replica_seeds(seed: int, replicas: int) -> list[int]:
    """Independent 63-bit seeds for copies ``0 … replicas−1``, derived from the global ``seed``.

    Copy ``k`` gets the stream ``SeedSequence([seed, k])``: the same copy of every init scale starts from
    the same random directions (common random numbers), so a sweep over ε compares like with like.
    """
    return [int(np.random.SeedSequence([seed, copy]).generate_state(1, np.uint64)[0] >> 1) for copy in range(replicas)]


def expand_init_scales(init_scale: float | Sequence[float], replicas: int) -> list[float]:
    """The init scale of every replica: each scale ε repeated ``replicas`` times, scales in the given order."""
    scales = [float(init_scale)] if isinstance(init_scale, int | float) else [float(s) for s in init_scale]
    return [scale for scale in scales for _ in range(replicas)]


def random_direction(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """A Gaussian matrix rescaled to unit Frobenius norm (float64)."""
    direction = torch.randn(shape, generator=generator, dtype=torch.float64)
    return direction / direction.norm()


class UnconstrainedFeatures(nn.Module):
    """UFM of Mixon, Parshall and Pi: ``features`` ``(R, CN, p)`` (Hᵀ per replica) and a :class:`LinearHead`.

    Initialisation (Section 2): for each replica, H₀ and W₀ are Gaussian directions rescaled so that
    ‖H₀‖_F = ‖W₀‖_F = ε and b₀ = 0. Replicas are ordered scale-major: replica ``r`` has init scale
    ``init_scales[r]``, copy index ``copy_indices[r] = r % replicas`` and seed ``seeds[r]`` from
    :func:`replica_seeds`.
    Inputs are sample indices; ``forward`` returns logits of shape ``(R, B, C)``.
    """

    free_features = True

    def __init__(
        self,
        num_classes: int,
        samples_per_class: int,
        feature_dim: int,
        init_scale: float | Sequence[float] = 1e-3,
        replicas: int = 1,
        seed: int = 0,
        dtype: str = "float64",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.samples_per_class = samples_per_class
        self.feature_dim = feature_dim
        self.init_scales = expand_init_scales(init_scale, replicas)
        self.copy_indices = [r % replicas for r in range(len(self.init_scales))]
        copy_seeds = replica_seeds(seed, replicas)
        self.seeds = [copy_seeds[copy] for copy in self.copy_indices]
        num_samples = num_classes * samples_per_class
        features, weight = [], []
        for scale, replica_seed in zip(self.init_scales, self.seeds, strict=True):
            generator = torch.Generator().manual_seed(replica_seed)
            features.append(scale * random_direction((num_samples, feature_dim), generator))
            weight.append(scale * random_direction((num_classes, feature_dim), generator))
        target_dtype = getattr(torch, dtype)
        self.features = nn.Parameter(torch.stack(features).to(target_dtype))
        self.head = LinearHead(num_classes, feature_dim, replica_shape=(len(self.init_scales),), dtype=target_dtype)
        with torch.no_grad():
            self.head.weight.copy_(torch.stack(weight))
            self.head.bias.zero_()

    @property
    def num_replicas(self) -> int:
        """Number of independent copies R trained together."""
        return len(self.init_scales)

    def replica_identities(self) -> list[ReplicaIdentity]:
        """``(ε, copy, seed)`` of every replica, in replica order."""
        return [
            ReplicaIdentity(*identity)
            for identity in zip(self.init_scales, self.copy_indices, self.seeds, strict=True)
        ]

    def forward_features(self, indices: Tensor) -> Tensor:
        """Rows of H for the given sample indices, shape ``(R, B, p)``."""
        return self.features.index_select(-2, indices)

    def forward(self, indices: Tensor) -> Tensor:
        """Logits ``W h_i + b`` for the given sample indices, shape ``(R, B, C)``."""
        return self.head(self.forward_features(indices))
