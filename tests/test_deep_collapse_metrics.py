"""Deep neural collapse DNC1–DNC3 and the layer ranks are exact on constructed frames, agree with a brute-force numpy
computation, are invariant to scale and rotation, batch over replicas, and vanish at the deep UFM's DNC optimum."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ufm_torch.metrics import CollapseMetricWarning, class_statistics, layer_metrics
from ufm_torch.metrics.deep_collapse import (
    DEEP_COLLAPSE_METRIC_NAMES,
    FrameGeometry,
    class_mean_metrics,
    deep_collapse_metrics,
    dnc1,
    dnc2,
    dnc2_geometry,
    dnc3,
    numerical_rank,
    stable_rank,
)
from ufm_torch.models import Activation
from ufm_torch.theory.deep_linear import deep_linear_optimum
from ufm_torch.theory.deep_relu import relu_dnc_reference, relu_two_class_optimum

DOUBLE = torch.float64
EXACT = {"rtol": 1e-12, "atol": 1e-12}
ORTHOGONAL, SIMPLEX = FrameGeometry.ORTHOGONAL_FRAME, FrameGeometry.SIMPLEX_ETF


def orthogonal_matrix(size: int, seed: int) -> torch.Tensor:
    """A random orthogonal ``size × size`` matrix (QR of a Gaussian one)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=DOUBLE))[0]


def simplex_etf(num_classes: int, feature_dim: int) -> torch.Tensor:
    """Unit simplex-ETF class means ``(K, p)``: the centred standard basis, normalised, in the first K coordinates."""
    means = torch.zeros(num_classes, feature_dim, dtype=DOUBLE)
    means[:, :num_classes] = torch.eye(num_classes, dtype=DOUBLE) - 1 / num_classes
    return means / means.norm(dim=-1, keepdim=True)


def frame(num_classes: int, feature_dim: int, scale: float = 1.0) -> torch.Tensor:
    """An orthogonal frame ``scale · e_k`` ``(K, p)``."""
    return scale * torch.eye(num_classes, feature_dim, dtype=DOUBLE)


