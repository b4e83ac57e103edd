"""Property tests (hypothesis): the collapse metrics respect the symmetries their definitions have."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ufm_torch.data import class_major_labels
from ufm_torch.metrics import collapse_metrics
from ufm_torch.models import UnconstrainedFeatures

SCALE_FREE = ["nc1", "nc1_quotient", "nc2_equinorm_means", "nc2_equiangle", "nc2_maxangle", "nc2_etf", "nc4"]

problems = st.tuples(
    st.integers(min_value=2, max_value=5),  # C
    st.integers(min_value=1, max_value=4),  # N
    st.integers(min_value=1, max_value=8),  # p
    st.integers(min_value=0, max_value=2**31 - 1),  # seed
)


def random_point(num_classes: int, samples: int, feature_dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Features, labels, weight and bias drawn from ``seed`` (float64, one replica)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_classes * samples, feature_dim, generator=generator, dtype=torch.float64)
    weight = torch.randn(num_classes, feature_dim, generator=generator, dtype=torch.float64)
    bias = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    return features, class_major_labels(num_classes, samples), weight, bias


def assert_same_metrics(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], names=None) -> None:
    """Equal to 1e-9 relative (NaN where both are NaN)."""
    for name in names or first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-9, atol=1e-12, equal_nan=True, msg=name)


@settings(max_examples=40, deadline=None)
@given(problems, st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_sample_order(problem, rng) -> None:
    features, labels, weight, bias = random_point(*problem)
    order = list(range(labels.numel()))
    rng.shuffle(order)
    permutation = torch.tensor(order)
    assert_same_metrics(
        collapse_metrics(features, labels, weight, bias),
        collapse_metrics(features[permutation], labels[permutation], weight, bias),
    )


@settings(max_examples=40, deadline=None)
@given(problems, st.integers(min_value=0, max_value=2**31 - 1))
def test_metrics_are_invariant_under_rotations_of_feature_space(problem, rotation_seed) -> None:
    features, labels, weight, bias = random_point(*problem)
    generator = torch.Generator().manual_seed(rotation_seed)
    rotation, _ = torch.linalg.qr(
        torch.randn(features.shape[1], features.shape[1], generator=generator, dtype=torch.float64)
    )
    assert_same_metrics(
        collapse_metrics(features, labels, weight, bias),
        collapse_metrics(features @ rotation, labels, weight @ rotation, bias),
    )


@settings(max_examples=40, deadline=None)
@given(problems, st.floats(min_value=-120, max_value=120))
def test_scale_free_metrics_ignore_the_scale_of_the_features(problem, log10_scale) -> None:
    features, labels, weight, bias = random_point(*problem)
    scale = 10.0**log10_scale
    scaled_weight_bias = (weight / scale, bias)
    first = collapse_metrics(features, labels, weight, bias)
    second = collapse_metrics(features * scale, labels, *scaled_weight_bias)
    assert_same_metrics(first, second, [*SCALE_FREE, "nc2_equinorm_classifier", "nc3"])


@settings(max_examples=20, deadline=None)
@given(st.floats(min_value=-12, max_value=3))
def test_ufm_initialisation_gives_finite_metrics_at_every_scale(log10_scale) -> None:
    """H₀ = ε D_H, W₀ = ε D_W, b₀ = 0: scale-free metrics equal those at ε = 1, SNC1 = ‖ε² D_W D_Wᵀ − √N(I − 11ᵀ/C)‖."""
    scale = 10.0**log10_scale
    model = UnconstrainedFeatures(3, 3, 15, init_scale=[1.0, scale], replicas=1, seed=7)
    labels = class_major_labels(3, 3)
    values = collapse_metrics(model.features.detach(), labels, model.head.weight.detach(), model.head.bias.detach())
    for name in [*SCALE_FREE, "nc2_equinorm_classifier", "nc3", "snc2", "snc3"]:
        assert math.isfinite(values[name][1]), name
        assert math.isclose(values[name][1], values[name][0], rel_tol=1e-9, abs_tol=1e-12), name
    direction = model.head.weight.detach()[0]
    target = 3**0.5 * (torch.eye(3, dtype=torch.float64) - 1 / 3)
    expected = (scale**2 * direction @ direction.T - target).norm()
    assert math.isclose(values["snc1"][1], expected, rel_tol=1e-12)
    assert 0 < values["dist_S"][1] <= 1
