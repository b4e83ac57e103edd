"""The deep UFM shared by the deep oracles: the problem, its objective, the optimum record and distances to it.

Problem (row convention of :mod:`ufm_torch.theory.optimum`: ``features`` ``(..., n, p)`` is ``H_1ᵀ``;
``weights[l − 1]`` ``(..., out, in)`` is ``W_l`` as ``nn.Linear`` stores it; leading dimensions are replicas)::

    H_{l+1} = σ(W_l H_l)  (l = 1..L−1),
    f = (1/2n)‖W_L H_L − Y‖²_F + Σ_{l=1}^{L} λ_{W_l}/2 ‖W_l‖²_F + λ_{H_1}/2 ‖H_1‖²_F,

with σ the identity or ReLU, ``W_1 ∈ R^{d×p}``, ``W_l ∈ R^{d×d}`` for hidden layers (d = ``width``),
``W_L ∈ R^{K×d}`` (``W_1 ∈ R^{K×p}`` when L = 1), no bias, one-hot ``Y`` (K × n), ``n = Σ_k n_k``,
``λ_{W_L}`` = ``classifier_decay``, ``λ_{W_l}`` = ``hidden_decay`` for l < L, ``λ_{H_1}`` = ``feature_decay``. This
is the convention of Dang et al. 2023 ("Neural collapse in deep linear networks: from balanced to imbalanced
data", ICML) and Súkeník et al. 2023 ("Deep neural collapse is provably optimal for the deep unconstrained
features model", NeurIPS). For L = 1 it is :class:`ufm_torch.theory.optimum.UFMProblem` with loss
``mean_squared``, ``bias=False``, ``λ_W = classifier_decay``, ``λ_H = feature_decay``.

The L + 1 factors ``A_0 = H_1``, ``A_l = W_l`` carry the decays ``a_0 = λ_{H_1}``, ``a_l = λ_{W_l}``; their
geometric mean ``τ = (λ_{H_1} Π_l λ_{W_l})^{1/(L+1)}`` is the one constant through which the decays enter the
optimal loss (for L = 1, ``τ = √(λ_Wλ_H)`` of :mod:`ufm_torch.theory.optimum`). Derivations:
``docs/deep_ufm_theory.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ufm_torch.errors import ConfigError
from ufm_torch.metrics.tags import LOSS_VS_DNC_TAG, OPTIMUM_TAGS

DTYPE = torch.float64
ACTIVATIONS = ("linear", "relu")
LOSS_GAP_TAG, CLASSIFIER_GRAM_TAG, FEATURE_GRAM_TAG = OPTIMUM_TAGS[:3]


class OracleAssumptionError(ConfigError):
    """A deep-UFM oracle was asked about a problem outside the assumptions its formula is proved (or computed)
    under; the message is one line naming the assumption and the value."""


@dataclass(frozen=True)
class DeepUFMProblem:
    """One deep UFM: class sizes ``n_k``, p, width d, depth L, the decays and the activation σ (module docstring).

    ``hidden_decay`` is unused when ``depth == 1`` (there is no hidden layer), and so is ``width``.
    """

    class_sizes: tuple[int, ...]
    feature_dim: int
    width: int
    depth: int
    feature_decay: float
    hidden_decay: float
    classifier_decay: float
    activation: str = "linear"

    def __post_init__(self) -> None:
        if len(self.class_sizes) < 2 or min(self.class_sizes) < 1:
            raise OracleAssumptionError(f"need at least 2 classes, each with a sample; got {self.class_sizes}")
        if min(self.feature_dim, self.width, self.depth) < 1:
            raise OracleAssumptionError(
                f"feature_dim, width and depth must be ≥ 1, got {self.feature_dim}, {self.width}, {self.depth}"
            )
        if self.activation not in ACTIVATIONS:
            raise OracleAssumptionError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if min((self.feature_decay, *self.layer_decays)) <= 0:
            raise OracleAssumptionError(
                f"the oracles need every decay > 0, got feature_decay={self.feature_decay}, "
                f"hidden_decay={self.hidden_decay}, classifier_decay={self.classifier_decay}"
            )

    @property
    def num_classes(self) -> int:
        """K."""
        return len(self.class_sizes)

    @property
    def num_samples(self) -> int:
        """n = Σ_k n_k."""
        return sum(self.class_sizes)

    @property
    def balanced(self) -> bool:
        """Whether every class has the same size N."""
        return len(set(self.class_sizes)) == 1

    @property
    def layer_decays(self) -> tuple[float, ...]:
        """``(λ_{W_1}, …, λ_{W_L})``: ``hidden_decay`` L − 1 times, then ``classifier_decay``."""
        return (self.hidden_decay,) * (self.depth - 1) + (self.classifier_decay,)

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(out, in)`` of ``W_1, …, W_L``."""
        dims = (self.feature_dim,) + (self.width,) * (self.depth - 1) + (self.num_classes,)
        return tuple((dims[layer + 1], dims[layer]) for layer in range(self.depth))

    @property
    def tau(self) -> float:
        """``τ = (λ_{H_1} Π_l λ_{W_l})^{1/(L+1)}``, the geometric mean of the L + 1 factors' decays."""
        logs = [math.log(decay) for decay in (self.feature_decay, *self.layer_decays)]
        return math.exp(sum(logs) / len(logs))

    def class_major_labels(self) -> Tensor:
        """Labels ``0…0 1…1 …`` with ``n_k`` copies of k."""
        return torch.repeat_interleave(torch.arange(self.num_classes), torch.tensor(self.class_sizes))

    def check_labels(self, labels: Tensor) -> None:
        """Raise ``ValueError`` unless ``labels`` has this problem's class sizes."""
        counts = torch.bincount(labels.reshape(-1).cpu(), minlength=self.num_classes)
        if counts.numel() != self.num_classes or tuple(int(c) for c in counts) != self.class_sizes:
            raise ValueError(f"labels have class sizes {tuple(counts.tolist())}, the problem {self.class_sizes}")


