"""Every configured network offers what the trainer and the monitor need (``ufm_torch.models.Network``), and only a
network that declares fused steps (the UFM's closed form, ``ClosedFormNetwork``; the deep UFM's free layers,
``FreeLayersNetwork``) trains by them: free features alone train by autograd.
"""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

import ufm_torch.conf
from tests.helpers import compose_train
from ufm_torch.data import UFMDataModule
from ufm_torch.models import (
    BACKBONE_DEFAULT_LOSS,
    UFM_DEFAULT_LOSS,
    ClosedFormNetwork,
    FreeLayersNetwork,
    LinearHead,
    Network,
    ReplicaIdentity,
    default_loss_name,
    has_closed_form,
    has_free_features,
    has_free_layers,
    has_fused_steps,
    target_object,
)
from ufm_torch.objectives.losses import LOSSES
from ufm_torch.training.module import CollapseModule

MODELS = sorted(path.stem for path in (Path(ufm_torch.conf.__file__).parent / "model").glob("*.yaml"))
NEEDS_TORCHVISION = {"resnet18"}
FREE_FEATURE_MODELS = {"ufm", "deep_ufm"}


def protocol_members(protocol: type) -> set[str]:
    """The names a protocol declares itself: its annotated attributes, properties and methods."""
    declared = {name for name, value in vars(protocol).items() if callable(value) or isinstance(value, property)}
    return set(protocol.__annotations__) | {name for name in declared if not name.startswith("_")}


def configured(model: str) -> tuple[nn.Module, Tensor, str]:
    """The network ``model=<model>`` builds, a training batch's inputs for it, and its ``_target_``."""
    if model in NEEDS_TORCHVISION:
        pytest.importorskip("torchvision")
    cfg = compose_train(f"model={model}", *([] if model in FREE_FEATURE_MODELS else ["data=digits"]))
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    inputs, _ = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(0)
    return instantiate(cfg.model).eval(), inputs, cfg.model._target_


every_model = pytest.mark.parametrize(
    "model", [pytest.param(name, marks=pytest.mark.vision) if name in NEEDS_TORCHVISION else name for name in MODELS]
)


def test_the_contract_names_what_the_trainer_and_the_monitor_read() -> None:
    assert protocol_members(Network) == {
        "num_classes", "feature_dim", "head", "num_replicas", "free_features", "replica_identities",
        "forward_features", "forward",
    }  # fmt: skip
    assert protocol_members(ClosedFormNetwork) == {"closed_form_features", "normalize"}
    assert protocol_members(FreeLayersNetwork) == {"free_layers"}
    assert {UFM_DEFAULT_LOSS, BACKBONE_DEFAULT_LOSS} <= set(LOSSES)


@every_model
def test_every_configured_network_has_every_member_of_the_contract(model: str) -> None:
    network, _, _ = configured(model)
    assert not protocol_members(Network) - {name for name in protocol_members(Network) if hasattr(network, name)}
    assert isinstance(network.num_classes, int) and isinstance(network.feature_dim, int)
    assert isinstance(network.free_features, bool) and isinstance(network.head, LinearHead)
    assert network.head.weight.shape[-2:] == (network.num_classes, network.feature_dim)
    assert default_loss_name(network) in LOSSES


@every_model
def test_forward_is_the_head_of_forward_features_with_one_row_per_input(model: str) -> None:
    network, inputs, _ = configured(model)
    replica_shape = (network.num_replicas,) if network.free_features else ()
    with torch.no_grad():
        features, logits = network.forward_features(inputs), network(inputs)
        assert features.shape == (*replica_shape, len(inputs), network.feature_dim)
        assert logits.shape == (*replica_shape, len(inputs), network.num_classes)
        torch.testing.assert_close(logits, network.head(features), rtol=0, atol=0)


@every_model
def test_replica_identities_name_every_replica(model: str) -> None:
    network, _, _ = configured(model)
    identities = network.replica_identities()
    assert network.num_replicas >= 1 and len(identities) == network.num_replicas
    assert all(isinstance(identity, ReplicaIdentity) for identity in identities)
    assert all((identity.init_scale is not None) == network.free_features for identity in identities)


