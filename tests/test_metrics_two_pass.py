"""The two-pass streaming accumulators give the whole-tensor metrics, across batches, processes and devices, in
O(C·p + C²) numbers per replica."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.test_metrics_streaming import exactly_representable_near_collapse, random_batches
from ufm_torch.metrics import (
    CLASSIFIER_METRIC_NAMES,
    LAYER_METRIC_NAMES,
    CentredMomentsAccumulator,
    ClassMeansAccumulator,
    ClassStatisticsAccumulator,
    CollapseMetricWarning,
    ProjectedScatter,
    class_statistics,
    layer_metrics,
    layer_metrics_from_statistics,
    statistics,
)

DOUBLE = torch.float64


def problem(seed: int, class_sizes=(6, 3, 8, 5, 4), feature_dim=7, replica_shape=(), dtype=DOUBLE):
    """Shuffled unbalanced labels, features with class structure (means far from 0), a classifier near the means."""
    generator = torch.Generator().manual_seed(seed)
    num_classes = len(class_sizes)
    labels = torch.repeat_interleave(torch.arange(num_classes), torch.tensor(class_sizes))
    labels = labels[torch.randperm(labels.numel(), generator=generator)]
    centres = 3 * torch.randn(*replica_shape, num_classes, feature_dim, dtype=DOUBLE, generator=generator) + 5
    noise = torch.randn(*replica_shape, labels.numel(), feature_dim, dtype=DOUBLE, generator=generator)
    features = (centres[..., labels, :] + noise).to(dtype)
    weight = centres - 5 + torch.randn(*replica_shape, num_classes, feature_dim, dtype=DOUBLE, generator=generator)
    bias = torch.randn(*replica_shape, num_classes, dtype=DOUBLE, generator=generator)
    return features, labels, weight, bias


def two_passes(features, labels, batches, weight=None, bias=None, centres=None, **kwargs):
    """Pass 1 and pass 2 over the same batches; the second pass's ``ClassStatistics``."""
    replica_shape = tuple(features.shape[:-2])
    means = ClassMeansAccumulator(int(labels.max()) + 1, features.shape[-1], replica_shape, **kwargs)
    for batch in batches:
        means.update(features[..., batch, :], labels[batch])
    moments = CentredMomentsAccumulator(means.compute(), weight, bias, centres, **kwargs)
    for batch in batches:
        moments.update(features[..., batch, :], labels[batch])
    return moments


def assert_same(values, expected, rtol=1e-10):
    assert list(values) == list(expected)
    for name, value in expected.items():
        assert torch.allclose(values[name], value, rtol=rtol, atol=1e-13, equal_nan=True), (name, values[name], value)


@pytest.mark.parametrize("seed", range(4))
def test_two_passes_over_random_batches_equal_the_whole_tensor(seed: int) -> None:
    replica_shape = ((), (3,), (2, 2), ())[seed]
    dtype = (DOUBLE, DOUBLE, DOUBLE, torch.float32)[seed]
    features, labels, weight, bias = problem(seed, replica_shape=replica_shape, dtype=dtype)
    batches = random_batches(labels.numel(), seed)
    streamed = layer_metrics_from_statistics(two_passes(features, labels, batches, weight, bias).compute(), weight)
    expected = layer_metrics(features, labels, weight, bias)
    accuracy = ((weight.unsqueeze(-3) @ features.double().unsqueeze(-1)).squeeze(-1) + bias.unsqueeze(-2)).argmax(-1)
    expected["accuracy"] = (accuracy == labels).to(DOUBLE).mean(dim=-1)
    assert_same(streamed, expected)


@pytest.mark.parametrize(("class_sizes", "feature_dim"), [((3, 3, 3), 15), ((2, 5, 3, 7), 2), ((4, 1, 6, 2, 3), 40)])
def test_two_passes_without_a_classifier_give_the_layer_metrics(class_sizes, feature_dim) -> None:
    features, labels, _, _ = problem(5, class_sizes, feature_dim, replica_shape=(2,))
    batches = random_batches(labels.numel(), 5)
    streamed = layer_metrics_from_statistics(two_passes(features, labels, batches).compute())
    assert_same(streamed, layer_metrics(features, labels, num_classes=len(class_sizes)))
    assert list(streamed) == list(LAYER_METRIC_NAMES)


