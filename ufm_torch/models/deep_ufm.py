"""The deep unconstrained features model: free features H_1 followed by L free weight layers.

The model of Súkeník, Mondelli & Lampert 2023 ("Deep neural collapse is provably optimal for the deep unconstrained
features model", NeurIPS) and Dang et al. 2023 ("Neural collapse in deep linear networks: from balanced to
imbalanced data", ICML), batched over replicas::

    H_{l+1} = σ(W_l H_l)   (l = 1 … L − 1),     logits  Z = W_L H_L (+ b1ᵀ),

with H_1 ∈ ℝ^{p×n} free, σ the identity or ReLU (:class:`Activation`), ``W_1 ∈ ℝ^{d×p}``, ``W_l ∈ ℝ^{d×d}``,
``W_L ∈ ℝ^{C×d}`` (d = ``width``; ``W_1 ∈ ℝ^{C×p}`` when L = 1, which is the UFM of
:class:`~ufm_torch.models.ufm.UnconstrainedFeatures`). Row convention of the UFM: ``features`` ``(R, n, p)`` is H_1ᵀ
for each of R replicas, each weight ``(R, out, in)`` as ``nn.Linear`` stores it, the classifier W_L is the head's
weight (:class:`~ufm_torch.models.head.LinearHead`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ufm_torch.models.contract import FreeLayers
from ufm_torch.models.head import LinearHead
from ufm_torch.models.ufm import ReplicatedModel, class_sizes, random_direction


class Activation(enum.Enum):
    """σ of the deep UFM's hidden layers, by its ``model.activation`` name: the identity (the deep linear UFM of
    Dang et al. 2023) or ReLU (Súkeník et al. 2023)."""

    LINEAR = "linear"
    RELU = "relu"

    def apply(self, pre_activation: Tensor) -> Tensor:
        """``σ(x)`` (differentiable: the autograd path and the forward hooks)."""
        return pre_activation.relu() if self is Activation.RELU else pre_activation

    def apply_(self, pre_activation: Tensor) -> Tensor:
        """``σ(x)`` written over ``x`` (the fused steps' forward pass)."""
        return pre_activation.relu_() if self is Activation.RELU else pre_activation

    def backward(self, gradient: Tensor, output: Tensor) -> Tensor:
        """``G ⊙ σ'(x)`` from the layer's ``output`` ``σ(x)``: the identity keeps G; ReLU zeroes it where
        ``σ(x) ≤ 0`` (⟺ x ≤ 0), with autograd's ReLU derivative op (one kernel, no mask tensor)."""
        if self is Activation.RELU:
            return torch.ops.aten.threshold_backward(gradient, output, 0)
        return gradient


class HiddenLayer(nn.Module):
    """One hidden layer ``h ↦ σ(W_l h)`` of every replica: ``weight`` ``(R, out, in)``, rows ``(R, B, in) →
    (R, B, out)``. A module of its own so that forward hooks read H_{l+1} (``network.layers.<l − 1>``)."""

    def __init__(self, weight: Tensor, activation: Activation) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.activation = activation

    def forward(self, rows: Tensor) -> Tensor:
        """``σ(rows · W_lᵀ)``."""
        return self.activation.apply(rows @ self.weight.transpose(-1, -2))


class DeepUnconstrainedFeatures(ReplicatedModel):
    """Deep UFM (module docstring): ``features`` H_1ᵀ ``(R, n, p)``, ``layers`` (W_1 … W_{L−1}) and the ``head``
    (W_L, and b with ``bias=True``).

    ``depth`` is L, the number of weight matrices including the classifier; ``width`` d is the width of
    H_2 … H_L (None: d = p); ``activation`` is σ (``"relu"`` or ``"linear"``, :class:`Activation`). Class sizes,
    replicas, init scales, seeds and ``dtype`` are those of :class:`~ufm_torch.models.ufm.UnconstrainedFeatures`
    (same keys, same :func:`~ufm_torch.models.ufm.class_sizes`, class-major rows). ``feature_dim`` is the
    :class:`~ufm_torch.models.contract.Network`'s: the classifier's input, d (p when L = 1); p itself is
    :attr:`free_feature_dim`.

    Initialisation, the UFM's rule applied to each of the L + 1 factors: for each replica, with the replica's
    generator, H_1 (``n × p``) and then W_1, …, W_L are Gaussian directions rescaled to ‖H_1‖_F = ‖W_l‖_F = ε, and
    b = 0. The draws come in that order, so with L = 1 (H, then W) a replica starts exactly where the UFM's does.
    The logits start at size ≈ ε^{L+1}, and the time to leave the saddle at 0 grows like ε^{−(L−1)}: hence the
    default ε = 1 rather than the UFM's 10⁻³.

    A :class:`~ufm_torch.models.contract.FreeLayersNetwork`: every parameter is free, so the trainer takes fused
    full-batch steps with hand-written backpropagation (:mod:`ufm_torch.training.deep_steps`). It is not the
    single-layer UFM and defines no ``closed_form_features``.
    """

    free_features = True

    def __init__(
        self,
        num_classes: int,
        samples_per_class: int | Sequence[int],
        feature_dim: int,
        depth: int = 3,
        width: int | None = None,
        activation: str | Activation = Activation.RELU,
        init_scale: float | Sequence[float] = 1.0,
        replicas: int = 1,
        seed: int = 0,
        dtype: str = "float64",
        bias: bool = False,
        imbalance_ratio: float = 1.0,
        minority_classes: int | None = None,
    ) -> None:
        super().__init__()
        if depth < 1 or (width is not None and width < 1):
            raise ValueError(f"model.depth={depth} and model.width={width} must be integers >= 1")
        self.class_sizes = class_sizes(num_classes, samples_per_class, imbalance_ratio, minority_classes)
        self.num_classes = num_classes
        self.depth = depth
        self.activation = Activation(activation)
        self.free_feature_dim = feature_dim
        width = feature_dim if width is None else width
        self.width = width
        self.feature_dim = width if depth > 1 else feature_dim
        self.assign_replicas(init_scale, replicas, seed)
        dims = [feature_dim] + [width] * (depth - 1) + [num_classes]
        shapes = [(sum(self.class_sizes), feature_dim)] + [(dims[layer + 1], dims[layer]) for layer in range(depth)]
        factors: list[list[Tensor]] = [[] for _ in shapes]
        for scale, replica_seed in zip(self.init_scales, self.seeds, strict=True):
            generator = torch.Generator().manual_seed(replica_seed)
            for drawn, shape in zip(factors, shapes, strict=True):
                drawn.append(scale * random_direction(shape, generator))
        target_dtype = getattr(torch, dtype)
        features, *weights = (torch.stack(drawn).to(target_dtype) for drawn in factors)
        self.features = nn.Parameter(features)
        self.layers = nn.ModuleList(HiddenLayer(weight, self.activation) for weight in weights[:-1])
        self.head = LinearHead(num_classes, dims[-2], replica_shape=(len(self.init_scales),), dtype=target_dtype,
                               bias=bias)  # fmt: skip
        with torch.no_grad():
            self.head.weight.copy_(weights[-1])
            self.head.bias.zero_()

    def free_layers(self) -> FreeLayers:
        """H_1ᵀ, ``(W_1, …, W_L)`` (W_L the head's weight) and σ: what the fused steps update in place."""
        weights = (*(layer.weight for layer in self.layers), self.head.weight)
        return FreeLayers(self.features, weights, self.activation)

    def forward_features(self, indices: Tensor) -> Tensor:
        """H_L's rows for the given sample indices, the classifier's input: shape ``(R, B, d)``."""
        rows = self.features.index_select(-2, indices)
        for layer in self.layers:
            rows = layer(rows)
        return rows

    def forward(self, indices: Tensor) -> Tensor:
        """Logits ``W_L h_L + b`` for the given sample indices, shape ``(R, B, C)``."""
        return self.head(self.forward_features(indices))
