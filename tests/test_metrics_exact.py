"""Collapse metrics at points where their values are known exactly, and on degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ufm_torch.metrics import (
    NC_METRIC_NAMES,
    SNC_METRIC_NAMES,
    ClassStatisticsAccumulator,
    CollapseMetricWarning,
    collapse_metrics,
    nc_metrics,
    nc_metrics_from_statistics,
    project_onto_S,
    snc_metrics,
    snc_metrics_from_statistics,
)
from ufm_torch.objectives.ufm import ufm_risk

DOUBLE = torch.float64


def strong_collapse_point(
    num_classes: int, samples_per_class: int, feature_dim: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(features, labels, weight, bias)`` with WWᵀ = √N(I − 11ᵀ/C), H = (1/√N)(W ⊗ 1_N)ᵀ, b = 1/C."""
    rng = np.random.default_rng(seed)
    centring = np.eye(num_classes) - 1 / num_classes
    eigenvalues, eigenvectors = np.linalg.eigh(centring)
    complement = eigenvectors[:, eigenvalues > 0.5]
    embedding, _ = np.linalg.qr(rng.standard_normal((feature_dim, feature_dim)))
    weight = samples_per_class**0.25 * complement @ embedding[: num_classes - 1]
    labels = np.repeat(np.arange(num_classes), samples_per_class)
    features = weight[labels] / samples_per_class**0.5
    bias = np.full(num_classes, 1 / num_classes)
    return (
        torch.tensor(features),
        torch.tensor(labels),
        torch.tensor(weight),
        torch.tensor(bias),
    )


@pytest.mark.parametrize(("num_classes", "samples_per_class", "feature_dim"), [(3, 3, 15), (5, 4, 4), (10, 2, 64)])
def test_strong_collapse_point_has_zero_errors(num_classes, samples_per_class, feature_dim):
    features, labels, weight, bias = strong_collapse_point(num_classes, samples_per_class, feature_dim, seed=1)
    assert torch.allclose(
        weight @ weight.T,
        samples_per_class**0.5 * (torch.eye(num_classes, dtype=DOUBLE) - 1 / num_classes),
        atol=1e-13,
    )
    values = collapse_metrics(features, labels, weight, bias)
    assert set(values) == set(NC_METRIC_NAMES) | set(SNC_METRIC_NAMES)
    for name, value in values.items():
        assert value.dtype == DOUBLE and value.shape == ()
        assert abs(float(value)) < 1e-12, name
    assert abs(float(ufm_risk(features, weight, bias, labels))) < 1e-24


def test_strong_collapse_replicas_have_zero_errors_per_replica():
    points = [strong_collapse_point(4, 3, 6, seed) for seed in range(3)]
    features, weight, bias = (torch.stack([point[index] for point in points]) for index in (0, 2, 3))
    values = collapse_metrics(features, points[0][1], weight, bias)
    for name, value in values.items():
        assert value.shape == (3,)
        assert value.abs().max() < 1e-12, name


def test_projection_fixes_strong_collapse_point():
    features, labels, weight, bias = strong_collapse_point(4, 3, 7, seed=2)
    projected = project_onto_S(features, weight, bias, labels)
    for before, after in zip((features, weight, bias), projected, strict=True):
        assert torch.allclose(before, after, atol=1e-14)


def test_projection_lands_in_S_and_is_idempotent():
    generator = torch.Generator().manual_seed(0)
    num_classes, samples_per_class, feature_dim = 4, 3, 5
    labels = torch.randperm(num_classes * samples_per_class, generator=generator) % num_classes
    features = torch.randn(2, 12, feature_dim, dtype=DOUBLE, generator=generator)
    weight = torch.randn(2, num_classes, feature_dim, dtype=DOUBLE, generator=generator)
    bias = torch.randn(2, num_classes, dtype=DOUBLE, generator=generator)
    features_s, weight_s, bias_s = project_onto_S(features, weight, bias, labels)
    assert torch.allclose(features_s, weight_s[:, labels] / samples_per_class**0.5, atol=1e-14)
    assert weight_s.sum(dim=1).abs().max() < 1e-14
    assert torch.allclose(bias_s, bias_s[:, :1].expand_as(bias_s), atol=0)
    again = project_onto_S(features_s, weight_s, bias_s, labels)
    for first, second in zip((features_s, weight_s, bias_s), again, strict=True):
        assert torch.allclose(first, second, atol=1e-14)


