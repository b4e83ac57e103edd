"""The field's metric suite (CDNV, GNC2, UNC3, nearest-centre agreement) agrees with brute force, known values and
the public rhubarbwu/neural-collapse formulas, and is NaN with a warning where undefined."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.test_metrics_bruteforce import brute_force_nc
from ufm_torch.metrics import (
    CLASSIFIER_METRIC_NAMES,
    LAYER_METRIC_NAMES,
    CollapseMetricWarning,
    cdnv,
    class_statistics,
    gnc2,
    layer_metrics,
    layer_metrics_from_statistics,
    layer_metrics_with_statistics,
    nc_metrics,
    unc3,
)

DOUBLE = torch.float64

SIZES = [
    (3, [3, 3, 3], 15),  # the paper's Figure 1 size
    (4, [2, 5, 3, 7], 2),  # unbalanced, p < C − 1
    (5, [4, 1, 6, 2, 3], 40),  # unbalanced, a class of one sample, p ≫ C
    (2, [3, 5], 3),  # two classes: one pair
    (10, [3, 4, 2, 5, 3, 3, 6, 2, 4, 3], 6),  # many classes, p < C − 1
]
"""(C, class sizes n_c, p)."""

REPLICAS = 2


def random_layer(class_sizes: list[int], feature_dim: int, seed: int) -> tuple[np.ndarray, ...]:
    """Shuffled labels with the given class sizes, features with class structure, random (W, b); two replicas."""
    rng = np.random.default_rng(seed)
    num_classes = len(class_sizes)
    labels = rng.permutation(np.repeat(np.arange(num_classes), class_sizes))
    centres = rng.standard_normal((REPLICAS, num_classes, feature_dim))
    features = centres[:, labels] + 0.5 * rng.standard_normal((REPLICAS, labels.size, feature_dim))
    weight = rng.standard_normal((REPLICAS, num_classes, feature_dim)) + centres
    bias = rng.standard_normal((REPLICAS, num_classes))
    return features, labels, weight, bias


def brute_force_field(features, labels, weight, bias):
    """CDNV, GNC2, UNC3 and the agreement of one replica, straight from the definitions with loops."""
    num_classes = weight.shape[0]
    means = [features[labels == c].mean(axis=0) for c in range(num_classes)]
    variances = [np.mean([np.sum((h - means[c]) ** 2) for h in features[labels == c]]) for c in range(num_classes)]
    global_mean = sum(means) / num_classes
    unit = [(mean - global_mean) / np.linalg.norm(mean - global_mean) for mean in means]
    ratios, logs = [], []
    for i in range(num_classes):
        for j in range(i + 1, num_classes):
            ratios.append((variances[i] + variances[j]) / (2 * np.sum((means[i] - means[j]) ** 2)))
            logs.append(np.log(1 / np.linalg.norm(unit[i] - unit[j])))
    cosines = [
        weight[c] @ (means[c] - global_mean) / (np.linalg.norm(weight[c]) * np.linalg.norm(means[c] - global_mean))
        for c in range(num_classes)
    ]
    agree = [
        np.argmax(weight @ h + bias) == np.argmin([np.linalg.norm(h - mean) for mean in means]) for h in features
    ]
    return {
        "cdnv": np.mean(ratios),
        "gnc2": np.var(logs),
        "unc3": np.std(cosines) / np.mean(cosines),
        "ncc_agreement": np.mean(agree),
    }, np.array(means), np.array(variances)


def assert_close(values: dict[str, torch.Tensor], expected: dict[str, float], replica: int, rtol: float = 1e-8):
    for name, value in expected.items():
        got = float(values[name][replica])
        assert np.isclose(got, value, rtol=rtol, atol=1e-12), (name, got, value)


@pytest.mark.parametrize(("num_classes", "class_sizes", "feature_dim"), SIZES)
def test_layer_metrics_match_brute_force(num_classes: int, class_sizes: list[int], feature_dim: int) -> None:
    features, labels, weight, bias = random_layer(class_sizes, feature_dim, seed=num_classes * feature_dim)
    values = layer_metrics(*(torch.tensor(array) for array in (features, labels, weight, bias)))
    assert list(values) == [*LAYER_METRIC_NAMES, *CLASSIFIER_METRIC_NAMES]
    for replica in range(REPLICAS):
        expected = brute_force_field(features[replica], labels, weight[replica], bias[replica])[0]
        expected |= brute_force_nc(features[replica], labels, weight[replica], bias[replica])
        assert_close(values, expected, replica)


@pytest.mark.parametrize(("num_classes", "class_sizes", "feature_dim"), SIZES)
def test_pure_functions_match_brute_force(num_classes: int, class_sizes: list[int], feature_dim: int) -> None:
    features, labels, weight, bias = random_layer(class_sizes, feature_dim, seed=num_classes + feature_dim)
    for replica in range(REPLICAS):
        expected, means, variances = brute_force_field(features[replica], labels, weight[replica], bias[replica])
        assert np.isclose(float(cdnv(torch.tensor(means), torch.tensor(variances))), expected["cdnv"], rtol=1e-8)
        assert np.isclose(float(gnc2(torch.tensor(means))), expected["gnc2"], rtol=1e-8)
        assert np.isclose(float(unc3(torch.tensor(means), torch.tensor(weight[replica]))), expected["unc3"], rtol=1e-8)


def test_class_variances_are_the_centred_per_class_mean_squares() -> None:
    features, labels, _, _ = random_layer([4, 1, 6, 2, 3], 7, seed=5)
    statistics = class_statistics(torch.tensor(features), torch.tensor(labels), 5)
    for replica in range(REPLICAS):
        variances = brute_force_field(features[replica], labels, np.ones((5, 7)), np.zeros(5))[2]
        assert np.allclose(statistics.class_variances[replica].numpy(), variances, rtol=1e-12, atol=0)
    assert torch.allclose(statistics.class_traces.sum(dim=-1), statistics.within_scatter.trace(), rtol=1e-14)


def test_brute_force_reference_detects_a_cdnv_with_unsquared_distances() -> None:
    """Guard against a vacuous comparison: dividing by ‖μ_i − μ_j‖ instead of its square is caught."""
    features, labels, weight, bias = random_layer([3, 4, 5], 6, seed=1)
    expected, means, variances = brute_force_field(features[0], labels, weight[0], bias[0])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(3, 1)]
    shared = (variances[:, None] + variances[None])[np.triu_indices(3, 1)]
    assert not np.isclose(np.mean(shared / (2 * distances)), expected["cdnv"], rtol=1e-3)


def test_layer_keys_depend_on_the_classifier() -> None:
    features, labels, weight, bias = (torch.tensor(a) for a in random_layer([3, 4, 2], 5, seed=2))
    assert list(layer_metrics(features, labels, num_classes=3)) == list(LAYER_METRIC_NAMES)
    with_classifier = layer_metrics(features, labels, weight)
    assert list(with_classifier) == [*LAYER_METRIC_NAMES, *CLASSIFIER_METRIC_NAMES]
    assert torch.equal(with_classifier["nc4"], layer_metrics(features, labels, weight, torch.zeros_like(bias))["nc4"])
    statistics = class_statistics(features, labels, 3)
    assert list(layer_metrics_from_statistics(statistics, weight, bias)) == [
        *LAYER_METRIC_NAMES, "nc2_equinorm_classifier", "nc3", "unc3",
    ]  # fmt: skip


def test_layer_metrics_agree_with_nc_metrics_and_agreement_is_one_minus_nc4() -> None:
    features, labels, weight, bias = (torch.tensor(a) for a in random_layer([5, 3, 4, 6], 8, seed=3))
    values = layer_metrics(features, labels, weight, bias)
    classic = nc_metrics(features, labels, weight, bias)
    for name, value in classic.items():
        assert torch.equal(values[name], value), name
    assert torch.equal(values["ncc_agreement"], 1 - values["nc4"])
    statistics = class_statistics(features, labels, 4)
    reused = layer_metrics_with_statistics(statistics, weight, bias)
    for name, value in values.items():
        assert torch.equal(reused[name], value), name


def test_layer_metrics_need_the_number_of_classes() -> None:
    features, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="num_classes"):
        layer_metrics(features, labels)
    with pytest.raises(ValueError, match="num_classes = 4 but weight has 3 rows"):
        layer_metrics(features, labels, torch.randn(3, 3), num_classes=4)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        layer_metrics(features, labels, num_classes=2)


# Analytic cases


def simplex_etf_layer(num_classes: int, samples: int, feature_dim: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Features equal to their class means (no within-class spread), the means a simplex ETF around μ_G ≠ 0, and
    W = 2.5 (μ_c − μ_G), b = −Wμ_G (the classifier of the centred features)."""
    rng = np.random.default_rng(seed)
    eigenvalues, eigenvectors = np.linalg.eigh(np.eye(num_classes) - 1 / num_classes)
    embedding = np.linalg.qr(rng.standard_normal((feature_dim, feature_dim)))[0][: num_classes - 1]
    centred = 3.0 * eigenvectors[:, eigenvalues > 0.5] @ embedding
    global_mean = rng.standard_normal(feature_dim)
    labels = np.repeat(np.arange(num_classes), samples)
    weight = 2.5 * centred
    return (
        torch.tensor((centred + global_mean)[labels]), torch.tensor(labels), torch.tensor(weight),
        torch.tensor(-weight @ global_mean),
    )  # fmt: skip