def random_network(seed: int, replicas: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Features ``(*R, n, p)`` with class structure (K = 3, classes of 3, 5 and 4 samples, p = 5), shuffled labels and
    weights of widths 6, 4 and K."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.repeat_interleave(torch.arange(3), torch.tensor([3, 5, 4]))[torch.randperm(12, generator=generator)]
    centres = torch.randn(*replicas, 3, 5, generator=generator, dtype=DOUBLE)
    features = centres[..., labels, :] + 0.3 * torch.randn(*replicas, 12, 5, generator=generator, dtype=DOUBLE)
    shapes = [(6, 5), (4, 6), (3, 4)]
    weights = [torch.randn(*replicas, *shape, generator=generator, dtype=DOUBLE) for shape in shapes]
    return features, labels, weights


def brute_force_layers(features: np.ndarray, labels: np.ndarray, weights: list[np.ndarray]) -> list[dict[str, float]]:
    """The metrics of one replica of a ReLU network, straight from the definitions (pinv, loops, SVD)."""
    num_classes = weights[-1].shape[0]

    def nc1(rows: np.ndarray) -> float:
        means = np.stack([rows[labels == k].mean(axis=0) for k in range(num_classes)])
        centred = means - means.mean(axis=0)
        within = sum(np.outer(h - means[y], h - means[y]) for h, y in zip(rows, labels, strict=True)) / len(labels)
        return float(np.trace(within @ np.linalg.pinv(centred.T @ centred / num_classes)) / num_classes)

    def normalised_distance(gram: np.ndarray, target: np.ndarray) -> float:
        return float(np.linalg.norm(gram / np.linalg.norm(gram) - target / np.linalg.norm(target)))

    def alignment(means: np.ndarray, weight: np.ndarray, classifier: bool) -> float:
        total = misaligned = 0.0
        for j, row in enumerate(weight):
            cosines = [row @ mean / (np.linalg.norm(row) * np.linalg.norm(mean)) for mean in means]
            misaligned += (row @ row) * (1 - (cosines[j] if classifier else max(cosines)))
            total += row @ row
        return misaligned / total

    def rank(matrix: np.ndarray) -> float:
        values = np.linalg.svd(matrix, compute_uv=False)
        return float(np.sum(values > 1e-6 * values[0]))

    layers, rows = [], features
    for layer, weight in enumerate(weights, start=1):
        means = np.stack([rows[labels == k].mean(axis=0) for k in range(num_classes)])
        centred = means - means.mean(axis=0)
        if layer >= 2:  # after a ReLU: the uncentred Gram against an orthogonal frame
            gram, target = means @ means.T, np.eye(num_classes)
        else:  # the free H_1: the centred Gram against a simplex ETF
            gram, target = centred @ centred.T, np.eye(num_classes) - 1 / num_classes
        values = np.linalg.svd(rows, compute_uv=False)
        layers.append({
            "dnc1": nc1(rows),
            "dnc1_preactivation": nc1(rows @ weight.T),
            "dnc2": normalised_distance(gram, target),
            "dnc3": alignment(means, weight, layer == len(weights)),
            "rank": rank(rows),
            "stable_rank": float(np.sum(values**2) / values[0] ** 2),
            "class_mean_rank": rank(means),
        })  # fmt: skip
        rows = np.maximum(rows @ weight.T, 0.0)
    return layers


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_equal_norm_orthogonal_frame_is_zero_for_both_geometries(num_classes):
    """Centred, an equal-norm orthogonal frame is a simplex ETF: both DNC2 measures are 0."""
    means = frame(num_classes, num_classes + 2, scale=3.0)
    torch.testing.assert_close(dnc2(means, ORTHOGONAL), torch.tensor(0.0, dtype=DOUBLE), **EXACT)
    torch.testing.assert_close(dnc2(means, SIMPLEX), torch.tensor(0.0, dtype=DOUBLE), **EXACT)


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_simplex_etf_is_zero_against_the_etf_and_a_known_distance_from_the_frame(num_classes):
    """An ETF has uncentred Gram T = (KI − 11ᵀ)/(K − 1): ‖T/‖T‖ − I/√K‖_F = √(2 − 2√((K − 1)/K))."""
    means = 2.5 * simplex_etf(num_classes, num_classes + 1)
    torch.testing.assert_close(dnc2(means, SIMPLEX), torch.tensor(0.0, dtype=DOUBLE), **EXACT)
    expected = math.sqrt(2 - 2 * math.sqrt((num_classes - 1) / num_classes))
    torch.testing.assert_close(dnc2(means, ORTHOGONAL), torch.tensor(expected, dtype=DOUBLE), **EXACT)


def test_shifted_frame_is_an_etf_once_centred_but_not_an_orthogonal_frame():
    """Means a·e_k + v (v ⊥ every e_k): the centred Gram is an ETF's; the uncentred one is a²I + ‖v‖²11ᵀ."""
    num_classes, a, shift = 4, 2.0, 1.5
    means = frame(num_classes, num_classes + 1, scale=a)
    means[:, -1] = shift
    gram = a**2 * torch.eye(num_classes, dtype=DOUBLE) + shift**2
    expected = math.sqrt(2 - 2 * float(gram.trace()) / (float(gram.norm()) * math.sqrt(num_classes)))
    torch.testing.assert_close(dnc2(means, ORTHOGONAL), torch.tensor(expected, dtype=DOUBLE), **EXACT)
    torch.testing.assert_close(dnc2(means, SIMPLEX), torch.tensor(0.0, dtype=DOUBLE), **EXACT)


def cross(a: float, b: float, angle: float) -> torch.Tensor:
    """Centred class means ``±a·e_1, ±b·(cos φ e_1 + sin φ e_2)`` ``(4, 3)``: their cosines do not depend on a, b."""
    second = [b * math.cos(angle), b * math.sin(angle), 0.0]
    return torch.tensor([[a, 0.0, 0.0], [-a, 0.0, 0.0], second, [-x for x in second]], dtype=DOUBLE)


@pytest.mark.parametrize("angle", [math.pi / 2, 1.0])
def test_simplex_dnc2_sees_the_norms_that_nc2_etf_ignores(angle):
    """Means :func:`cross`: ``collapse/nc2_etf`` (their cosines C against T = (KI − 11ᵀ)/(K − 1)) is the same for
    every a, b; DNC2 is √(2 − 2 tr G/(‖G‖_F √3)) with ‖G‖_F² = 4a⁴ + 4b⁴ + 8a²b²cos²φ (G's entries sum to 0), and for
    a = b, where G ∝ C, it is √(2 − 2⟨C, T⟩/(‖C‖_F‖T‖_F))."""
    labels = torch.arange(4)
    reference = cross(1.0, 1.0, angle)
    cosines = reference @ reference.T
    target = (4 * torch.eye(4, dtype=DOUBLE) - 1) / 3
    alike = (2 - 2 * (cosines * target).sum() / (cosines.norm() * target.norm())).sqrt()
    torch.testing.assert_close(dnc2(2.0 * reference, SIMPLEX), alike, **EXACT)
    for a, b in [(1.0, 1.0), (1.0, 3.0), (0.2, 5.0)]:
        means = cross(a, b, angle)
        nc2_etf = layer_metrics(means, labels, num_classes=4)["nc2_etf"]
        torch.testing.assert_close(nc2_etf, (cosines - target).norm(), **EXACT)
        gram_norm = math.sqrt(4 * a**4 + 4 * b**4 + 8 * (a * b * math.cos(angle)) ** 2)
        expected = math.sqrt(2 - 2 * (2 * a**2 + 2 * b**2) / (gram_norm * math.sqrt(3)))
        torch.testing.assert_close(dnc2(means, SIMPLEX), torch.tensor(expected, dtype=DOUBLE), **EXACT)


def test_rows_along_scaled_class_means_have_zero_dnc3():
    """Rows c_j·μ_{k(j)} with c_j > 0, in any order, with zero rows between them (a hidden layer of width d ≠ K)."""
    means = torch.randn(3, 5, generator=torch.Generator().manual_seed(0), dtype=DOUBLE)
    weight = torch.zeros(7, 5, dtype=DOUBLE)
    weight[[0, 2, 3, 6]] = means[[2, 0, 1, 2]] * torch.tensor([0.5, 3.0, 1e-3, 7.0], dtype=DOUBLE)[:, None]
    torch.testing.assert_close(dnc3(means, weight), torch.tensor(0.0, dtype=DOUBLE), **EXACT)
    aligned = dnc3(means, 4.0 * means, rows_are_classes=True)
    torch.testing.assert_close(aligned, torch.tensor(0.0, dtype=DOUBLE), **EXACT)


@pytest.mark.parametrize("angle", [0.1, 0.7, 1.3])
def test_rows_rotated_off_an_orthogonal_frame_have_dnc3_one_minus_cosine(angle):
    """Row k = r_k(cos θ e_k + sin θ e_{K+k}) against means e_k: every c_j = cos θ, so DNC3 = 1 − cos θ."""
    num_classes = 3
    means = frame(num_classes, 2 * num_classes)
    weight = torch.zeros(num_classes, 2 * num_classes, dtype=DOUBLE)
    for k, length in enumerate([1.0, 2.0, 5.0]):
        weight[k, k], weight[k, num_classes + k] = length * math.cos(angle), length * math.sin(angle)
    expected = torch.tensor(1 - math.cos(angle), dtype=DOUBLE)
    torch.testing.assert_close(dnc3(means, weight), expected, **EXACT)
    torch.testing.assert_close(dnc3(means, weight, rows_are_classes=True), expected, **EXACT)


def test_a_classifier_with_swapped_rows_is_aligned_but_not_with_its_own_classes():
    """Rows e_{π(k)} against means e_k: each row matches some mean (0) but none its own class (1 − cos 90° = 1)."""
    means = frame(3, 4)
    weight = means[[1, 2, 0]]
    torch.testing.assert_close(dnc3(means, weight), torch.tensor(0.0, dtype=DOUBLE), **EXACT)
    torch.testing.assert_close(dnc3(means, weight, rows_are_classes=True), torch.tensor(1.0, dtype=DOUBLE), **EXACT)


@pytest.mark.parametrize(("smallest", "rank"), [(0.9e-6, 3), (1.1e-6, 4), (0.0, 3)])
def test_numerical_rank_counts_singular_values_above_the_relative_tolerance(smallest, rank):
    """A 9 × 6 matrix with singular values 2, 1, 0.5, 2·``smallest``: rank 3 below 1e-6·σ_max, 4 above."""
    values = torch.tensor([2.0, 1.0, 0.5, 2 * smallest, 0.0, 0.0], dtype=DOUBLE)
    matrix = orthogonal_matrix(9, 1)[:, :6] @ torch.diag(values) @ orthogonal_matrix(6, 2).T
    assert float(numerical_rank(matrix)) == rank
    assert float(numerical_rank(1e-200 * matrix)) == rank
    assert float(numerical_rank(matrix, relative_tolerance=0.3)) == 2
    torch.testing.assert_close(stable_rank(matrix), (values / 2).square().sum(), **EXACT)
    assert float(numerical_rank(torch.zeros(4, 3))) == float(stable_rank(torch.zeros(4, 3))) == 0.0


def test_metrics_are_invariant_to_scale_and_rotation_of_the_features():
    """H_1 → cH_1 with Q applied to every feature vector and W_1 → W_1Qᵀ: every layer's pre-activations scale by c
    (positive homogeneity), so no metric changes, even at c = 1e150 or 1e-150."""
    features, labels, weights = random_network(0)
    reference = deep_collapse_metrics(features, labels, weights, Activation.RELU)
    rotation = orthogonal_matrix(5, 7)
    for scale in (1e150, 1e-150, 3.0):
        moved = deep_collapse_metrics(
            scale * features @ rotation.T, labels, [weights[0] @ rotation.T, *weights[1:]], Activation.RELU
        )
        for before, after in zip(reference, moved, strict=True):
            for name in DEEP_COLLAPSE_METRIC_NAMES:
                torch.testing.assert_close(after[name], before[name], rtol=1e-10, atol=1e-12)
    means = torch.randn(4, 6, generator=torch.Generator().manual_seed(1), dtype=DOUBLE)
    weight = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=DOUBLE)
    rotation = orthogonal_matrix(6, 8)
    for geometry in FrameGeometry:
        reference = class_mean_metrics(means, geometry, weight)
        moved = class_mean_metrics(1e-150 * means @ rotation.T, geometry, 1e150 * weight @ rotation.T)
        for name, value in reference.items():
            torch.testing.assert_close(moved[name], value, **EXACT)


