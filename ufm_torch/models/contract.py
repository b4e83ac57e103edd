"""What a network is: the contract that the trainer and the collapse monitor rely on, declared once.

Every network satisfies :class:`Network`: the UFM (:class:`~ufm_torch.models.UnconstrainedFeatures`), every
:class:`~ufm_torch.models.Backbone`, the deep UFM (:class:`~ufm_torch.models.DeepUnconstrainedFeatures`). A
network whose logits are ``HᵀWᵀ + 1bᵀ`` with H itself a parameter, the single-layer UFM of Mixon et al. (Section 2),
also satisfies
:class:`ClosedFormNetwork`: its objective has the closed-form gradient of :mod:`ufm_torch.objectives.ufm`, so the
trainer takes fused closed-form steps on it, the monitor measures H as one tensor and the global-optimum oracle
applies. A network whose every parameter is free, features and a chain of weight layers (the deep UFM),
satisfies :class:`FreeLayersNetwork`: the trainer takes fused
full-batch steps on it by hand-written backpropagation. Any other network trains by autograd; every network but the
closed-form one is measured through forward hooks.

The config checks ask the class a config's ``_target_`` names, before anything is built (:func:`target_object`):
:func:`has_free_features`, :func:`has_closed_form` and :func:`has_fused_steps`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

from hydra.utils import get_object
from torch import Tensor, nn

from ufm_torch.hyperparameters import HyperparameterSetting
from ufm_torch.models.head import LinearHead

if TYPE_CHECKING:
    from ufm_torch.models.deep_ufm import Activation

UFM_DEFAULT_LOSS = "sum_squared"
"""The loss of a network with free features when ``module.loss`` is null: the paper's ½‖WH + b1ᵀ − Y‖²_F (Mixon et
al., Section 2)."""
BACKBONE_DEFAULT_LOSS = "mean_squared"
"""The loss of any other network when ``module.loss`` is null: the batch mean ½ mean_i ‖Wh_i + b − y_i‖²."""


class ReplicaIdentity(NamedTuple):
    """Who a replica is: its init scale ε (None for a backbone), its copy index, its seed and the values of the
    hyperparameters that vary between replicas (:mod:`ufm_torch.hyperparameters`; empty when none does)."""

    init_scale: float | None
    copy: int
    seed: int | None
    hyperparameters: HyperparameterSetting = HyperparameterSetting()


class Network(Protocol):
    """What :class:`~ufm_torch.training.module.CollapseModule` and the collapse monitor need from a network.

    Checked for every ``conf/model/*.yaml`` by ``tests/test_network_contract.py``.
    """

    num_classes: int
    """C, the number of classes: the classifier's outputs."""
    feature_dim: int
    """p, the dimension of the penultimate features: the classifier's input."""
    head: LinearHead
    """The linear classifier ``h ↦ Wh + b``, weight ``(*R, C, p)`` and bias ``(*R, C)`` (R: the replica dimension
    of a UFM, none for a backbone); ``head.has_bias`` False means b ≡ 0 (the bias is a zero buffer)."""
    free_features: bool
    """Whether the inputs are sample indices into free feature parameters (a UFM of any depth) rather than data:
    its data set is the list of (index, label) pairs, ``model.dtype`` sets the training precision
    (:mod:`ufm_torch.training.precision`) and ``module.loss`` defaults to :data:`UFM_DEFAULT_LOSS`. It says nothing of
    how the network trains: only a :class:`ClosedFormNetwork` takes closed-form steps."""

    @property
    def num_replicas(self) -> int:
        """R, the number of independent copies trained together (1 for a backbone)."""
        ...

    def replica_identities(self) -> list[ReplicaIdentity]:
        """``(ε, copy, seed, hyperparameters)`` of every replica, in replica order (what each record of the monitor
        names)."""
        ...

    def forward_features(self, inputs: Tensor) -> Tensor:
        """The penultimate features of a batch, the classifier's input: ``(R, B, p)`` for a UFM, ``(B, p)`` for a
        backbone."""
        ...

    def forward(self, inputs: Tensor) -> Tensor:
        """The logits ``head(forward_features(inputs))``: ``(R, B, C)`` for a UFM, ``(B, C)`` for a backbone."""
        ...


class ClosedFormNetwork(Network, Protocol):
    """A :class:`Network` whose logits are ``FWᵀ + 1bᵀ`` with F a parameter: the single-layer UFM.

    The regularised objective ``f(W, H, b)`` (:class:`ufm_torch.objectives.ufm.Objective`) then has the closed-form
    gradient ``∇_F = RW + λ_H F``, ``∇_W = RᵀF + λ_W W``, ``∇_b = Rᵀ1 + λ_b b`` (Mixon et al., Section 3, with the
    decays of Zhu et al. 2021), which :mod:`ufm_torch.training.fused_descent` applies in place. A deep UFM, whose
    classifier's input is a function of its free features, is not one: it must not define
    :meth:`closed_form_features`.
    """

    normalize: bool
    """Whether every row of F and of W lies on the unit sphere (the spherical UFM, no bias): the fused steps are
    then Riemannian (:func:`ufm_torch.training.fused_descent.spherical_descent`)."""

    def closed_form_features(self) -> nn.Parameter:
        """F = Hᵀ, ``(R, n, p)``: the classifier's input of every training sample (row i is sample i), itself the
        parameter that closed-form steps update in place; the logits of sample i are ``head(F[..., i, :])``."""
        ...


class FreeLayers(NamedTuple):
    """The parameters of a :class:`FreeLayersNetwork`, updated in place by its fused steps: ``features`` F = H_1ᵀ
    ``(R, n, p)`` (row i is sample i), ``weights`` ``(W_1, …, W_L)`` each ``(R, out, in)`` with W_L the head's
    weight, and the activation σ of the hidden layers."""

    features: nn.Parameter
    weights: tuple[nn.Parameter, ...]
    activation: Activation


class FreeLayersNetwork(Network, Protocol):
    """A :class:`Network` whose logits are ``W_L σ(W_{L−1} ⋯ σ(W_1 H_1)) + b1ᵀ`` with H_1 and every W_l parameters:
    the deep UFM (Súkeník et al. 2023; Dang et al. 2023).

    Its full-batch gradient is backpropagation through L products, which
    :mod:`ufm_torch.training.deep_steps` writes out batched over replicas: the trainer takes many such steps per
    Lightning batch, as it does closed-form steps for a :class:`ClosedFormNetwork`. ``head.bias`` is b (a zero buffer
    when ``head.has_bias`` is False).
    """

    def free_layers(self) -> FreeLayers:
        """H_1ᵀ of every training sample, ``(W_1, …, W_L)`` and σ."""
        ...


def has_free_features(network: nn.Module | object) -> bool:
    """:attr:`Network.free_features` of ``network`` (a network, or the class or factory that builds one); a factory
    function (``resnet18_small``) declares nothing and builds a backbone."""
    return bool(getattr(network, "free_features", False))


def has_closed_form(network: nn.Module | object) -> bool:
    """Whether ``network`` (a network, or the class that builds one) is a :class:`ClosedFormNetwork`, i.e. defines
    :meth:`~ClosedFormNetwork.closed_form_features`."""
    return callable(getattr(network, "closed_form_features", None))


def has_free_layers(network: nn.Module | object) -> bool:
    """Whether ``network`` (a network, or the class that builds one) is a :class:`FreeLayersNetwork`, i.e. defines
    :meth:`~FreeLayersNetwork.free_layers`."""
    return callable(getattr(network, "free_layers", None))


def has_fused_steps(network: nn.Module | object) -> bool:
    """Whether the trainer takes fused full-batch steps of its own on ``network`` (a :class:`ClosedFormNetwork` or a
    :class:`FreeLayersNetwork`), under manual optimisation: Lightning then steps no scheduler and an epoch is not a
    pass over data."""
    return has_closed_form(network) or has_free_layers(network)


def target_object(target: str) -> object | None:
    """The class or factory a config's ``_target_`` names; None when it cannot be imported (instantiation reports
    it)."""
    try:
        return get_object(target)
    except Exception:
        return None


def default_loss_name(network: nn.Module | object) -> str:
    """The loss when ``module.loss`` is null: :data:`UFM_DEFAULT_LOSS` for a network with free features,
    :data:`BACKBONE_DEFAULT_LOSS` otherwise."""
    return UFM_DEFAULT_LOSS if has_free_features(network) else BACKBONE_DEFAULT_LOSS