@pytest.mark.parametrize(("num_classes", "feature_dim"), [(3, 15), (4, 3), (10, 12)])
def test_simplex_etf_without_spread_has_zero_field_metrics(num_classes: int, feature_dim: int) -> None:
    features, labels, weight, bias = simplex_etf_layer(num_classes, 3, feature_dim, seed=num_classes)
    values = layer_metrics(features, labels, weight, bias)
    for name in ("nc1", "nc1_quotient", "cdnv", "nc2_etf", "nc3"):
        assert 0 <= float(values[name]) < 1e-12, name
    assert 0 <= float(values["gnc2"]) < 1e-24  # the variance of equal distances
    assert abs(float(values["unc3"])) < 1e-12
    assert float(values["nc4"]) == 0 and float(values["ncc_agreement"]) == 1


def test_cdnv_of_symmetric_offsets_is_known_exactly() -> None:
    """Class c is μ_c ± σ_c e_j (j = 1..p): σ_c² is exactly known. Means 0, 3e₁, 4e₂ (distances 3, 4, 5), σ² = 1, 2, 3:
    CDNV = ((1+2)/18 + (1+3)/32 + (2+3)/50)/3 = 47/360."""
    feature_dim = 3
    means = np.array([[0.0, 0, 0], [3, 0, 0], [0, 4, 0]])
    offsets = np.concatenate([np.eye(feature_dim), -np.eye(feature_dim)])
    spreads = np.sqrt([1.0, 2.0, 3.0])
    features = np.concatenate([mean + spread * offsets for mean, spread in zip(means, spreads, strict=True)])
    labels = np.repeat(np.arange(3), 2 * feature_dim)
    values = layer_metrics(torch.tensor(features), torch.tensor(labels), num_classes=3)
    assert math.isclose(float(values["cdnv"]), 47 / 360, rel_tol=1e-14)
    assert math.isclose(float(cdnv(torch.tensor(means), torch.tensor([1.0, 2.0, 3.0]))), 47 / 360, rel_tol=1e-14)