def deep_forward(features: Tensor, weights: Sequence[Tensor], activation: str) -> list[Tensor]:
    """``[H_1ᵀ, …, H_Lᵀ, (W_L H_L)ᵀ]``: the rows of every layer's features, then the logits, ``(..., n, ·)``."""
    layers = [features]
    for index, weight in enumerate(weights):
        output = layers[-1] @ weight.transpose(-1, -2)
        hidden = index < len(weights) - 1
        layers.append(torch.relu(output) if hidden and activation == "relu" else output)
    return layers


def deep_ufm_objective(features: Tensor, weights: Sequence[Tensor], labels: Tensor, problem: DeepUFMProblem) -> Tensor:
    """``f = (1/2n)‖W_L H_L − Y‖²_F + Σ_l λ_{W_l}/2‖W_l‖²_F + λ_{H_1}/2‖H_1‖²_F`` per replica, shape ``(...)``."""
    if len(weights) != problem.depth:
        raise ValueError(f"got {len(weights)} weights for a problem of depth {problem.depth}")
    logits = deep_forward(features, weights, problem.activation)[-1]
    targets = F.one_hot(labels, problem.num_classes).to(logits)
    value = 0.5 * (logits - targets).square().sum((-1, -2)) / labels.numel()
    value = value + 0.5 * problem.feature_decay * features.square().sum((-1, -2))
    for decay, weight in zip(problem.layer_decays, weights, strict=True):
        value = value + 0.5 * decay * weight.square().sum((-1, -2))
    return value