@pytest.mark.parametrize("activation", list(Activation))
def test_replicas_are_measured_as_if_one_at_a_time(activation):
    """Features and weights ``(2, 3, …)``: every value equals that of the replica measured alone."""
    features, labels, weights = random_network(4, replicas=(2, 3))
    batched = deep_collapse_metrics(features, labels, weights, activation)
    for index in np.ndindex(2, 3):
        alone = deep_collapse_metrics(features[index], labels, [weight[index] for weight in weights], activation)
        for together, single in zip(batched, alone, strict=True):
            assert set(together) == set(DEEP_COLLAPSE_METRIC_NAMES)
            for name in DEEP_COLLAPSE_METRIC_NAMES:
                torch.testing.assert_close(together[name][index], single[name], **EXACT)


@pytest.mark.parametrize("seed", [0, 1])
def test_relu_network_agrees_with_brute_force(seed):
    """A random ReLU network (K = 3, widths 6, 4, 3): every layer's metrics as numpy computes them from the
    definitions (NC1 with a pseudo-inverse, DNC2 of the frame after the ReLU and of the ETF at H_1, DNC3 by loops)."""
    features, labels, weights = random_network(seed)
    measured = deep_collapse_metrics(features, labels, weights, Activation.RELU)
    expected = brute_force_layers(features.numpy(), labels.numpy(), [weight.numpy() for weight in weights])
    for layer, values in zip(measured, expected, strict=True):
        for name, value in values.items():
            assert float(layer[name]) == pytest.approx(value, rel=1e-10, abs=1e-12), name