def test_cdnv_of_a_gaussian_mixture_approaches_its_population_value() -> None:
    """Isotropic classes N(μ_c, s_c² I_p): σ_c² → p s_c², so CDNV → mean_{i<j} p(s_i² + s_j²)/(2‖μ_i − μ_j‖²).
    σ̂_c²/σ_c² has relative standard deviation √(2/(p n_c)) ≈ 0.008 here; the tolerance is five of them."""
    generator = torch.Generator().manual_seed(0)
    samples, feature_dim = 8_000, 4
    means = torch.tensor([[0.0, 0, 0, 0], [6, 0, 0, 0], [0, 8, 0, 0]], dtype=DOUBLE)
    spreads = torch.tensor([1.0, 0.5, 1.5], dtype=DOUBLE)
    labels = torch.arange(3).repeat_interleave(samples)
    noise = torch.randn(3 * samples, feature_dim, dtype=DOUBLE, generator=generator)
    features = means[labels] + spreads[labels, None] * noise
    pairs = [(0, 1, 36.0), (0, 2, 64.0), (1, 2, 100.0)]
    population = np.mean([feature_dim * (spreads[i] ** 2 + spreads[j] ** 2) / (2 * d2) for i, j, d2 in pairs])
    tolerance = 5 * math.sqrt(2 / (feature_dim * samples))
    assert math.isclose(float(layer_metrics(features, labels, num_classes=3)["cdnv"]), population, rel_tol=tolerance)