def layer_class_mean_gram(rows: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Gram ``MᵀM`` of the class means ``m_k = (1/n_k) Σ_{y_i = k} h_i`` of one layer's rows, ``(..., K, K)``."""
    indicator = F.one_hot(labels, num_classes).to(rows)
    means = indicator.transpose(-1, -2) @ rows / indicator.sum(-2).unsqueeze(-1)
    return means @ means.transpose(-1, -2)


def _gram_error(gram: Tensor, optimal: Tensor) -> Tensor:
    """``‖G − G*‖_F/‖G*‖_F``, or ``‖G‖_F`` when ``G* = 0``."""
    optimal = optimal.to(gram)
    scale = torch.linalg.matrix_norm(optimal)
    if float(scale) == 0.0:
        return torch.linalg.matrix_norm(gram)
    return torch.linalg.matrix_norm(gram - optimal) / scale


@dataclass(frozen=True)
class DeepUFMOptimum:
    """The optimum of a :class:`DeepUFMProblem` (or the best DNC point, when ``is_global`` is False); float64, CPU.

    ``loss`` is f* (the DNC family's minimum when not ``is_global``); ``class_scales`` are the ``t_k ≥ 0`` solving
    each class's scalar equation ``nτ = t^{L−1}(√n_k − t^{L+1})`` (0: class k collapsed to zero; see
    ``docs/deep_ufm_theory.md``); ``logit_matrix`` (K × K) has column k the logits of class k's features;
    ``feature_grams[l − 1]`` is the Gram ``M_lᵀM_l`` of the class means of ``H_l`` (l = 1..L; ``feature_grams[-1]``
    is the classifier's input); ``classifier_gram`` is ``W_LW_Lᵀ``; ``product_gram`` is
    ``(W_L⋯W_1)(W_L⋯W_1)ᵀ``; ``weight_singular_values[l − 1]`` are the K largest singular values of ``W_l`` (for the
    linear oracle in class order: the one that carries class k). ``class_means`` (K × p) and ``weights`` are one
    minimiser, from which every Gram above can be recomputed. With ReLU the H_1 Gram, the product Gram and the
    spectrum of ``W_1`` are those of this one minimiser: other global minimisers differ there (the docs, §4).
    """

    problem: DeepUFMProblem
    loss: float
    is_global: bool
    class_scales: Tensor
    logit_matrix: Tensor
    feature_grams: tuple[Tensor, ...]
    classifier_gram: Tensor
    product_gram: Tensor
    weight_singular_values: Tensor
    class_means: Tensor
    weights: tuple[Tensor, ...]

    @property
    def is_zero(self) -> bool:
        """Whether the optimum is ``W_l = 0, H_1 = 0`` (every ``t_k = 0``; f* = ½)."""
        return not bool(self.class_scales.any())

    @property
    def factor_penalty(self) -> float:
        """``λ_{H_1}‖H_1‖²_F = λ_{W_l}‖W_l‖²_F = τ Σ_k t_k²`` for every l: the factors are balanced (AM–GM)."""
        return self.problem.tau * float(self.class_scales.square().sum())

    def minimiser(self, labels: Tensor | None = None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``(features, weights)`` of one minimiser: sample i gets the H_1 mean of its class (``labels`` defaults to
        :meth:`DeepUFMProblem.class_major_labels`)."""
        labels = self.problem.class_major_labels() if labels is None else labels
        self.problem.check_labels(labels)
        return self.class_means[labels.cpu()], tuple(weight.clone() for weight in self.weights)

    def metrics(self, features: Tensor, weights: Sequence[Tensor], labels: Tensor) -> dict[str, Tensor]:
        """Distances to this optimum, per replica: the loss (``optimum/loss_gap`` = f − f*, or
        ``optimum/loss_vs_dnc`` = f − f_DNC when not ``is_global``), ``optimum/classifier_gram``
        ``‖W_LW_Lᵀ − (W_LW_Lᵀ)*‖_F/‖(W_LW_Lᵀ)*‖_F`` and ``optimum/feature_gram``, the same for the class means of
        the classifier's input H_L (absolute when the optimum is 0). The model has no bias, so no
        ``optimum/bias``."""
        self.problem.check_labels(labels)
        layers = deep_forward(features, weights, self.problem.activation)
        loss = deep_ufm_objective(features, weights, labels, self.problem) - self.loss
        classifier = weights[-1] @ weights[-1].transpose(-1, -2)
        inputs = layer_class_mean_gram(layers[-2], labels, self.problem.num_classes)
        return {
            LOSS_GAP_TAG if self.is_global else LOSS_VS_DNC_TAG: loss,
            CLASSIFIER_GRAM_TAG: _gram_error(classifier, self.classifier_gram),
            FEATURE_GRAM_TAG: _gram_error(inputs, self.feature_grams[-1]),
        }


def check_no_bias(bias: bool) -> None:
    """Raise :class:`OracleAssumptionError` for a model with a bias: every deep oracle here is bias-free."""
    if bias:
        raise OracleAssumptionError(
            "the deep-UFM oracles cover the bias-free model only (Dang et al. 2023; Súkeník et al. 2023, 2024), "
            "got bias=True"
        )