@every_model
def test_the_class_a_config_names_answers_as_the_network_it_builds(model: str) -> None:
    """The config checks ask the class of ``model._target_`` (before anything is built) what the module and the
    monitor ask the network."""
    network, _, target = configured(model)
    assert has_free_features(target_object(target)) == has_free_features(network)
    assert has_closed_form(target_object(target)) == has_closed_form(network)
    assert has_free_layers(target_object(target)) == has_free_layers(network)


@every_model
def test_only_a_network_with_fused_steps_skips_autograd_and_closed_form_features_are_the_classifiers_input(
    model: str,
) -> None:
    network, inputs, _ = configured(model)
    module = CollapseModule(network, functools.partial(torch.optim.SGD, lr=0.1))
    assert module.automatic_optimization == (not has_fused_steps(network))
    assert not (has_closed_form(network) and has_free_layers(network))
    if has_closed_form(network):
        features = network.closed_form_features()
        assert isinstance(features, nn.Parameter)
        assert features.shape == (network.num_replicas, len(inputs), network.feature_dim)
        with torch.no_grad():
            torch.testing.assert_close(network(inputs), network.head(features[..., inputs, :]), rtol=0, atol=0)


class TwoLayerFreeFeatures(nn.Module):
    """A deep UFM with one hidden layer: logits ``W ReLU(A h_i) + b`` of free features h_i, R replicas. It declares
    free features and no closed form (its classifier's input is not a parameter)."""

    free_features = True

    def __init__(self, num_classes: int, num_samples: int, feature_dim: int, replicas: int = 2) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.num_classes, self.feature_dim, self.num_replicas = num_classes, feature_dim, replicas
        self.features = nn.Parameter(torch.randn(replicas, num_samples, feature_dim, generator=generator).double())
        self.layer = nn.Parameter(torch.randn(replicas, feature_dim, feature_dim, generator=generator).double() / 2)
        self.head = LinearHead(num_classes, feature_dim, replica_shape=(replicas,), dtype=torch.float64)

    def replica_identities(self) -> list[ReplicaIdentity]:
        return [ReplicaIdentity(1.0, copy, copy) for copy in range(self.num_replicas)]

    def forward_features(self, indices: Tensor) -> Tensor:
        return torch.relu(self.features[..., indices, :] @ self.layer.transpose(-1, -2))

    def forward(self, indices: Tensor) -> Tensor:
        return self.head(self.forward_features(indices))


def test_free_features_without_a_closed_form_train_by_autograd(tmp_path: Path) -> None:
    """The fused closed-form steps of the single-layer UFM would be wrong for a deep UFM: one that declares free
    features follows a plain autograd loop of its own objective, full batch and with decays."""
    network = TwoLayerFreeFeatures(num_classes=3, num_samples=6, feature_dim=4)
    reference = TwoLayerFreeFeatures(num_classes=3, num_samples=6, feature_dim=4)
    reference.load_state_dict(network.state_dict())
    assert has_free_features(network) and not has_closed_form(network)
    datamodule = UFMDataModule(num_classes=3, samples_per_class=2)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    decays = {"feature_decay": 0.01, "classifier_decay": 0.02, "bias_decay": 0.03}
    for _ in range(5):
        optimizer.zero_grad()
        features = reference.forward_features(datamodule.indices)
        loss = LOSSES[UFM_DEFAULT_LOSS].value(reference.head(features), datamodule.labels).sum()
        penalties = decays["feature_decay"] * features.square().sum() + decays["classifier_decay"] * (
            reference.head.weight.square().sum()
        )
        (loss + 0.5 * penalties + 0.5 * decays["bias_decay"] * reference.head.bias.square().sum()).backward()
        optimizer.step()
    module = CollapseModule(network, functools.partial(torch.optim.SGD, lr=0.1), **decays)
    trainer = L.Trainer(
        max_steps=5, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        precision="64-true", default_root_dir=tmp_path, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert module.automatic_optimization
    for mine, theirs in zip(network.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-14)