def test_blocks_of_rows_inside_batches_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    features, labels, weight, bias = problem(6, replica_shape=(2,))
    expected = layer_metrics_from_statistics(two_passes(features, labels, [torch.arange(26)], weight, bias).compute())
    monkeypatch.setattr(statistics, "ROW_CHUNK", 3)
    blocked = layer_metrics_from_statistics(two_passes(features, labels, [torch.arange(26)], weight, bias).compute())
    assert_same(blocked, expected)


def test_two_pass_statistics_equal_the_whole_tensor_statistics() -> None:
    features, labels, weight, bias = problem(7, replica_shape=(2,))
    streamed = two_passes(features, labels, random_batches(labels.numel(), 7), weight, bias).compute()
    whole = class_statistics(features, labels, 5)
    assert torch.allclose(streamed.means, whole.means, rtol=1e-14, atol=0)
    assert torch.allclose(streamed.class_traces * streamed.scale[:, None] ** 2, whole.class_traces * whole.scale[:, None] ** 2, rtol=1e-12)  # noqa: E501
    assert isinstance(streamed.within_scatter, ProjectedScatter)
    directions = torch.linalg.svd(whole.scaled_means - whole.scaled_means.mean(dim=-2, keepdim=True))[2][..., :4, :]
    assert torch.allclose(
        streamed.within_scatter.quadratic_form(directions), whole.within_scatter.quadratic_form(directions), rtol=1e-12
    )
    assert torch.allclose(streamed.within_scatter.trace(), whole.within_scatter.trace(), rtol=1e-12)


def test_class_traces_of_the_scatter_accumulator_equal_the_whole_tensor() -> None:
    """The p × p accumulator merges per-class sums of squares too, so CDNV works from it."""
    features, labels, weight, _ = problem(8, replica_shape=(2,))
    accumulator = ClassStatisticsAccumulator(5, 7, replica_shape=(2,))
    for batch in random_batches(labels.numel(), 8):
        accumulator.update(features[:, batch], labels[batch])
    merged = layer_metrics_from_statistics(accumulator.compute(), weight)
    expected = layer_metrics(features, labels, weight)
    assert_same(merged, {name: value for name, value in expected.items() if name in merged})
    assert "cdnv" in merged and "nc4" not in merged


def test_states_hold_order_c_p_plus_c_squared_numbers_and_no_p_by_p_matrix() -> None:
    """C = 10 classes, p = 512, 3 replicas: the states and buffers of pass 2 hold O(R(C·p + C²)) numbers,
    none a p × p matrix, and do not grow with the number of samples."""
    num_classes, feature_dim, replicas = 10, 512, 3
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(600) % num_classes
    features = torch.randn(replicas, 600, feature_dim, generator=generator)
    weight = torch.randn(replicas, num_classes, feature_dim, generator=generator)
    sizes = []
    for rows in (60, 600):
        moments = two_passes(features[:, :rows], labels[:rows], [torch.arange(rows)], weight)
        tensors = [*moments.metric_state.values(), *moments.buffers()]
        assert not any(tensor.shape[-2:] == (feature_dim, feature_dim) for tensor in tensors)
        sizes.append(sum(tensor.numel() for tensor in tensors))
    assert sizes[0] == sizes[1]
    bound = replicas * (num_classes * feature_dim + num_classes**2)
    assert sizes[0] <= 6 * bound < feature_dim**2


def test_two_passes_are_exact_at_extreme_feature_scales() -> None:
    features, labels, weight, bias = problem(9)
    batches = random_batches(labels.numel(), 9)
    expected = layer_metrics(features, labels, weight, bias)
    for factor in (2.0**-500, 1e-150, 1e150):  # (W, b) → (W, factor·b) keeps the decisions
        moments = two_passes(features * factor, labels, batches, weight, bias * factor)
        values = layer_metrics_from_statistics(moments.compute())
        for name in ("nc1", "nc1_quotient", "cdnv", "gnc2", "nc2_etf", "nc4"):
            assert torch.allclose(values[name], expected[name], rtol=1e-10), (factor, name)


