"""Streaming accumulators equal the pure metric functions on the concatenated data, across batches and processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ufm_torch.metrics import (
    ClassStatisticsAccumulator,
    NearestCenterMismatch,
    nc_metrics,
    nc_metrics_from_statistics,
    snc_metrics,
    snc_metrics_from_statistics,
)

DOUBLE = torch.float64


def problem(seed, num_classes=5, samples_per_class=6, feature_dim=8, replica_shape=()):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randperm(num_classes * samples_per_class, generator=generator) % num_classes
    centres = torch.randn(*replica_shape, num_classes, feature_dim, dtype=DOUBLE, generator=generator)
    noise = torch.randn(*replica_shape, labels.numel(), feature_dim, dtype=DOUBLE, generator=generator)
    features = centres[..., labels, :] + 0.4 * noise
    weight = torch.randn(*replica_shape, num_classes, feature_dim, dtype=DOUBLE, generator=generator)
    bias = torch.randn(*replica_shape, num_classes, dtype=DOUBLE, generator=generator)
    return features, labels, weight, bias


def random_batches(num_samples: int, seed: int) -> list[torch.Tensor]:
    """Index batches of random sizes (including size 1) covering a random permutation."""
    rng = np.random.default_rng(seed)
    order = torch.tensor(rng.permutation(num_samples))
    cuts = np.sort(rng.choice(np.arange(1, num_samples), size=rng.integers(2, 8), replace=False))
    return [order[start:stop] for start, stop in zip([0, *cuts], [*cuts, num_samples], strict=True)]


def accumulate(features, labels, batches, **kwargs) -> ClassStatisticsAccumulator:
    accumulator = ClassStatisticsAccumulator(
        int(labels.max()) + 1, features.shape[-1], replica_shape=tuple(features.shape[:-2]), **kwargs
    ).to(features.device)
    for batch in batches:
        accumulator.update(features[..., batch, :], labels[batch])
    return accumulator


def streamed_metrics(accumulator, features, labels, weight, bias, batches) -> dict[str, torch.Tensor]:
    statistics = accumulator.compute()
    mismatch = NearestCenterMismatch(replica_shape=tuple(features.shape[:-2])).to(features.device)
    for batch in batches:
        mismatch.update(features[..., batch, :], weight, bias, statistics.means)
    values = nc_metrics_from_statistics(statistics, weight, bias) | {"nc4": mismatch.compute()}
    return values | snc_metrics_from_statistics(statistics, weight, bias)


def assert_same(values, expected, rtol=1e-10):
    assert set(values) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(values[name], value, rtol=rtol, atol=1e-13), (name, values[name], value)


@pytest.mark.parametrize("seed", range(4))
def test_streaming_over_random_batches_equals_pure_functions(seed):
    features, labels, weight, bias = problem(seed, replica_shape=(2,) if seed % 2 else ())
    batches = random_batches(labels.numel(), seed)
    expected = nc_metrics(features, labels, weight, bias) | snc_metrics(features, weight, bias, labels)
    values = streamed_metrics(accumulate(features, labels, batches), features, labels, weight, bias, batches)
    assert_same(values, expected)


def test_streamed_statistics_equal_whole_data_statistics():
    features, labels, _, _ = problem(7)
    statistics = accumulate(features, labels, random_batches(labels.numel(), 7)).compute()
    for label in range(5):
        assert torch.allclose(statistics.means[label], features[labels == label].mean(dim=0), rtol=1e-13, atol=1e-15)
    centred = features - statistics.means[labels]
    scatter = statistics.within_scatter.matrix * statistics.scale**2
    assert torch.allclose(scatter, centred.T @ centred, rtol=1e-12, atol=1e-14)
    assert statistics.counts.tolist() == [6.0] * 5


def two_process_accumulators(features, labels, **kwargs):
    """Accumulators of the first and second half of the samples, as two processes would hold them."""
    halves = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(3)).chunk(2)
    return [accumulate(features, labels, random_batches_of(half), **kwargs) for half in halves]


def random_batches_of(indices: torch.Tensor) -> list[torch.Tensor]:
    return [indices[batch] for batch in random_batches(indices.numel(), seed=int(indices[0]))]


@pytest.mark.filterwarnings("ignore:The ``compute`` method of metric ClassStatisticsAccumulator was called before")
def test_merging_the_states_of_two_processes_equals_pure_functions():
    features, labels, weight, bias = problem(11, replica_shape=(3,))
    expected = nc_metrics(features, labels, weight, bias) | snc_metrics(features, weight, bias, labels)
    del expected["nc4"]
    first, second = two_process_accumulators(features, labels)
    concatenated = ClassStatisticsAccumulator(5, 8, replica_shape=(3,))
    for name in concatenated._defaults:
        setattr(concatenated, name, torch.cat([getattr(first, name), getattr(second, name)]))
    first.merge_state(second)
    for accumulator in (concatenated, first):
        statistics = accumulator.compute()
        values = nc_metrics_from_statistics(statistics, weight) | snc_metrics_from_statistics(statistics, weight, bias)
        assert_same(values, expected)


def test_synchronised_accumulators_equal_pure_functions():
    """A simulated two-process ``all_gather`` through torchmetrics' own sync (states stacked to (2, 1, …))."""
    features, labels, weight, bias = problem(12)
    expected = nc_metrics(features, labels, weight, bias) | snc_metrics(features, weight, bias, labels)
    halves = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(4)).chunk(2)
    remote = accumulate(features, labels, random_batches_of(halves[1]))
    remote_states = [getattr(remote, name) for name in remote._reductions]
    states = iter(remote_states)

    def gather(tensor, group=None):
        return [tensor, next(states)]

    local = accumulate(
        features, labels, random_batches_of(halves[0]), dist_sync_fn=gather, distributed_available_fn=lambda: True
    )
    statistics = local.compute()
    assert statistics.counts.tolist() == [6.0] * 5
    values = nc_metrics_from_statistics(statistics, weight) | snc_metrics_from_statistics(statistics, weight, bias)
    assert_same(values, {name: value for name, value in expected.items() if name != "nc4"})

    remote_mismatch = NearestCenterMismatch()
    remote_mismatch.update(features[halves[1]], weight, bias, statistics.means)
    mismatch_states = iter([remote_mismatch.mismatches, remote_mismatch.samples])
    local_mismatch = NearestCenterMismatch(
        dist_sync_fn=lambda tensor, group=None: [tensor, next(mismatch_states)],
        distributed_available_fn=lambda: True,
    )
    local_mismatch.update(features[halves[0]], weight, bias, statistics.means)
    assert torch.allclose(local_mismatch.compute(), expected["nc4"], rtol=0, atol=1e-15)


