"""Imbalanced classes and the bias-free UFM: one function sizes the classes, the model and the data agree, the
balanced model is unchanged, and SNC metrics are undefined (null) on unbalanced classes while NC1–NC4 are numbers."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import brute_force_nc, compose_train, quiet_trainer
from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
from ufm_torch.data import UFMDataModule, class_major_labels, class_sizes
from ufm_torch.metrics import nc_metrics, snc_metrics
from ufm_torch.metrics.network import strong_collapse_values
from ufm_torch.metrics.statistics import class_statistics
from ufm_torch.metrics.strong_collapse import SNC_METRIC_NAMES
from ufm_torch.metrics.tags import metric_tag
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.run_folder.metrics_log import MetricsLog, read_records
from ufm_torch.training import fused_descent
from ufm_torch.training.module import CollapseModule

SNC_TAGS = [metric_tag(name) for name in SNC_METRIC_NAMES]
NC_TAGS = [metric_tag(name) for name in ("nc1", "nc1_quotient", "nc2_etf", "nc3", "nc4")]


# --- class_sizes ------------------------------------------------------------------------------------------------------


def test_an_explicit_list_gives_those_sizes() -> None:
    assert class_sizes(3, [5, 3, 1]) == [5, 3, 1]
    assert class_sizes(3, OmegaConf.create([5, 3, 1])) == [5, 3, 1]
    assert class_sizes(2, (np.int64(4), 2)) == [4, 2]


def test_step_imbalance_keeps_the_majority_and_shrinks_the_last_classes() -> None:
    assert class_sizes(4, 10, imbalance_ratio=4.0) == [10, 10, 3, 3]  # 10/4 = 2.5 rounds up; m = C // 2
    assert class_sizes(5, 10, imbalance_ratio=2) == [10, 10, 10, 5, 5]
    assert class_sizes(4, 10, imbalance_ratio=4.0, minority_classes=1) == [10, 10, 10, 3]
    assert class_sizes(3, 10, imbalance_ratio=3.0, minority_classes=3) == [3, 3, 3]
    assert class_sizes(3, 10, imbalance_ratio=1e6) == [10, 10, 1]  # never an empty class
    assert class_sizes(3, 10, imbalance_ratio=4.0, minority_classes=0) == [10, 10, 10]


def test_ratio_one_is_balanced() -> None:
    assert class_sizes(4, 7) == [7] * 4
    assert class_sizes(4, 7, imbalance_ratio=1.0, minority_classes=2) == [7] * 4


@pytest.mark.parametrize(
    ("arguments", "key"),
    [
        ((3, [2, 2]), "data.samples_per_class"),
        ((3, [2, 0, 2]), "data.samples_per_class"),
        ((3, [2, 1.5, 2]), "data.samples_per_class"),
        ((3, 0), "data.samples_per_class"),
        ((3, 2.0), "data.samples_per_class"),
        ((3, True), "data.samples_per_class"),
        ((3, "3"), "data.samples_per_class"),
        ((0, 3), "data.num_classes"),
        ((3, 3, 0.5), "data.imbalance_ratio"),
        ((3, 3, math.nan), "data.imbalance_ratio"),
        ((3, 3, 2.0, 4), "data.minority_classes"),
        ((3, 3, 2.0, -1), "data.minority_classes"),
        ((3, [3, 2, 1], 2.0), "data.imbalance_ratio"),
        ((3, [3, 2, 1], 1.0, 1), "data.minority_classes"),
    ],
)
def test_a_bad_size_raises_naming_its_key(arguments: tuple, key: str) -> None:
    num_classes, samples_per_class, *rest = arguments
    keys = dict(zip(("imbalance_ratio", "minority_classes"), rest, strict=False))
    pattern = key.replace(".", r"\.")
    with pytest.raises(ValueError, match=pattern):
        class_sizes(*arguments)
    with pytest.raises(ValueError, match=pattern):
        UFMDataModule(num_classes, samples_per_class, **keys)
    with pytest.raises(ValueError, match=pattern):
        UnconstrainedFeatures(num_classes, samples_per_class, 4, **keys)


# --- the model and the data module agree ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sizes", [{"samples_per_class": [5, 3, 1]}, {"samples_per_class": 6, "imbalance_ratio": 3.0},
              {"samples_per_class": 6, "imbalance_ratio": 3.0, "minority_classes": 2}, {"samples_per_class": 4}],
)  # fmt: skip
def test_model_and_data_module_agree_on_sizes_and_labels(sizes: dict) -> None:
    model = UnconstrainedFeatures(3, feature_dim=5, init_scale=[1.0, 0.1], **sizes)
    data = UFMDataModule(3, **sizes)
    expected = class_sizes(3, **sizes)
    assert model.class_sizes == data.class_sizes == expected
    assert model.is_balanced == data.is_balanced == (len(set(expected)) == 1)
    assert model.features.shape == (2, sum(expected), 5)
    assert data.labels.tolist() == [k for k, size in enumerate(expected) for _ in range(size)]  # class-major
    assert torch.equal(data.indices, torch.arange(sum(expected)))
    norms = model.features.detach().flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.tensor([1.0, 0.1], dtype=torch.float64), rtol=1e-14, atol=0)
    assert torch.all(model.head.bias == 0)


def test_the_configs_interpolate_the_same_sizes_into_the_model() -> None:
    overrides = [
        ["data.samples_per_class=[4,2,1]"],
        ["data.samples_per_class=8", "data.imbalance_ratio=4", "data.minority_classes=1"],
        ["model.bias=false"],
    ]
    for extra in overrides:
        cfg = compose_train(*extra)
        model, data = instantiate(cfg.model), instantiate(cfg.data)
        assert model.class_sizes == data.class_sizes
        assert model.features.shape[-2] == data.labels.numel()
        assert model.head.has_bias == ("model.bias=false" not in extra)


def test_minibatches_of_an_imbalanced_set_cover_every_sample_once() -> None:
    data = UFMDataModule(3, [5, 3, 1], batch_size=4)
    indices, labels = map(torch.cat, zip(*data.train_dataloader(), strict=True))
    assert sorted(indices.tolist()) == list(range(9))
    assert torch.equal(labels, data.labels[indices])
    full = UFMDataModule(3, [5, 3, 1])
    (batch,) = list(full.train_dataloader())[:1]
    assert torch.equal(batch[0], torch.arange(9)) and torch.equal(batch[1], full.labels)


# --- the balanced model is unchanged ----------------------------------------------------------------------------------


def test_balanced_model_draws_the_numbers_it_drew_before_class_sizes() -> None:
    """Snapshot of ``UnconstrainedFeatures(3, 4, 5, init_scale=[1.0, 1e-2], replicas=2, seed=0)`` taken from the code
    before imbalanced classes existed."""
    model = UnconstrainedFeatures(3, 4, 5, init_scale=[1.0, 1e-2], replicas=2, seed=0)
    features, weight = model.features.detach(), model.head.weight.detach()
    assert features.shape == (4, 12, 5) and model.samples_per_class == 4 and model.is_balanced
    assert features[0, 0, :3].tolist() == [0.03184141079669398, 0.11599417099156718, 0.027957312973514146]
    assert features[3, 11, -1].item() == 0.0004324833973400872
    assert weight[0, 0, :3].tolist() == [-0.30880098029145825, 0.15002889290945134, -0.08320202371622558]
    assert weight[3, 2, -1].item() == 0.0017189991206069783
    assert features.sum().item() == pytest.approx(0.22938612037980421, rel=1e-14)
    assert weight.sum().item() == pytest.approx(0.8652722502502703, rel=1e-14)
    as_list = UnconstrainedFeatures(3, [4, 4, 4], 5, init_scale=[1.0, 1e-2], replicas=2, seed=0)
    assert torch.equal(as_list.features, model.features) and torch.equal(as_list.head.weight, model.head.weight)
    assert torch.equal(class_major_labels(3, 4), torch.arange(3).repeat_interleave(4))
    assert UFMDataModule(3, 4).samples_per_class == 4


# --- the bias-free UFM ------------------------------------------------------------------------------------------------


def test_bias_free_model_has_no_bias_parameter() -> None:
    model = UnconstrainedFeatures(3, [4, 2, 1], 6, bias=False)
    assert [name for name, _ in model.named_parameters()] == ["features", "head.weight"]
    assert not model.head.has_bias and torch.equal(model.head.bias, torch.zeros(1, 3, dtype=torch.float64))
    assert "head.bias" in model.state_dict()


OPTIMIZERS = {
    "gradient_descent": functools.partial(torch.optim.SGD, lr=0.05),
    "adam": functools.partial(torch.optim.Adam, lr=1e-2),
}


@pytest.mark.parametrize("folded_bias_limit", [fused_descent.FOLDED_BIAS_LIMIT, 0], ids=["folded", "in_place"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_bias_free_model_trains_with_its_bias_at_zero(
    optimizer: str, folded_bias_limit: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fused_descent, "FOLDED_BIAS_LIMIT", folded_bias_limit)
    model = UnconstrainedFeatures(3, [4, 3, 2], 15, init_scale=[0.5, 0.1], bias=False, seed=1)
    data = UFMDataModule(3, [4, 3, 2])
    indices = torch.arange(9)
    targets = torch.nn.functional.one_hot(data.labels, 3).to(torch.float64)
    before = 0.5 * (model(indices) - targets).square().sum(dim=(-1, -2)).detach()
    quiet_trainer(tmp_path, 100).fit(CollapseModule(model, OPTIMIZERS[optimizer], fused_steps=64), datamodule=data)
    after = 0.5 * (model(indices) - targets).square().sum(dim=(-1, -2)).detach()
    assert torch.all(after < 0.5 * before)
    assert torch.equal(model.head.bias, torch.zeros_like(model.head.bias)), "the bias-free UFM's bias moved"


# --- metrics on unbalanced classes ------------------------------------------------------------------------------------


def test_nc_metrics_follow_their_definitions_on_unbalanced_classes() -> None:
    generator = torch.Generator().manual_seed(5)
    labels = class_major_labels(4, [9, 5, 2, 1])
    features = torch.randn(17, 6, generator=generator, dtype=torch.float64) + 3 * torch.randn(
        4, 6, generator=generator, dtype=torch.float64
    )[labels]
    weight = torch.randn(4, 6, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    values = nc_metrics(features, labels, weight, bias)
    expected = brute_force_nc(features.numpy(), labels.numpy(), weight.numpy(), bias.numpy())
    for name, value in expected.items():
        assert values[name].item() == pytest.approx(value, rel=1e-10, abs=1e-15), name


def test_snc_metrics_are_undefined_on_unbalanced_classes() -> None:
    model = UnconstrainedFeatures(3, [5, 3, 1], 6, init_scale=[1.0, 0.1], replicas=2)
    labels = class_major_labels(3, [5, 3, 1])
    features, weight, bias = model.features.detach(), model.head.weight.detach(), model.head.bias.detach()
    with pytest.raises(ValueError, match="balanced"):
        snc_metrics(features, weight, bias, labels)  # the pure function keeps its contract
    values = strong_collapse_values(class_statistics(features, labels, 3), weight, bias)
    assert set(values) == set(SNC_METRIC_NAMES)
    for value in values.values():
        assert value.shape == (4,) and value.dtype == torch.float64 and value.isnan().all()
    balanced = UnconstrainedFeatures(3, 3, 6, init_scale=[1.0, 0.1])
    labels, weight, bias = class_major_labels(3, 3), balanced.head.weight.detach(), balanced.head.bias.detach()
    statistics = class_statistics(balanced.features.detach(), labels, 3)
    reference = snc_metrics(balanced.features.detach(), weight, bias, labels)
    for name, value in strong_collapse_values(statistics, weight, bias).items():
        assert torch.equal(value, reference[name])


def test_metrics_log_writes_undefined_values_as_null(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.open(0, records_per_evaluation=1)
    log.write([{"step": 0, "replica": 0, "init_scale": 0.1, "collapse/nc1": 0.5, "strong_collapse/snc1": math.nan}])
    with pytest.raises(ValueError, match="strong_collapse/snc2=inf"):
        log.write([{"step": 1, "replica": 0, "strong_collapse/snc2": math.inf}])
    log.close()
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert "NaN" not in line and json.loads(line)["strong_collapse/snc1"] is None
    assert read_records(tmp_path / "metrics.jsonl")[0]["strong_collapse/snc1"] is None


def test_imbalanced_run_logs_snc_as_null_and_nc_as_numbers(tmp_path: Path) -> None:
    sizes = [6, 3, 1]
    model = UnconstrainedFeatures(3, sizes, 15, init_scale=[1e-1, 1e-2], replicas=2, seed=0)
    monitor = CollapseMonitor(output_dir=str(tmp_path), points_per_decade=3)
    trainer = quiet_trainer(tmp_path, 200, callbacks=[monitor])
    trainer.fit(CollapseModule(model, functools.partial(torch.optim.SGD, lr=0.05)), datamodule=UFMDataModule(3, sizes))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert {record["step"] for record in records} >= {0, 200} and len(records) % 4 == 0
    assert not any("NaN" in line for line in lines)
    for record in records:
        assert all(record[tag] is None for tag in SNC_TAGS), record
        assert all(isinstance(record[tag], float) and math.isfinite(record[tag]) for tag in NC_TAGS), record
        assert math.isfinite(record["train/loss"]) and math.isfinite(record["train/accuracy"])
    final = [record for record in records if record["step"] == 200]
    assert all(record["train/accuracy"] == 1.0 for record in final)