def test_gnc2_of_four_means_on_a_square_is_known() -> None:
    """Means ±e₁, ±e₂: four pairs at distance √2, two at 2, so log(1/d) takes −½ln2 four times and −ln2 twice:
    the population variance is (ln 2)²/18."""
    means = torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]], dtype=DOUBLE)
    assert math.isclose(float(gnc2(means)), math.log(2) ** 2 / 18, rel_tol=1e-13)
    assert math.isclose(float(gnc2(means * 1e-150 + 7e-150)), math.log(2) ** 2 / 18, rel_tol=1e-13)


def test_unc3_of_known_cosines_is_their_coefficient_of_variation() -> None:
    """Cosines 1, ½, 1 between w_c and μ_c − μ_G: mean 5/6, population std √(1/18), UNC3 = √2/5."""
    means = torch.tensor([[1.0, 0, 0], [-0.5, math.sqrt(3) / 2, 0], [-0.5, -math.sqrt(3) / 2, 0]], dtype=DOUBLE) + 4
    centred = means - means.mean(dim=0)
    weight = centred.clone()
    weight[1] = 0.5 * centred[1] + math.sqrt(3) / 2 * torch.tensor([0, 0, 1.0], dtype=DOUBLE) * centred[1].norm()
    weight[2] *= 7  # the norm of w_c does not matter
    assert math.isclose(float(unc3(means, weight)), math.sqrt(2) / 5, rel_tol=1e-13)


# Degenerate inputs


def test_one_class_gives_nan_for_every_key_with_warning() -> None:
    features, labels = torch.randn(4, 3, dtype=DOUBLE), torch.zeros(4, dtype=torch.long)
    with pytest.warns(CollapseMetricWarning, match="C ≥ 2"):
        values = layer_metrics(features, labels, torch.randn(1, 3, dtype=DOUBLE))
    assert list(values) == [*LAYER_METRIC_NAMES, *CLASSIFIER_METRIC_NAMES]
    assert all(math.isnan(float(value)) for value in values.values())
    with pytest.warns(CollapseMetricWarning, match="C ≥ 2"):
        assert math.isnan(float(cdnv(torch.randn(1, 3), torch.ones(1))))


def test_class_without_samples_gives_nan_with_warning() -> None:
    features, labels = torch.randn(6, 3, dtype=DOUBLE), torch.tensor([0, 0, 1, 1, 1, 0])
    with pytest.warns(CollapseMetricWarning, match=r"classes \[2\] have no samples"):
        values = layer_metrics(features, labels, torch.randn(3, 3, dtype=DOUBLE))
    for name in ("cdnv", "gnc2", "unc3", "nc4", "ncc_agreement", "nc1"):
        assert math.isnan(float(values[name])), name
    assert math.isfinite(float(values["nc2_equinorm_classifier"]))


def test_coinciding_class_means_give_nan_cdnv_and_gnc2_with_warning() -> None:
    """Classes 0 and 1 share their mean; class 2 is elsewhere, so NC1 stays defined."""
    offsets = torch.tensor([[0.1, 0.0], [-0.1, 0.0]], dtype=DOUBLE)
    means = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-2.0, 0.5]], dtype=DOUBLE)
    labels = torch.arange(3).repeat_interleave(2)
    features = means[labels] + offsets.repeat(3, 1)
    with pytest.warns(CollapseMetricWarning) as warned:
        values = layer_metrics(features, labels, num_classes=3)
    messages = " ".join(str(warning.message) for warning in warned)
    assert "cdnv set to NaN: two class means coincide" in messages and "gnc2 set to NaN" in messages
    assert math.isnan(float(values["cdnv"])) and math.isnan(float(values["gnc2"]))
    assert math.isfinite(float(values["nc1"]))


def test_means_in_one_direction_from_the_global_mean_give_nan_gnc2_with_warning() -> None:
    """μ_0 − μ_G = (1, 0) and μ_1 − μ_G = (2, 0): one direction, ‖μ̂_0 − μ̂_1‖ = 0."""
    means = torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.5, -1.0], [-1.5, 1.0]], dtype=DOUBLE) + 3
    with pytest.warns(CollapseMetricWarning, match="same direction from μ_G"):
        assert math.isnan(float(gnc2(means)))
    assert math.isfinite(float(cdnv(means, torch.ones(4, dtype=DOUBLE))))