def test_two_passes_are_accurate_where_sums_of_squares_fail() -> None:
    """|μ| ≈ 1e3, |ε| ≈ 1e-9, all exact in float64 (test_metrics_streaming): NC1 and CDNV to 1e-10."""
    features, labels, means, noise = exactly_representable_near_collapse()
    variances = np.array([np.mean(np.sum(noise[labels == c] ** 2, axis=-1)) for c in range(4)])
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    exact_cdnv = np.mean([(variances[i] + variances[j]) / (2 * np.sum((means[i] - means[j]) ** 2)) for i, j in pairs])
    tensors = torch.tensor(features), torch.tensor(labels)
    for seed in range(3):
        values = layer_metrics_from_statistics(two_passes(*tensors, random_batches(24, seed)).compute())
        assert np.isclose(float(values["cdnv"]), exact_cdnv, rtol=1e-10, atol=0)
        assert np.isclose(float(values["nc1"]), float(layer_metrics(*tensors, num_classes=4)["nc1"]), rtol=1e-10)


def test_held_out_nc4_compares_with_the_given_centres() -> None:
    """Held-out data: pass 1 reads it, the nearest-centre rule uses the training means."""
    train, train_labels, weight, bias = problem(10, replica_shape=(2,))
    heldout, heldout_labels, _, _ = problem(11, class_sizes=(4, 4, 0, 6, 3), replica_shape=(2,))
    heldout = heldout + 0.7 * torch.randn_like(heldout)
    centres = class_statistics(train, train_labels, 5).means
    batches = random_batches(heldout_labels.numel(), 11)
    moments = two_passes(heldout, heldout_labels, batches, weight, bias, centres)
    with pytest.warns(CollapseMetricWarning, match=r"classes \[2\] have no samples"):
        values = layer_metrics_from_statistics(moments.compute(), weight)
    scores = (weight.unsqueeze(1) @ heldout.unsqueeze(-1)).squeeze(-1) + bias.unsqueeze(1)
    nearest = torch.cdist(heldout, centres).argmin(dim=-1)
    expected = (scores.argmax(dim=-1) != nearest).to(DOUBLE).mean(dim=-1)
    assert torch.allclose(values["nc4"], expected, rtol=0, atol=1e-15) and expected.max() > 0
    assert torch.allclose(values["ncc_agreement"], 1 - expected, rtol=0, atol=1e-15)
    assert values["nc1"].isnan().all() and values["cdnv"].isnan().all()  # class 2 has no held-out samples


def simulated_sync(accumulators: list[torch.nn.Module]):
    """``dist_sync_fn`` of a local accumulator that gathers its states with those of ``accumulators``' remote twin."""
    remote = iter([getattr(accumulators[0], name) for name in accumulators[0]._reductions])

    def gather(tensor, group=None):
        return [tensor, next(remote)]

    return {"dist_sync_fn": gather, "distributed_available_fn": lambda: True}


def test_synchronised_accumulators_equal_one_process() -> None:
    """Two processes hold halves of the samples; torchmetrics' own sync (states gathered and summed or maxed)."""
    features, labels, weight, bias = problem(12, replica_shape=(2,))
    expected = layer_metrics(features, labels, weight, bias)
    halves = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(4)).chunk(2)

    remote_means = ClassMeansAccumulator(5, 7, (2,))
    remote_means.update(features[:, halves[1]], labels[halves[1]])
    local_means = ClassMeansAccumulator(5, 7, (2,), **simulated_sync([remote_means]))
    local_means.update(features[:, halves[0]], labels[halves[0]])
    reference = local_means.compute()
    assert reference.counts.tolist() == torch.bincount(labels).double().tolist()

    remote = CentredMomentsAccumulator(reference, weight, bias)
    remote.update(features[:, halves[1]], labels[halves[1]])
    local = CentredMomentsAccumulator(reference, weight, bias, **simulated_sync([remote]))
    local.update(features[:, halves[0]], labels[halves[0]])
    values = layer_metrics_from_statistics(local.compute(), weight)
    values.pop("accuracy")
    assert_same(values, expected)