def test_projection_residual_is_orthogonal_to_S():
    generator = torch.Generator().manual_seed(1)
    num_classes, samples_per_class, feature_dim = 3, 4, 6
    labels = torch.arange(num_classes).repeat(samples_per_class)
    features = torch.randn(12, feature_dim, dtype=DOUBLE, generator=generator)
    weight = torch.randn(num_classes, feature_dim, dtype=DOUBLE, generator=generator)
    bias = torch.randn(num_classes, dtype=DOUBLE, generator=generator)
    projected = project_onto_S(features, weight, bias, labels)
    residual = [original - image for original, image in zip((features, weight, bias), projected, strict=True)]
    for _ in range(5):
        element_weight = torch.randn(num_classes, feature_dim, dtype=DOUBLE, generator=generator)
        element_weight -= element_weight.mean(dim=0)
        element = (element_weight[labels] / samples_per_class**0.5, element_weight, torch.full((3,), 0.7, dtype=DOUBLE))
        inner = sum((left * right).sum() for left, right in zip(residual, element, strict=True))
        assert abs(float(inner)) < 1e-12


def two_class_line(spread: float) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D features −1 ± a (class 0) and 1 ± a (class 1): μ = ∓1, μ_G = 0, Σ_W = a², Σ_B = 1."""
    features = torch.tensor([[-1 - spread], [-1 + spread], [1 - spread], [1 + spread]], dtype=DOUBLE)
    return features, torch.tensor([0, 0, 1, 1])


def test_nc1_of_two_classes_on_a_line_is_within_over_twice_between():
    features, labels = two_class_line(0.5)
    values = nc_metrics(features, labels, torch.tensor([[-1.0], [1.0]], dtype=DOUBLE), torch.zeros(2, dtype=DOUBLE))
    assert math.isclose(float(values["nc1"]), 0.25 / 2, rel_tol=1e-14)
    assert math.isclose(float(values["nc1_quotient"]), 0.25, rel_tol=1e-14)
    assert float(values["nc2_equinorm_means"]) == 0
    assert float(values["nc2_etf"]) < 1e-15
    assert float(values["nc3"]) < 1e-15
    assert float(values["nc4"]) == 0


def test_nc2_of_square_means_matches_hand_computation():
    """Means ±e1, ±e2 (C = 4): off-diagonal cosines eight 0s and four −1s."""
    means = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]], dtype=DOUBLE)
    labels = torch.arange(4).repeat_interleave(2)
    offsets = torch.tensor([[0.1, 0.2], [-0.1, -0.2]], dtype=DOUBLE).repeat(4, 1)
    weight = torch.tensor([[1.0, 0], [0, 2], [-1, 0], [0, -2]], dtype=DOUBLE)
    values = nc_metrics(means[labels] + offsets, labels, weight, torch.zeros(4, dtype=DOUBLE))
    assert math.isclose(float(values["nc2_equiangle"]), math.sqrt(2) / 3, rel_tol=1e-14)
    assert math.isclose(float(values["nc2_maxangle"]), 4 / 9, rel_tol=1e-14)
    assert math.isclose(float(values["nc2_etf"]), math.sqrt(8 / 3), rel_tol=1e-14)
    assert float(values["nc2_equinorm_means"]) < 1e-15
    assert math.isclose(float(values["nc2_equinorm_classifier"]), 1 / 3, rel_tol=1e-14)


def test_nc4_counts_samples_where_classifier_and_nearest_center_disagree():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    features = torch.tensor([[-1.0], [-2.0], [0.45], [1.0], [2.0], [0.4]], dtype=DOUBLE)
    weight = torch.tensor([[-1.0], [1.0]], dtype=DOUBLE)
    bias = torch.tensor([0.0, -1.0], dtype=DOUBLE)
    values = nc_metrics(features, labels, weight, bias)
    # Centres −0.85 and 17/15 (midpoint ≈ 0.14); the classifier (−h, h − 1) switches at h = 1/2.
    # Nearest centre: 0, 0, 1, 1, 1, 1; classifier: 0, 0, 0, 1, 1, 0: two disagreements.
    assert math.isclose(float(values["nc4"]), 2 / 6, rel_tol=1e-15)


def test_snc_errors_of_zero_classifier_match_formulas():
    num_classes, samples_per_class = 3, 4
    labels = torch.arange(num_classes).repeat_interleave(samples_per_class)
    features = torch.randn(12, 5, dtype=DOUBLE)
    bias = torch.tensor([1.0, 0.0, 0.0], dtype=DOUBLE)
    values = snc_metrics(features, torch.zeros(num_classes, 5, dtype=DOUBLE), bias, labels)
    assert math.isclose(float(values["snc1"]), math.sqrt(samples_per_class * (num_classes - 1)), rel_tol=1e-14)
    assert math.isclose(float(values["snc2"]), 1.0, rel_tol=1e-14)
    assert math.isclose(float(values["snc3"]), math.sqrt(4 / 9 + 2 / 9), rel_tol=1e-14)


def test_dist_S_of_bias_only_point_is_its_spread_around_the_mean():
    labels = torch.arange(3).repeat(2)
    zeros = torch.zeros(6, 4, dtype=DOUBLE)
    with pytest.warns(CollapseMetricWarning, match="snc2"):
        values = snc_metrics(zeros, torch.zeros(3, 4, dtype=DOUBLE), torch.tensor([1.0, 0, 0], dtype=DOUBLE), labels)
    assert math.isclose(float(values["dist_S"]), math.sqrt(2 / 3), rel_tol=1e-14)
    with pytest.warns(CollapseMetricWarning, match="snc2"):
        values = snc_metrics(zeros, torch.zeros(3, 4, dtype=DOUBLE), torch.full((3,), 2.0, dtype=DOUBLE), labels)
    assert float(values["dist_S"]) == 0


def test_metrics_are_float64_on_the_input_device_for_float32_input():
    features, labels, weight, bias = strong_collapse_point(3, 2, 4, seed=0)
    values = collapse_metrics(features.float(), labels, weight.float(), bias.float())
    assert all(value.dtype == DOUBLE and value.device == features.device for value in values.values())
    assert max(float(value.abs()) for value in values.values()) < 1e-6


def test_class_without_samples_gives_nan_with_warning():
    labels = torch.tensor([0, 0, 1, 1])
    features = torch.randn(4, 3, dtype=DOUBLE)
    weight = torch.randn(3, 3, dtype=DOUBLE)
    with pytest.warns(CollapseMetricWarning, match=r"classes \[2\] have no samples"):
        values = nc_metrics(features, labels, weight, torch.zeros(3, dtype=DOUBLE))
    assert all(math.isnan(float(values[name])) for name in NC_METRIC_NAMES if name != "nc2_equinorm_classifier")
    assert math.isfinite(float(values["nc2_equinorm_classifier"]))
    with pytest.raises(ValueError, match="balanced classes"):
        snc_metrics(features, weight, torch.zeros(3, dtype=DOUBLE), labels)


def test_equal_features_give_nan_with_warning():
    labels = torch.arange(3).repeat(3)
    features = torch.full((9, 4), 0.1, dtype=DOUBLE)
    weight = torch.randn(3, 4, dtype=DOUBLE)
    with pytest.warns(CollapseMetricWarning, match="class means coincide"):
        values = nc_metrics(features, labels, weight, torch.zeros(3, dtype=DOUBLE))
    for name in ("nc1", "nc1_quotient", "nc2_equinorm_means", "nc2_equiangle", "nc2_etf", "nc3"):
        assert math.isnan(float(values[name])), name


def test_nan_replicas_are_flagged_per_replica():
    labels = torch.arange(3).repeat(3)
    features = torch.randn(2, 9, 4, dtype=DOUBLE)
    features[1] = 1.0
    with pytest.warns(CollapseMetricWarning, match="for 1 of 2 replicas"):
        values = nc_metrics(features, labels, torch.randn(2, 3, 4, dtype=DOUBLE), torch.zeros(2, 3, dtype=DOUBLE))
    assert math.isfinite(float(values["nc1"][0])) and math.isnan(float(values["nc1"][1]))


def test_single_class_gives_nan_nc_metrics_with_warning():
    labels = torch.zeros(4, dtype=torch.long)
    features = torch.randn(4, 3, dtype=DOUBLE)
    weight, bias = torch.randn(1, 3, dtype=DOUBLE), torch.ones(1, dtype=DOUBLE)
    with pytest.warns(CollapseMetricWarning, match="C ≥ 2"):
        values = collapse_metrics(features, labels, weight, bias)
    assert all(math.isnan(float(values[name])) for name in NC_METRIC_NAMES)
    assert all(math.isfinite(float(values[name])) for name in SNC_METRIC_NAMES)


def test_zero_features_give_nan_snc2_with_warning():
    labels = torch.arange(2).repeat(2)
    with pytest.warns(CollapseMetricWarning, match=r"‖H‖_F = 0"):
        values = snc_metrics(torch.zeros(4, 3, dtype=DOUBLE), torch.randn(2, 3, dtype=DOUBLE), torch.ones(2), labels)
    assert math.isnan(float(values["snc2"])) and math.isfinite(float(values["dist_S"]))
    with pytest.warns(CollapseMetricWarning) as warned:
        values = snc_metrics(torch.zeros(4, 3), torch.zeros(2, 3), torch.zeros(2), labels)
    assert any("dist_S set to NaN: Z = (H, W, b) = 0" in str(warning.message) for warning in warned)
    assert math.isnan(float(values["dist_S"]))


def test_non_finite_features_give_nan_with_warning():
    labels = torch.arange(3).repeat(2)
    features = torch.randn(6, 4, dtype=DOUBLE)
    features[2, 1] = torch.inf
    with pytest.warns(CollapseMetricWarning, match="not finite"):
        values = nc_metrics(features, labels, torch.randn(3, 4, dtype=DOUBLE), torch.zeros(3, dtype=DOUBLE))
    assert all(math.isnan(float(values[name])) for name in NC_METRIC_NAMES if name != "nc2_equinorm_classifier")


def test_unbalanced_labels_raise_in_strong_collapse_metrics():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    features, weight, bias = torch.randn(6, 3), torch.randn(3, 3), torch.randn(3)
    with pytest.raises(ValueError, match="between 1 and 3 samples per class"):
        snc_metrics(features, weight, bias, labels)
    with pytest.raises(ValueError, match="balanced"):
        project_onto_S(features, weight, bias, labels)
    with pytest.raises(ValueError, match="balanced"):
        collapse_metrics(features, labels, weight, bias)
    accumulator = ClassStatisticsAccumulator(3, 3)
    accumulator.update(features, labels)
    with pytest.raises(ValueError, match="balanced"):
        snc_metrics_from_statistics(accumulator.compute(), weight, bias)
    assert math.isfinite(float(nc_metrics_from_statistics(accumulator.compute(), weight)["nc1"]))


def test_labels_outside_the_classes_raise():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        nc_metrics(torch.randn(3, 2), torch.tensor([0, 1, 2]), torch.randn(2, 2), torch.zeros(2))
    with pytest.raises(ValueError, match="shape"):
        nc_metrics(torch.randn(3, 2), torch.tensor([0, 1]), torch.randn(2, 2), torch.zeros(2))


def test_metrics_of_trainable_tensors_do_not_track_gradients():
    features, labels, weight, bias = (tensor.clone() for tensor in strong_collapse_point(3, 2, 4, seed=3))
    for tensor in (features, weight, bias):
        tensor.requires_grad_(True)
    values = collapse_metrics(features, labels, weight, bias)
    projected = project_onto_S(features, weight, bias, labels)
    assert not any(tensor.requires_grad for tensor in [*values.values(), *projected])