def test_dnc1_is_the_layers_nc1():
    """DNC1 reuses NC1: on any layer it equals ``layer_metrics(...)["nc1"]``."""
    features, labels, _ = random_network(5, replicas=(2,))
    torch.testing.assert_close(
        dnc1(class_statistics(features, labels, 3)), layer_metrics(features, labels, num_classes=3)["nc1"], **EXACT
    )


@pytest.mark.parametrize(
    "optimum",
    [
        relu_dnc_reference((3,) * 4, 5, 6, 3, 1e-3, 2e-3, 5e-4),
        relu_two_class_optimum((4, 4), 1, 3, 2, 1e-3, 1e-3, 1e-3),
        relu_two_class_optimum((2, 2), 3, 4, 4, 5e-4, 1e-3, 2e-3),
    ],
    ids=["K4_L3_dnc_reference", "K2_L2_p1_global", "K2_L4_global"],
)
def test_deep_neural_collapse_optimum_collapses_at_every_layer(optimum):
    """The DNC point of the ReLU deep UFM (Súkeník et al. 2023): DNC1 = 0 (features and pre-activations), DNC2 = 0
    (H_1 a simplex ETF, later layers orthogonal frames), DNC3 = 0 at every layer; H_1 of rank K − 1, then rank K."""
    features, weights = optimum.minimiser()
    labels = optimum.problem.class_major_labels()
    num_classes = optimum.problem.num_classes
    for layer, values in enumerate(deep_collapse_metrics(features, labels, weights, Activation.RELU), start=1):
        for name in ("dnc1", "dnc1_preactivation", "dnc2", "dnc3"):
            assert float(values[name]) == pytest.approx(0.0, abs=1e-12), (layer, name)
        expected_rank = num_classes - 1 if layer == 1 else num_classes
        assert float(values["rank"]) == float(values["class_mean_rank"]) == expected_rank
        assert float(values["stable_rank"]) == pytest.approx(expected_rank, abs=1e-12)