def test_accumulators_move_with_their_device() -> None:
    """Every state and buffer follows ``.to(device)`` (the meta device stands for an accelerator here)."""
    features, labels, weight, bias = problem(13)
    moments = two_passes(features, labels, [torch.arange(26)], weight, bias, centres=weight)
    means = ClassMeansAccumulator(5, 7)
    for metric in (moments.to("meta"), means.to("meta")):
        tensors = [*metric.metric_state.values(), *metric.buffers()]
        assert tensors and all(tensor.device.type == "meta" for tensor in tensors)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_passes_on_cuda_equal_the_cpu() -> None:
    features, labels, weight, bias = problem(14, replica_shape=(2,), dtype=torch.float32)
    batches = random_batches(labels.numel(), 14)
    expected = layer_metrics_from_statistics(two_passes(features, labels, batches, weight, bias).compute(), weight)
    device = torch.device("cuda")
    moved = [tensor.to(device) for tensor in (features, labels, weight, bias)]
    on_device = layer_metrics_from_statistics(two_passes(*moved[:2], batches, *moved[2:]).compute(), moved[2])
    assert_same({name: value.cpu() for name, value in on_device.items()}, expected)


def test_replica_shape_of_one_and_bfloat16_features_keep_their_shapes() -> None:
    features, labels, weight, bias = problem(15, replica_shape=(1,), dtype=torch.bfloat16)
    moments = two_passes(features, labels, [torch.arange(26)], weight, bias)
    values = layer_metrics_from_statistics(moments.compute(), weight)
    assert all(value.shape == (1,) and value.dtype == DOUBLE for value in values.values())
    expected = layer_metrics(features, labels, weight, bias)
    assert_same({name: values[name] for name in values if name != "accuracy"}, expected)


def test_one_class_gives_nan_with_warning() -> None:
    features, labels = torch.randn(5, 3, dtype=DOUBLE), torch.zeros(5, dtype=torch.long)
    moments = two_passes(features, labels, [torch.arange(5)], torch.randn(1, 3, dtype=DOUBLE))
    with pytest.warns(CollapseMetricWarning, match="C ≥ 2"):
        values = layer_metrics_from_statistics(moments.compute(), torch.randn(1, 3, dtype=DOUBLE))
    assert list(values) == [*LAYER_METRIC_NAMES, *CLASSIFIER_METRIC_NAMES, "accuracy"]
    assert all(math.isnan(float(values[name])) for name in values if name != "accuracy")
    assert float(values["accuracy"]) == 1


def test_an_empty_class_gives_nan_nc4_with_the_pass_means() -> None:
    features, labels, weight, bias = problem(16, class_sizes=(5, 0, 4))
    moments = two_passes(features, labels, [torch.arange(9)], weight, bias)
    with pytest.warns(CollapseMetricWarning) as warned:
        values = layer_metrics_from_statistics(moments.compute(), weight)
    messages = [str(warning.message) for warning in warned]
    assert any("classes [1] have no samples" in message for message in messages)
    assert any("nearest-centre rule is undefined" in message for message in messages)
    assert math.isnan(float(values["nc4"])) and math.isfinite(float(values["accuracy"]))


def test_bad_batches_raise() -> None:
    means = ClassMeansAccumulator(3, 4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values in \[0, 3\]"):
        means.update(torch.randn(4, 4), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="features must have shape"):
        means.update(torch.randn(2, 4, 4), torch.tensor([0, 1, 2, 1]))
    means.update(torch.randn(0, 4), torch.tensor([], dtype=torch.long))  # an empty batch adds nothing
    means.update(torch.randn(4, 4), torch.tensor([0, 1, 2, 1]))
    moments = CentredMomentsAccumulator(means.compute())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        moments.update(torch.randn(2, 4), torch.tensor([-1, 0]))
    moments.update(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="the second pass must read the samples of the first"):
        moments.compute()
