"""Collapse metrics stay exact at extreme scales and under translations (sample order and rotations: the property
tests in test_metrics_properties.py)."""

from __future__ import annotations

import math

import pytest
import torch

from ufm_torch.metrics import nc_metrics, snc_metrics

DOUBLE = torch.float64
FEATURE_SCALE_FREE = ["nc1", "nc1_quotient", "nc2_equinorm_means", "nc2_equiangle", "nc2_maxangle", "nc2_etf"]


def problem(seed: int = 0, num_classes: int = 4, samples_per_class: int = 5, feature_dim: int = 7):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randperm(num_classes * samples_per_class, generator=generator) % num_classes
    centres = torch.randn(2, num_classes, feature_dim, dtype=DOUBLE, generator=generator)
    features = centres[:, labels] + 0.3 * torch.randn(2, labels.numel(), feature_dim, dtype=DOUBLE, generator=generator)
    weight = torch.randn(2, num_classes, feature_dim, dtype=DOUBLE, generator=generator)
    bias = torch.randn(2, num_classes, dtype=DOUBLE, generator=generator)
    return features, labels, weight, bias


def assert_same(first: dict, second: dict, names) -> None:
    for name in names:
        assert torch.allclose(first[name], second[name], rtol=1e-10, atol=1e-13), (name, first[name], second[name])


@pytest.mark.parametrize("factor", [1e-150, 3.7e-5, 2.9e40, 1e150])
def test_scale_free_metrics_are_exact_at_extreme_feature_scales(factor):
    features, labels, weight, bias = problem(2)
    original = nc_metrics(features, labels, weight, bias)
    scaled = nc_metrics(features * factor, labels, weight, bias * factor)
    assert_same(original, scaled, [*FEATURE_SCALE_FREE, "nc3", "nc4", "nc2_equinorm_classifier"])
    rescaled_classifier = nc_metrics(features, labels, weight * factor, bias * factor)
    assert_same(original, rescaled_classifier, ["nc2_equinorm_classifier", "nc3", "nc4"])


@pytest.mark.parametrize("factor", [1e-150, 1e150])
def test_relative_strong_collapse_errors_are_exact_at_extreme_scales(factor):
    features, labels, weight, bias = problem(3)
    original = snc_metrics(features, weight, bias, labels)
    scaled = snc_metrics(features * factor, weight * factor, bias * factor, labels)
    assert_same(original, scaled, ["snc2", "dist_S"])
    assert all(math.isfinite(float(value)) for value in scaled["dist_S"])


def test_relative_errors_stay_finite_when_features_and_classifier_differ_by_300_orders():
    features, labels, weight, bias = problem(4)
    values = snc_metrics(features * 1e-150, weight * 1e150, bias, labels)
    assert torch.isfinite(values["snc2"]).all() and torch.isfinite(values["dist_S"]).all()
    # With H negligible, Π_S keeps V = (W − 1w̄ᵀ)/2, so dist² / ‖W‖² = (‖W‖² + C‖w̄‖²) / (2‖W‖²).
    squared_norm = weight.square().sum(dim=(1, 2))
    mean_row = weight.mean(dim=1)
    expected = ((squared_norm + 4 * mean_row.square().sum(dim=1)) / (2 * squared_norm)).sqrt()
    assert torch.allclose(values["dist_S"], expected, rtol=1e-10)


def test_nc_metrics_are_invariant_under_a_common_translation_of_the_features():
    """h → h + t with b → b − Wt: a large offset must not create a spurious direction of Σ_B."""
    features, labels, weight, bias = problem(5)
    translation = 1e3 * torch.randn(7, dtype=DOUBLE, generator=torch.Generator().manual_seed(6))
    original = nc_metrics(features, labels, weight, bias)
    translated = nc_metrics(features + translation, labels, weight, bias - weight @ translation)
    for name, value in original.items():
        assert torch.allclose(translated[name], value, rtol=1e-9, atol=1e-12), name