def exactly_representable_near_collapse(num_classes=4, samples_per_class=6, feature_dim=5, seed=0):
    """Features μ_c + ε_i with |μ| ≈ 1e3 and |ε| ≈ 1e-9, all exact in float64, Σ_{i∈c} ε_i = 0 exactly.

    Means are multiples of 2⁻³⁰ and noise multiples of 2⁻⁴² below 2⁻³⁰, so h = μ + ε needs < 53 bits.
    """
    rng = np.random.default_rng(seed)
    means = np.round(rng.uniform(500, 1500, (num_classes, feature_dim)) * 2.0**30) / 2.0**30
    half = rng.integers(-(2**12), 2**12, (num_classes, samples_per_class // 2, feature_dim))
    noise = np.concatenate([half, -half], axis=1).reshape(-1, feature_dim) * 2.0**-42
    labels = np.repeat(np.arange(num_classes), samples_per_class)
    features = means[labels] + noise
    assert np.array_equal(features - means[labels], noise)
    return features, labels, means, noise


def test_near_collapse_statistics_are_accurate_where_sums_of_squares_fail():
    features, labels, means, noise = exactly_representable_near_collapse()
    num_classes, num_samples = means.shape[0], labels.size
    centred_means = means - means.mean(axis=0)
    within = noise.T @ noise / num_samples
    between = centred_means.T @ centred_means / num_classes
    exact_nc1 = np.trace(within @ np.linalg.pinv(between)) / num_classes
    exact_quotient = np.trace(within) / np.trace(between)

    naive_within = features.T @ features / num_samples - means.T @ means / num_classes
    assert abs(np.trace(naive_within) / np.trace(within) - 1) > 1e-3

    tensors = torch.tensor(features), torch.tensor(labels)
    weight, bias = torch.tensor(means), torch.zeros(num_classes, dtype=DOUBLE)
    pure = nc_metrics(*tensors, weight, bias)
    for seed in range(3):
        accumulator = accumulate(*tensors, random_batches(num_samples, seed))
        streamed = nc_metrics_from_statistics(accumulator.compute(), weight)
        for values in (pure, streamed):
            assert np.isclose(float(values["nc1"]), exact_nc1, rtol=1e-10, atol=0)
            assert np.isclose(float(values["nc1_quotient"]), exact_quotient, rtol=1e-10, atol=0)


def test_streaming_is_exact_at_extreme_feature_scales():
    features, labels, weight, bias = problem(13)
    batches = random_batches(labels.numel(), 13)
    expected = nc_metrics(features, labels, weight, bias)
    for factor in (1e-150, 1e150):
        scaled = features * factor
        statistics = accumulate(scaled, labels, batches).compute()
        values = nc_metrics_from_statistics(statistics, weight)
        assert_same(values, {name: expected[name] for name in values})


def test_accumulator_rejects_features_of_the_wrong_shape():
    accumulator = ClassStatisticsAccumulator(3, 4)
    with pytest.raises(ValueError, match="features must have shape"):
        accumulator.update(torch.randn(2, 5, 4), torch.tensor([0, 1, 2, 0, 1]))


def test_forward_returns_batch_statistics_and_keeps_accumulating():
    features, labels, weight, _ = problem(14)
    accumulator = ClassStatisticsAccumulator(5, 8)
    batch_statistics = accumulator(features[:12], labels[:12])
    assert batch_statistics.counts.sum() == 12
    accumulator(features[12:20], labels[12:20])
    accumulator.update(features[20:], labels[20:])
    expected = nc_metrics(features, labels, weight, torch.zeros(5, dtype=DOUBLE))
    values = nc_metrics_from_statistics(accumulator.compute(), weight)
    assert_same(values, {name: expected[name] for name in values})
