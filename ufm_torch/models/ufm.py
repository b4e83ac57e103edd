"""The unconstrained features model: features H, classifier W and bias b as free parameters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch
from torch import Tensor, nn

from ufm_torch.hyperparameters import HyperparameterGrid
from ufm_torch.models.contract import ReplicaIdentity
from ufm_torch.models.head import LinearHead


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


def _is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (numpy's included), not a boolean."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def class_sizes(
    num_classes: int,
    samples_per_class: int | Sequence[int],
    imbalance_ratio: float = 1.0,
    minority_classes: int | None = None,
) -> list[int]:
    """The number of samples ``n_k`` of each class ``k = 0 … C−1`` of the UFM's training set.

    - ``samples_per_class`` a list of C integers ``n_k ≥ 1``: those sizes (``imbalance_ratio`` must then be 1 and
      ``minority_classes`` null);
    - an integer ``N ≥ 1`` with ``imbalance_ratio`` ``ρ = 1``: balanced, ``n_k = N``;
    - an integer ``n_maj`` with ``ρ > 1``: step imbalance (Fang et al. 2021, "Exploring deep neural networks via
      layer-peeled model: minority collapse in imbalanced training"): the first ``C − m`` classes keep ``n_maj``, the
      last ``m = minority_classes`` get ``n_min = max(1, ⌊n_maj/ρ + ½⌋)`` (nearest integer, halves up), so that
      ``n_maj / n_min ≈ ρ``. ``minority_classes`` null means ``m = ⌊C/2⌋``; 0 ≤ m ≤ C.

    This one function decides the sizes for both :class:`UnconstrainedFeatures` and
    :class:`ufm_torch.data.UFMDataModule` (which receive the same three ``data.*`` keys), so features and labels
    always agree. A value outside these rules raises ``ValueError`` naming its ``data.*`` key and what is allowed.
    """
    if not _is_integer(num_classes) or num_classes < 1:
        raise ValueError(f"data.num_classes={num_classes!r} is not allowed; it must be an integer >= 1")
    if not isinstance(imbalance_ratio, Real) or isinstance(imbalance_ratio, bool) or not (
        math.isfinite(imbalance_ratio) and imbalance_ratio >= 1
    ):
        raise ValueError(f"data.imbalance_ratio={imbalance_ratio!r} is not allowed; it must be a number >= 1")
    if minority_classes is not None and (not _is_integer(minority_classes) or not 0 <= minority_classes <= num_classes):
        raise ValueError(
            f"data.minority_classes={minority_classes!r} is not allowed; it must be null (C // 2) or an integer "
            f"from 0 to data.num_classes={num_classes}"
        )
    if isinstance(samples_per_class, Sequence) and not isinstance(samples_per_class, str):
        sizes = list(samples_per_class)
        if len(sizes) != num_classes or not all(_is_integer(size) and size >= 1 for size in sizes):
            raise ValueError(
                f"data.samples_per_class={sizes!r} is not allowed; a list must hold data.num_classes={num_classes} "
                "integers >= 1 (one per class)"
            )
        if imbalance_ratio != 1 or minority_classes is not None:
            raise ValueError(
                "data.imbalance_ratio and data.minority_classes apply only to an integer data.samples_per_class; "
                f"with the list {sizes!r} set data.imbalance_ratio=1 and data.minority_classes=null"
            )
        return [int(size) for size in sizes]
    if not _is_integer(samples_per_class) or samples_per_class < 1:
        raise ValueError(
            f"data.samples_per_class={samples_per_class!r} is not allowed; it must be an integer >= 1 or a list of "
            f"data.num_classes={num_classes} integers >= 1"
        )
    majority = int(samples_per_class)
    if imbalance_ratio == 1:
        return [majority] * num_classes
    minority = num_classes // 2 if minority_classes is None else int(minority_classes)
    minority_size = max(1, math.floor(majority / imbalance_ratio + 0.5))
    return [majority] * (num_classes - minority) + [minority_size] * minority


def random_direction(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """A Gaussian matrix rescaled to unit Frobenius norm (float64)."""
    direction = torch.randn(shape, generator=generator, dtype=torch.float64)
    return direction / direction.norm()


def unit_rows(matrix: Tensor) -> Tensor:
    """``matrix`` with every row divided by its Euclidean norm: a point of the product of unit spheres."""
    return matrix / matrix.norm(dim=-1, keepdim=True)


class ReplicatedModel(nn.Module):
    """A model trained as R replicas in one batched tensor: who each replica is, for the UFM and the deep UFM.

    Replicas are ordered by hyperparameter setting, then init scale, then copy: replica ``r`` has the setting
    ``settings[r]`` of the grid, init scale ``init_scales[r]``, copy index ``copy_indices[r] = r % replicas`` and
    seed ``seeds[r]`` from :func:`replica_seeds` (copy k of every setting and scale starts from the same stream).
    """

    def assign_replicas(
        self, init_scale: float | Sequence[float], replicas: int, seed: int,
        hyperparameters: HyperparameterGrid | None = None,
    ) -> None:  # fmt: skip
        """Set ``settings``, ``init_scales``, ``copy_indices`` and ``seeds`` (class docstring)."""
        group_scales = expand_init_scales(init_scale, replicas)
        grid_settings = (hyperparameters or HyperparameterGrid()).settings()
        self.settings = [setting for setting in grid_settings for _ in group_scales]
        self.init_scales = group_scales * len(grid_settings)
        self.copy_indices = [r % replicas for r in range(len(self.init_scales))]
        copy_seeds = replica_seeds(seed, replicas)
        self.seeds = [copy_seeds[copy] for copy in self.copy_indices]

    @property
    def num_replicas(self) -> int:
        """Number of independent copies R trained together."""
        return len(self.init_scales)

    def replica_identities(self) -> list[ReplicaIdentity]:
        """``(ε, copy, seed, hyperparameters)`` of every replica, in replica order."""
        return [
            ReplicaIdentity(*identity)
            for identity in zip(self.init_scales, self.copy_indices, self.seeds, self.settings, strict=True)
        ]


class UnconstrainedFeatures(ReplicatedModel):
    """UFM of Mixon, Parshall and Pi: ``features`` ``(R, n, p)`` (Hᵀ per replica) and a :class:`LinearHead`.

    Class sizes: ``class_sizes = [n_0, …, n_{C−1}]`` from :func:`class_sizes` (``samples_per_class`` an integer N,
    balanced, or a list of C sizes; ``imbalance_ratio`` and ``minority_classes`` for step imbalance), and
    ``n = Σ_k n_k`` rows per replica in class-major order: class 0's ``n_0`` rows, then class 1's, … (the labels of
    :func:`ufm_torch.data.class_major_labels`). ``samples_per_class`` keeps the value given (an int, or the list),
    ``is_balanced`` says whether every ``n_k`` is the same.

    ``bias=False`` gives the bias-free UFM ``½‖WH − Y‖²_F``: ``head.bias`` is then a zero buffer, not a parameter
    (``head.has_bias`` False).

    Initialisation (Section 2): for each replica, H₀ (``n × p``) and W₀ are Gaussian directions rescaled so that
    ‖H₀‖_F = ‖W₀‖_F = ε and b₀ = 0; a balanced model draws exactly the numbers it drew before class sizes existed.
    ``hyperparameters`` (:class:`~ufm_torch.hyperparameters.HyperparameterGrid`, from the config's per-replica lists)
    makes one replica group per setting: replicas are ordered setting-major, then scale-major: replica ``r`` has
    setting ``settings[r]``, init scale ``init_scales[r]``, copy index ``copy_indices[r] = r % replicas`` and seed
    ``seeds[r]`` from :func:`replica_seeds`, so that copy k of every setting and ε starts from the same directions.
    ``normalize=True`` gives the spherical UFM (Jiang et al. 2024, "Generalized neural collapse for a large number
    of classes", ICML): every feature row h_i and classifier row w_k on the unit sphere S^{p−1}, no bias (``bias``
    must be False). The Gaussian rows are normalised at initialisation, so ε has no effect there (it only scales
    the directions before normalising); the trainer keeps the rows on the sphere by Riemannian descent
    (:func:`ufm_torch.training.fused_descent.spherical_descent`), and the temperature τ is the objective's
    (``module.temperature``).
    Inputs are sample indices; ``forward`` returns logits of shape ``(R, B, C)``. A
    :class:`~ufm_torch.models.contract.ClosedFormNetwork`: the trainer takes fused closed-form steps on
    :meth:`closed_form_features`.
    """

    free_features = True

    def __init__(
        self,
        num_classes: int,
        samples_per_class: int | Sequence[int],
        feature_dim: int,
        init_scale: float | Sequence[float] = 1e-3,
        replicas: int = 1,
        seed: int = 0,
        dtype: str = "float64",
        bias: bool = True,
        imbalance_ratio: float = 1.0,
        minority_classes: int | None = None,
        hyperparameters: HyperparameterGrid | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if normalize and bias:
            raise ValueError("model.normalize=true puts W and H on the unit sphere, without bias; set model.bias=false")
        self.normalize = normalize
        self.class_sizes = class_sizes(num_classes, samples_per_class, imbalance_ratio, minority_classes)
        self.is_balanced = len(set(self.class_sizes)) == 1
        self.num_classes = num_classes
        self.samples_per_class = int(samples_per_class) if _is_integer(samples_per_class) else list(self.class_sizes)
        self.imbalance_ratio = float(imbalance_ratio)
        self.minority_classes = minority_classes
        self.feature_dim = feature_dim
        self.assign_replicas(init_scale, replicas, seed, hyperparameters)
        num_samples = sum(self.class_sizes)
        features, weight = [], []
        for scale, replica_seed in zip(self.init_scales, self.seeds, strict=True):
            generator = torch.Generator().manual_seed(replica_seed)
            features.append(scale * random_direction((num_samples, feature_dim), generator))
            weight.append(scale * random_direction((num_classes, feature_dim), generator))
        if normalize:
            features, weight = [unit_rows(f) for f in features], [unit_rows(w) for w in weight]
        target_dtype = getattr(torch, dtype)
        self.features = nn.Parameter(torch.stack(features).to(target_dtype))
        self.head = LinearHead(
            num_classes, feature_dim, replica_shape=(len(self.init_scales),), dtype=target_dtype, bias=bias
        )
        with torch.no_grad():
            self.head.weight.copy_(torch.stack(weight))
            self.head.bias.zero_()

    def closed_form_features(self) -> nn.Parameter:
        """The feature parameter Hᵀ ``(R, n, p)``, the classifier's input of every sample: the logits are
        ``HᵀWᵀ + 1bᵀ``, so the objective has the closed-form gradient of Mixon et al., Section 3."""
        return self.features

    def forward_features(self, indices: Tensor) -> Tensor:
        """Rows of H for the given sample indices, shape ``(R, B, p)``."""
        return self.features.index_select(-2, indices)

    def forward(self, indices: Tensor) -> Tensor:
        """Logits ``W h_i + b`` for the given sample indices, shape ``(R, B, C)``."""
        return self.head(self.forward_features(indices))