def test_zero_row_of_the_classifier_gives_nan_unc3_with_warning() -> None:
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]], dtype=DOUBLE)
    weight = means.clone()
    weight[1] = 0
    with pytest.warns(CollapseMetricWarning, match="a row w_c of W is 0"):
        assert math.isnan(float(unc3(means, weight)))


def test_equal_features_give_nan_without_a_warning_per_field_metric() -> None:
    labels = torch.arange(3).repeat(3)
    with pytest.warns(CollapseMetricWarning) as warned:
        values = layer_metrics(torch.full((9, 4), 0.1, dtype=DOUBLE), labels, torch.randn(3, 4, dtype=DOUBLE))
    assert all(math.isnan(float(values[name])) for name in ("cdnv", "gnc2", "unc3", "nc1"))
    assert not any("cdnv set to NaN" in str(warning.message) for warning in warned)  # said once: means coincide


def test_replicas_are_flagged_per_replica() -> None:
    features, labels, weight, _ = (torch.tensor(a) for a in random_layer([3, 3, 3], 4, seed=8))
    features[1] = 1.0
    with pytest.warns(CollapseMetricWarning, match="for 1 of 2 replicas"):
        values = layer_metrics(features, labels, weight)
    assert math.isfinite(float(values["cdnv"][0])) and math.isnan(float(values["cdnv"][1]))


# The public rhubarbwu/neural-collapse formulas, re-expressed in numpy (accumulate.py, measure.py, kernels.py)


def rhubarbwu_metrics(features, labels, weight, weighted_global_mean=False, dist_exp=1.0):
    """Their accumulators (MeanAccumulator, CovarAccumulator, VarNormAccumulator, DecAccumulator) and measurements
    (covariance_ratio "pinv" and "quotient", variability_cdnv, kernel_stats with log_kernel, similarities,
    clf_ncc_agreement), in float64 (theirs default to float32) with their ε terms."""
    num_classes, eps = weight.shape[0], np.finfo(np.float64).eps
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    totals = np.stack([features[labels == c].sum(axis=0) for c in range(num_classes)])
    means = totals / (counts[:, None] + eps)
    global_mean = counts @ means / (counts.sum() + eps) if weighted_global_mean else means.mean(axis=0)
    differences = features - means[labels]
    covariance_within = differences.T @ differences / (counts.sum() + eps)
    var_norms = np.array([np.sum(differences[labels == c] ** 2) for c in range(num_classes)]) / (counts + eps)
    centred = means - global_mean
    covariance_between = centred.T @ centred / num_classes
    upper = np.triu_indices(num_classes, 1)
    first, second = upper  # their kernels fill the whole grid (the diagonal divides by 0); symm_reduce reads i < j
    pair_distances = np.sum((means[first] - means[second]) ** 2, axis=-1)
    cdnv_pairs = (var_norms[first] + var_norms[second]) / 2 / pair_distances**dist_exp
    normalised = centred / (np.linalg.norm(centred, axis=-1, keepdims=True) + eps)
    log_pairs = np.log(np.linalg.norm(normalised[first] - normalised[second], axis=-1) ** -1.0)
    cosines = np.sum(weight * centred, axis=-1) / (np.linalg.norm(weight, axis=-1) * np.linalg.norm(centred, axis=-1))
    nearest = np.argmin(
        np.sum(features**2, axis=-1)[:, None] + np.sum(means**2, axis=-1)[None] - 2 * features @ means.T, axis=-1
    )
    linear = np.argmax(features @ weight.T, axis=-1)  # no bias
    return {
        "nc1": np.trace(np.linalg.pinv(covariance_between) @ covariance_within) / num_classes,
        "nc1_quotient": np.trace(covariance_within) / np.trace(covariance_between),
        "cdnv": cdnv_pairs.mean(),
        "gnc2": np.var(log_pairs),
        "unc3": np.std(cosines) / np.mean(cosines),
        "ncc_agreement": np.mean(linear == nearest),
        "nc3u_uni_dual_example": np.var(np.sum(weight * centred, axis=-1), ddof=1),
    }


