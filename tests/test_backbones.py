"""Backbones map inputs to p features and C logits; the monitor measures them in one pass like the UFM."""

from __future__ import annotations

import pytest
import torch

from ufm_torch.data import DigitsDataModule, UFMDataModule
from ufm_torch.metrics import collapse_metrics
from ufm_torch.metrics.network import MeasurementPlan, NetworkMeasurement, measure_free_features, measure_layers
from ufm_torch.metrics.statistics import class_labels
from ufm_torch.models import MLP, ConvNet, LinearHead, UnconstrainedFeatures, resnet18_small
from ufm_torch.run_folder.names import replica_run_name
from ufm_torch.training.module import CollapseModule


def measure_backbone(module: CollapseModule, datamodule: DigitsDataModule, *layers: str) -> NetworkMeasurement:
    """What the collapse monitor measures of a backbone: the classifier's input (and ``layers``) on the training and
    held-out data, with the module's objective."""
    plan = MeasurementPlan(("network.head", *layers), "network.head", module.network.num_classes)
    return measure_layers(
        module, plan, datamodule.train_eval_dataloader(), datamodule.heldout_dataloader(), module.objective_value
    )


def digits_module(batch_norm: bool = True, **data: int) -> tuple[CollapseModule, DigitsDataModule]:
    """A float64 MLP on a small digits set, wrapped in the training module (mean squared loss)."""
    torch.manual_seed(0)
    datamodule = DigitsDataModule(**({"num_classes": 5, "samples_per_class": 12, "eval_batch_size": 16} | data))
    network = MLP(64, datamodule.num_classes, feature_dim=8, width=32, depth=2, batch_norm=batch_norm).double()
    module = CollapseModule(network, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), loss="mean_squared")
    return module, datamodule


@pytest.mark.parametrize(
    ("network", "inputs"),
    [
        (MLP(64, 10, feature_dim=16), torch.randn(4, 1, 8, 8)),
        (MLP(20, 3, feature_dim=5, depth=1, activation="tanh", batch_norm=True), torch.randn(4, 20)),
        (ConvNet(1, 10, feature_dim=16), torch.randn(4, 1, 8, 8)),
        (ConvNet(1, 10, feature_dim=16), torch.randn(4, 1, 28, 28)),
        (ConvNet(3, 10, feature_dim=16, channels=(8, 16, 32)), torch.randn(4, 3, 32, 32)),
    ],
)
def test_backbone_maps_inputs_to_features_and_logits(network: torch.nn.Module, inputs: torch.Tensor) -> None:
    features = network.forward_features(inputs)
    assert features.shape == (4, network.feature_dim)
    assert network(inputs).shape == (4, network.num_classes)
    assert torch.allclose(network(inputs), network.head(features))
    assert isinstance(network.head, LinearHead)
    assert network.head.weight.shape == (network.num_classes, network.feature_dim)
    assert network.num_replicas == 1


def test_mlp_features_are_the_last_activation() -> None:
    network = MLP(10, 3, feature_dim=6, width=12, depth=3)
    assert (network.forward_features(torch.randn(50, 10)) >= 0).all()
    widths = [layer.out_features for layer in network.body if isinstance(layer, torch.nn.Linear)]
    assert widths == [12, 12, 6]


def test_resnet18_small_names_the_vision_extra_without_torchvision() -> None:
    try:
        import torchvision  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        with pytest.raises(ImportError, match=r"pip install 'ufm-torch\[vision\]'"):
            resnet18_small(10)
    else:
        pytest.skip("torchvision is importable")


def test_measure_backbone_equals_metrics_of_all_training_features() -> None:
    module, datamodule = digits_module()
    values = measure_backbone(module, datamodule).values
    network = module.network.eval()
    with torch.no_grad():
        features = network.forward_features(datamodule.splits.train_inputs.double())
        expected = collapse_metrics(features, datamodule.labels, network.head.weight, network.head.bias)
        logits = network.head(features)
        heldout_logits = network(datamodule.splits.heldout_inputs.double())
    for name, value in expected.items():
        tag = f"strong_collapse/{name}" if name in ("snc1", "snc2", "snc3", "dist_S") else f"collapse/{name}"
        assert torch.allclose(values[tag], value.reshape(1), rtol=1e-12, atol=1e-14), name
    assert torch.allclose(values["train/loss"], module.loss_fn(logits, datamodule.labels).reshape(1), rtol=1e-12)
    accuracy = (logits.argmax(-1) == datamodule.labels).double().mean()
    assert torch.allclose(values["train/accuracy"], accuracy.reshape(1))
    heldout = (heldout_logits.argmax(-1) == datamodule.splits.heldout_labels).double().mean()
    assert torch.allclose(values["heldout/accuracy"], heldout.reshape(1))
    assert all(value.dtype == torch.float64 and value.shape == (1,) for value in values.values())


def test_measure_backbone_uses_eval_mode_and_restores_train_mode() -> None:
    module, datamodule = digits_module()
    module.network.train()
    batch_norm = next(layer for layer in module.network.body if isinstance(layer, torch.nn.BatchNorm1d))
    running_mean = batch_norm.running_mean.clone()
    modes = []
    module.network.body.register_forward_hook(lambda layer, inputs, output: modes.append(layer.training))
    measure_backbone(module, datamodule)
    assert modes and not any(modes)
    assert module.network.training
    assert torch.equal(batch_norm.running_mean, running_mean)


def test_measure_backbone_passes_every_training_sample_through_the_network_once() -> None:
    module, datamodule = digits_module()
    rows = []
    module.network.body.register_forward_hook(lambda layer, inputs, output: rows.append(inputs[0].shape[0]))
    measure_backbone(module, datamodule)
    train_rows = len(datamodule.labels)
    heldout_rows = len(datamodule.splits.heldout_labels)
    assert sum(rows) == train_rows + heldout_rows
    assert len(rows) == -(-train_rows // 16) + -(-heldout_rows // 16)


def test_backbone_and_ufm_are_measured_under_the_same_tags() -> None:
    module, datamodule = digits_module()
    backbone_tags = set(measure_backbone(module, datamodule).values)
    ufm = UnconstrainedFeatures(num_classes=5, samples_per_class=4, feature_dim=6)
    ufm_module = CollapseModule(ufm, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    labels = class_labels(UFMDataModule(5, 4).labels, 20, 5)
    measured = measure_free_features(ufm, labels, "network.head", ufm_module.objective_value)
    ufm_tags = set(measured.values)
    assert backbone_tags == ufm_tags | {"heldout/accuracy"}


def test_a_backbone_is_one_replica_seeded_by_the_global_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    module, _ = digits_module()
    assert [identity[:3] for identity in module.network.replica_identities()] == [(None, 0, 7)]
    assert replica_run_name(None, 0) == "backbone"
    ufm = UnconstrainedFeatures(num_classes=3, samples_per_class=3, feature_dim=4, init_scale=[0.1, 0.01])
    assert [identity[:2] for identity in ufm.replica_identities()] == [(0.1, 0), (0.01, 0)]
    assert replica_run_name(0.1, 0) == "eps=0.1/rep=0"
