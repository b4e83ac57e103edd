"""Collapse metrics agree with brute-force numpy computations straight from the definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from tests.helpers import brute_force_nc
from ufm_torch.metrics import collapse_metrics, nc_metrics, project_onto_S, snc_metrics, statistics

SHAPES = [(3, 3, 15), (5, 4, 2), (4, 3, 40), (2, 5, 3), (10, 3, 6)]
"""(C, N, p): the paper's Figure 1 size, p < C − 1, p ≫ C, two classes, p < C − 1 with many classes."""

REPLICAS = 2


def random_problem(num_classes, samples_per_class, feature_dim, seed):
    """Shuffled balanced labels, features with class structure, random (W, b), two replicas."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(num_classes), samples_per_class))
    centres = rng.standard_normal((REPLICAS, num_classes, feature_dim))
    features = centres[:, labels] + 0.5 * rng.standard_normal((REPLICAS, labels.size, feature_dim))
    weight = rng.standard_normal((REPLICAS, num_classes, feature_dim))
    bias = rng.standard_normal((REPLICAS, num_classes))
    return features, labels, weight, bias


def basis_of_S(labels, num_classes, feature_dim):
    """Columns: vectorised (H rows, W, b) of an orthonormal-in-V basis of S, plus the bias direction 1."""
    samples_per_class = labels.size // num_classes
    complement = np.linalg.svd(np.ones((1, num_classes)))[2][1:].T
    columns = []
    for k in range(num_classes - 1):
        for j in range(feature_dim):
            classifier = np.outer(complement[:, k], np.eye(feature_dim)[j])
            features = classifier[labels] / np.sqrt(samples_per_class)
            columns.append(np.concatenate([features.ravel(), classifier.ravel(), np.zeros(num_classes)]))
    bias_direction = np.zeros(labels.size * feature_dim + num_classes * feature_dim + num_classes)
    bias_direction[-num_classes:] = 1
    columns.append(bias_direction)
    return np.stack(columns, axis=1)


def brute_force_snc(features, labels, weight, bias):
    """SNC1–3 with H in class-major order and (W ⊗ 1_N)ᵀ built by np.kron; dist_S by least squares."""
    num_classes, feature_dim = weight.shape
    samples_per_class = labels.size // num_classes
    order = np.argsort(labels, kind="stable")
    paper_features = features[order].T
    expected_features = np.kron(weight, np.ones((samples_per_class, 1))).T / np.sqrt(samples_per_class)
    centring = np.eye(num_classes) - np.ones((num_classes, num_classes)) / num_classes
    point = np.concatenate([features.ravel(), weight.ravel(), bias])
    basis = basis_of_S(labels, num_classes, feature_dim)
    with threadpool_limits(1):  # multithreaded OpenBLAS is needlessly slow at this size on shared CPUs
        coefficients = np.linalg.lstsq(basis, point, rcond=None)[0]
    return {
        "snc1": np.linalg.norm(weight @ weight.T - np.sqrt(samples_per_class) * centring),
        "snc2": np.linalg.norm(paper_features - expected_features) / np.linalg.norm(paper_features),
        "snc3": np.linalg.norm(bias - 1 / num_classes),
        "dist_S": np.linalg.norm(point - basis @ coefficients) / np.linalg.norm(point),
    }, (basis @ coefficients)


def assert_close(values, expected):
    for name, value in expected.items():
        assert np.isclose(float(values[name]), value, rtol=1e-10, atol=1e-12), (name, float(values[name]), value)


@pytest.mark.parametrize(("num_classes", "samples_per_class", "feature_dim"), SHAPES)
def test_nc_metrics_match_brute_force(num_classes, samples_per_class, feature_dim):
    features, labels, weight, bias = random_problem(num_classes, samples_per_class, feature_dim, seed=feature_dim)
    values = nc_metrics(torch.tensor(features), torch.tensor(labels), torch.tensor(weight), torch.tensor(bias))
    for replica in range(REPLICAS):
        expected = brute_force_nc(features[replica], labels, weight[replica], bias[replica])
        assert_close({name: value[replica] for name, value in values.items()}, expected)


@pytest.mark.parametrize(("num_classes", "samples_per_class", "feature_dim"), SHAPES)
def test_snc_metrics_and_projection_match_brute_force(num_classes, samples_per_class, feature_dim):
    features, labels, weight, bias = random_problem(num_classes, samples_per_class, feature_dim, seed=num_classes)
    tensors = (torch.tensor(features), torch.tensor(weight), torch.tensor(bias), torch.tensor(labels))
    values = snc_metrics(*tensors)
    projected = project_onto_S(*tensors)
    for replica in range(REPLICAS):
        expected, image = brute_force_snc(features[replica], labels, weight[replica], bias[replica])
        assert_close({name: value[replica] for name, value in values.items()}, expected)
        flat = np.concatenate([part[replica].numpy().ravel() for part in projected])
        assert np.allclose(flat, image, rtol=0, atol=1e-12)


def test_collapse_metrics_is_the_union_of_nc_and_snc_metrics():
    features, labels, weight, bias = (torch.tensor(array) for array in random_problem(4, 3, 5, seed=7))
    combined = collapse_metrics(features, labels, weight, bias)
    separate = nc_metrics(features, labels, weight, bias) | snc_metrics(features, weight, bias, labels)
    assert list(combined) == list(separate)
    for name, value in separate.items():
        assert torch.equal(combined[name], value), name


def test_brute_force_reference_detects_a_wrong_nc1():
    """Guard against a vacuous comparison: dropping the 1/C in NC1 is caught."""
    features, labels, weight, bias = random_problem(3, 3, 15, seed=0)
    expected = brute_force_nc(features[0], labels, weight[0], bias[0])
    values = nc_metrics(*(torch.tensor(array) for array in (features, labels, weight, bias)))
    assert not np.isclose(float(values["nc1"][0]) * 3, expected["nc1"], rtol=1e-3)


@pytest.mark.parametrize(("num_classes", "samples_per_class", "feature_dim"), [(3, 5, 15), (10, 3, 6)])
def test_metrics_read_in_row_blocks_match_brute_force(
    num_classes: int, samples_per_class: int, feature_dim: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 4 rows (several full blocks and a shorter last one) give the brute-force values."""
    monkeypatch.setattr(statistics, "ROW_CHUNK", 4)
    features, labels, weight, bias = random_problem(num_classes, samples_per_class, feature_dim, seed=11)
    values = collapse_metrics(*(torch.tensor(array) for array in (features, labels, weight, bias)))
    for replica in range(REPLICAS):
        expected = brute_force_nc(features[replica], labels, weight[replica], bias[replica])
        expected |= brute_force_snc(features[replica], labels, weight[replica], bias[replica])[0]
        assert_close({name: value[replica] for name, value in values.items()}, expected)


def test_class_statistics_leave_float32_features_unchanged_and_uncopied() -> None:
    """The centred rows are regenerated from the caller's tensor, which is neither modified nor copied whole."""
    features, labels, _, _ = random_problem(4, 3, 5, seed=3)
    tensor = torch.tensor(features, dtype=torch.float32)
    before = tensor.clone()
    rows = statistics.class_statistics(tensor, torch.tensor(labels), 4).within_scatter
    assert rows.features is tensor and torch.equal(tensor, before)
    stored = before.double().numpy()
    centred = stored - np.stack([stored[:, labels == c].mean(axis=1) for c in range(4)], axis=1)[:, labels]
    scaled = centred / rows.scale.numpy()[:, None, None]
    dense = np.einsum("rni,rnj->rij", scaled, scaled)
    assert np.allclose(rows.scatter_matrix().numpy(), dense, rtol=1e-12, atol=1e-14)