@pytest.mark.parametrize(("class_sizes", "feature_dim"), [([3, 3, 3], 15), ([2, 5, 3, 7], 6), ([4, 9, 6, 2, 3], 40)])
def test_our_metrics_equal_rhubarbwu_formulas_where_conventions_agree(class_sizes: list[int], feature_dim: int):
    """NC1 (pinv and quotient), CDNV at their default dist_exp = 1 (the squared distance: their kernel raises
    ‖μ_i − μ_j‖² to dist_exp), GNC2 (their log kernel's variance), UNC3 (their cosine similarities with the
    coefficient of variation) and the agreement (their linear classifier has no bias: ours with b = 0)."""
    features, labels, weight, _ = random_layer(class_sizes, feature_dim, seed=len(class_sizes))
    values = layer_metrics(torch.tensor(features), torch.tensor(labels), torch.tensor(weight))
    for replica in range(REPLICAS):
        theirs = rhubarbwu_metrics(features[replica], labels, weight[replica])
        theirs.pop("nc3u_uni_dual_example")
        assert_close(values, theirs, replica, rtol=1e-8)


def test_rhubarbwu_conventions_that_differ_from_ours() -> None:
    """Where the public code's options or example differ: a global mean weighted by class sizes (NC1 changes on
    unbalanced classes), dist_exp = 0.5 (CDNV over ‖μ_i − μ_j‖), the example's UNC3 (unbiased variance of
    dot products, not the CoV of cosines), and the agreement of a classifier with a bias (theirs ignores it)."""
    features, labels, weight, bias = random_layer([2, 9, 4, 6], 5, seed=11)
    values = layer_metrics(*(torch.tensor(array) for array in (features, labels, weight, bias)))
    ours = {name: float(value[0]) for name, value in values.items()}
    weighted = rhubarbwu_metrics(features[0], labels, weight[0], weighted_global_mean=True)
    assert not np.isclose(weighted["nc1"], ours["nc1"], rtol=1e-3)
    assert np.isclose(weighted["cdnv"], ours["cdnv"], rtol=1e-8)  # μ_G cancels in μ_i − μ_j
    unsquared = rhubarbwu_metrics(features[0], labels, weight[0], dist_exp=0.5)
    assert not np.isclose(unsquared["cdnv"], ours["cdnv"], rtol=1e-3)
    default = rhubarbwu_metrics(features[0], labels, weight[0])
    assert not np.isclose(default["nc3u_uni_dual_example"], ours["unc3"], rtol=1e-3)
    no_bias = layer_metrics(*(torch.tensor(array) for array in (features, labels, weight)))
    assert np.isclose(default["ncc_agreement"], float(no_bias["ncc_agreement"][0]), rtol=0, atol=1e-15)
    assert not np.isclose(default["ncc_agreement"], ours["ncc_agreement"], rtol=0, atol=1e-3)


# Invariances


@pytest.mark.parametrize("factor", [1e-150, 3.7e-5, 2.9e40, 1e150])
def test_field_metrics_are_exact_at_extreme_feature_scales(factor: float) -> None:
    features, labels, weight, bias = (torch.tensor(a) for a in random_layer([4, 6, 5, 3], 6, seed=12))
    original = layer_metrics(features, labels, weight, bias)
    scaled = layer_metrics(features * factor, labels, weight, bias * factor)
    for name in ("cdnv", "gnc2", "unc3", "ncc_agreement"):
        assert torch.allclose(scaled[name], original[name], rtol=1e-10, atol=0), name


def test_field_metrics_are_invariant_under_rotations_translations_and_row_scalings() -> None:
    """h → Qh + t (W → WQᵀ, b → b − WQᵀt) keeps every metric; w_c → a_c w_c (a_c > 0) keeps UNC3's cosines."""
    features, labels, weight, bias = (torch.tensor(a) for a in random_layer([4, 6, 5, 3], 6, seed=13))
    generator = torch.Generator().manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(6, 6, dtype=DOUBLE, generator=generator))[0]
    translation = 1e3 * torch.randn(6, dtype=DOUBLE, generator=generator)
    original = layer_metrics(features, labels, weight, bias)
    moved_weight = weight @ rotation.T
    moved = layer_metrics(features @ rotation.T + translation, labels, moved_weight, bias - moved_weight @ translation)
    for name, value in original.items():
        assert torch.allclose(moved[name], value, rtol=1e-9, atol=1e-12), name
    row_scaled = layer_metrics(features, labels, weight * torch.tensor([[0.5], [3.0], [1e3], [1e-4]], dtype=DOUBLE))
    assert torch.allclose(row_scaled["unc3"], original["unc3"], rtol=1e-12)