def test_deep_linear_optimum_is_an_orthogonal_frame_at_every_layer():
    """The balanced bias-free deep linear optimum (docs §3): both DNC2 geometries 0, DNC1 = DNC3 = 0, rank K."""
    optimum = deep_linear_optimum((2, 2, 2), 4, 5, 3, 1e-3, 1e-3, 1e-3)
    features, weights = optimum.minimiser()
    labels = optimum.problem.class_major_labels()
    for values in deep_collapse_metrics(features, labels, weights, Activation.LINEAR):
        for name in ("dnc1", "dnc1_preactivation", "dnc2", "dnc3"):
            assert float(values[name]) == pytest.approx(0.0, abs=1e-12), name
        assert float(values["class_mean_rank"]) == 3
    means = features[::2]
    assert float(dnc2(means, ORTHOGONAL)) == pytest.approx(0.0, abs=1e-12)


def test_activation_chooses_the_frame_of_each_layer():
    """After a ReLU (l ≥ 2) an orthogonal frame; H_1 and linear layers a simplex ETF; named as the theory names σ."""
    assert Activation("relu") is Activation.RELU and Activation("linear") is Activation.LINEAR
    assert [dnc2_geometry(Activation.RELU, layer) for layer in (1, 2, 5)] == [SIMPLEX, ORTHOGONAL, ORTHOGONAL]
    assert {dnc2_geometry(Activation.LINEAR, layer) for layer in (1, 2, 5)} == {SIMPLEX}


def test_undefined_values_are_nan_with_a_warning():
    """W = 0 (DNC3), coinciding means (DNC2 against the ETF), non-finite features (ranks), a single class."""
    means = frame(3, 4)
    with pytest.warns(CollapseMetricWarning, match="W = 0"):
        assert dnc3(means, torch.zeros(5, 4, dtype=DOUBLE)).isnan()
    with pytest.warns(CollapseMetricWarning, match="simplex_etf is 0"):
        assert dnc2(torch.ones(3, 4, dtype=DOUBLE), SIMPLEX).isnan()
    with pytest.warns(CollapseMetricWarning, match="not finite"):
        ranks = numerical_rank(torch.stack([means, torch.full((3, 4), torch.nan, dtype=DOUBLE)]))
    assert ranks[0] == 3 and ranks[1].isnan()
    with pytest.warns(CollapseMetricWarning, match="K ≥ 2"):
        assert dnc2(torch.ones(1, 4, dtype=DOUBLE), SIMPLEX).isnan()
    with pytest.raises(ValueError, match="one row per class"):
        dnc3(means, torch.ones(5, 4, dtype=DOUBLE), rows_are_classes=True)
