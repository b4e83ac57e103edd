"""Lemma 4 and Theorems 2 and 3 of Mixon, Parshall and Pi, checked against numerics."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ufm_torch.metrics import snc_metrics
from ufm_torch.objectives.ufm import ufm_risk
from ufm_torch.theory import (
    gradient_descent,
    gradient_descent_snc3_error,
    integrate_flow,
    integrate_gradient_flow,
    lemma4_risk,
    linearised_flow_rhs,
    pair_norm,
    point_on_S,
    strong_collapse_gram,
    theorem2_bias,
    theorem2_bound,
    theorem2_projections,
    theorem2_snc3_error,
    theorem2_solution,
    theorem3_limit_gram,
    theorem3_trajectory,
)

DTYPE = torch.float64


def class_major_labels(num_classes: int, samples_per_class: int) -> torch.Tensor:
    return torch.arange(num_classes).repeat_interleave(samples_per_class)


def randn(*shape: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=DTYPE)


def flatten(*parts: torch.Tensor) -> torch.Tensor:
    return torch.cat([part.reshape(-1) for part in parts])


def orthonormal_image_basis(linear_map, parameter_count: int) -> torch.Tensor:
    """Orthonormal basis (columns) of the image of ``linear_map`` on ``R^parameter_count``."""
    images = torch.stack([linear_map(e) for e in torch.eye(parameter_count, dtype=DTYPE)], dim=1)
    left, singular_values, _ = torch.linalg.svd(images, full_matrices=False)
    return left[:, singular_values > 1e-10 * singular_values.max()]


def centre_rows(matrix: torch.Tensor) -> torch.Tensor:
    return matrix - matrix.mean(dim=0, keepdim=True)


def spread(class_rows: torch.Tensor, samples_per_class: int) -> torch.Tensor:
    """Row convention of ``(1/√N)(X ⊗ 1_N)ᵀ``, written out independently of the library."""
    return torch.kron(class_rows, torch.ones(samples_per_class, 1, dtype=DTYPE)) / math.sqrt(samples_per_class)


def subspace_S_basis(num_classes: int, samples_per_class: int, feature_dim: int) -> torch.Tensor:
    """Orthonormal basis of S = {H = (1/√N)(W ⊗ 1_N)ᵀ, 1ᵀW = 0, b ∈ span 1} (flattened Z)."""

    def embed(parameters: torch.Tensor) -> torch.Tensor:
        weight = centre_rows(parameters[:-1].reshape(num_classes, feature_dim))
        bias = parameters[-1] * torch.ones(num_classes, dtype=DTYPE)
        return flatten(spread(weight, samples_per_class), weight, bias)

    return orthonormal_image_basis(embed, num_classes * feature_dim + 1)


def relative_distance_to_S(basis: torch.Tensor, features, weight, bias) -> float:
    point = flatten(features, weight, bias)
    return float((point - basis @ (basis.T @ point)).norm() / point.norm())


# Lemma 4


@pytest.mark.parametrize(
    ("num_classes", "samples_per_class", "feature_dim"),
    [(2, 1, 3), (3, 3, 15), (5, 4, 2), (4, 2, 10)],
)
def test_lemma4_identity_equals_risk_on_S(num_classes, samples_per_class, feature_dim):
    labels = class_major_labels(num_classes, samples_per_class)
    for seed in range(3):
        weight = randn(num_classes, feature_dim, seed=seed)
        bias_level = float(randn(1, seed=100 + seed))
        point = point_on_S(weight, bias_level, samples_per_class)
        expected = ufm_risk(*point, labels)
        assert torch.allclose(lemma4_risk(point.weight, point.bias, samples_per_class), expected, rtol=1e-12)


def test_lemma4_identity_fails_off_S():
    labels = class_major_labels(3, 3)
    features, weight, bias = randn(9, 5, seed=1), randn(3, 5, seed=2), randn(3, seed=3)
    gap = lemma4_risk(weight, bias, 3) - ufm_risk(features, weight, bias, labels)
    assert gap.abs() > 1e-3


def test_strong_collapse_point_has_zero_risk_and_snc1_gram():
    num_classes, samples_per_class, feature_dim = 4, 3, 7
    gram = strong_collapse_gram(num_classes, samples_per_class)
    centring = torch.eye(num_classes, dtype=DTYPE) - 1.0 / num_classes
    assert torch.allclose(gram, math.sqrt(samples_per_class) * centring, atol=0, rtol=0)
    rows, _ = torch.linalg.qr(randn(feature_dim, num_classes, seed=4))
    weight = samples_per_class**0.25 * centring @ rows.T
    point = point_on_S(weight, 1.0 / num_classes, samples_per_class)
    labels = class_major_labels(num_classes, samples_per_class)
    assert torch.allclose(point.weight @ point.weight.T, gram, atol=1e-13)
    assert ufm_risk(*point, labels) < 1e-25
    assert lemma4_risk(point.weight, point.bias, samples_per_class) < 1e-25


# Gradient descent on S


def test_gradient_descent_started_on_S_stays_on_S_and_collapses():
    num_classes, samples_per_class, feature_dim, lr, steps = 3, 3, 15, 0.05, 2500
    labels = class_major_labels(num_classes, samples_per_class)
    weight = 0.1 * randn(num_classes, feature_dim, seed=5)
    start = point_on_S(weight, 0.0, samples_per_class)
    checkpoints = [0, 1, 10, 100, 500, 1000, 2000, steps]
    final, recorded = gradient_descent(*start, labels, lr, steps, record_steps=checkpoints)
    basis = subspace_S_basis(num_classes, samples_per_class, feature_dim)
    distances = [relative_distance_to_S(basis, *(part[i] for part in recorded)) for i in range(len(checkpoints))]
    assert max(distances) < 1e-10
    assert torch.equal(recorded.weight[-1], final.weight)
    gram = strong_collapse_gram(num_classes, samples_per_class)
    assert torch.allclose(final.weight @ final.weight.T, gram, atol=1e-10)
    snc3 = (recorded.bias - 1.0 / num_classes).norm(dim=-1)
    expected = gradient_descent_snc3_error(torch.tensor(checkpoints), lr, num_classes, samples_per_class)
    assert torch.allclose(snc3, expected, rtol=1e-12, atol=1e-15)


def test_metrics_dist_S_vanishes_along_gradient_descent_on_S_and_matches_projection_off_S():
    num_classes, samples_per_class, feature_dim = 3, 3, 15
    labels = class_major_labels(num_classes, samples_per_class)
    start = point_on_S(0.1 * randn(num_classes, feature_dim, seed=5), 0.0, samples_per_class)
    _, recorded = gradient_descent(*start, labels, 0.05, 2000, record_steps=[0, 100, 2000])
    assert (snc_metrics(*recorded, labels)["dist_S"] < 1e-10).all()
    features = randn(9, feature_dim, seed=1)
    weight, bias = randn(3, feature_dim, seed=2), randn(3, seed=3)
    basis = subspace_S_basis(num_classes, samples_per_class, feature_dim)
    dist_S = snc_metrics(features, weight, bias, labels)["dist_S"]
    assert math.isclose(float(dist_S), relative_distance_to_S(basis, features, weight, bias), rel_tol=1e-12)


def test_gradient_descent_snc3_formula_is_exact_for_linearised_system_but_not_off_S():
    num_classes, samples_per_class, feature_dim, lr, steps = 3, 3, 6, 0.02, 20
    labels = class_major_labels(num_classes, samples_per_class)
    features, weight = randn(9, feature_dim, seed=6), randn(3, feature_dim, seed=7)
    bias = torch.zeros(num_classes, dtype=DTYPE)
    expected = gradient_descent_snc3_error(steps, lr, num_classes, samples_per_class)
    final, _ = gradient_descent(features, weight, bias, labels, lr, steps)
    assert ((final.bias - 1.0 / num_classes).norm() - expected).abs() > 1e-4
    state = (features, weight, bias)
    for _ in range(steps):
        state = tuple(x + lr * v for x, v in zip(state, linearised_flow_rhs(*state, labels), strict=True))
    assert torch.allclose((state[2] - 1.0 / num_classes).norm(), expected, rtol=1e-12)


def test_gradient_descent_tracks_theorem3_with_gap_linear_in_step_size():
    num_classes, samples_per_class, feature_dim, horizon = 3, 3, 15, 1.0
    labels = class_major_labels(num_classes, samples_per_class)
    start = point_on_S(0.3 * randn(num_classes, feature_dim, seed=8), 0.0, samples_per_class)
    flow = theorem3_trajectory(start.weight, start.bias, horizon, samples_per_class)
    gaps = []
    for lr in (0.02, 0.01, 0.005):
        final, _ = gradient_descent(*start, labels, lr, round(horizon / lr))
        gap = flatten(*final) - flatten(*flow)
        gaps.append(float(gap.norm() / flatten(*flow).norm()))
    assert gaps[-1] < 1e-2
    for coarse, fine in itertools.pairwise(gaps):
        assert 1.7 < coarse / fine < 2.3


# Theorem 3


def test_theorem3_trajectory_matches_integrated_gradient_flow():
    num_classes, samples_per_class, feature_dim = 3, 3, 15
    labels = class_major_labels(num_classes, samples_per_class)
    weights = 0.3 * randn(2, num_classes, feature_dim, seed=9)
    start = point_on_S(weights, torch.tensor([0.0, 0.5], dtype=DTYPE), samples_per_class)
    times = [0.0, 0.25, 1.0, 3.0]
    integrated = integrate_gradient_flow(*start, labels, times, rtol=1e-11, atol=1e-13)
    for index, t in enumerate(times):
        closed = theorem3_trajectory(start.weight, start.bias, t, samples_per_class)
        for numeric, exact in zip(integrated, closed, strict=True):
            assert torch.allclose(numeric[index], exact, rtol=1e-8, atol=1e-10)


def test_theorem3_bias_follows_alpha_formula():
    num_classes, samples_per_class, alpha, t = 4, 2, 0.3, 0.07
    start = point_on_S(randn(num_classes, 5, seed=10), (1 - alpha) / num_classes, samples_per_class)
    bias = theorem3_trajectory(start.weight, start.bias, t, samples_per_class).bias
    expected = (1 - alpha * math.exp(-num_classes * samples_per_class * t)) / num_classes
    assert torch.allclose(bias, torch.full_like(bias, expected), rtol=1e-14)


def test_full_rank_start_reaches_strong_collapse_gram():
    num_classes, samples_per_class, feature_dim = 3, 3, 15
    labels = class_major_labels(num_classes, samples_per_class)
    start = point_on_S(0.1 * randn(num_classes, feature_dim, seed=11), 0.0, samples_per_class)
    limit = theorem3_limit_gram(start.weight, samples_per_class)
    assert torch.allclose(limit, strong_collapse_gram(num_classes, samples_per_class), atol=1e-13)
    late = theorem3_trajectory(start.weight, start.bias, 20.0, samples_per_class).weight
    assert torch.allclose(late @ late.T, limit, atol=1e-12)
    numeric = integrate_gradient_flow(*start, labels, [12.0], rtol=1e-10, atol=1e-13).weight[0]
    assert torch.allclose(numeric @ numeric.T, limit, atol=1e-8)


def test_rank_deficient_start_converges_to_projection_other_than_snc1():
    num_classes, samples_per_class, feature_dim = 5, 2, 6
    labels = class_major_labels(num_classes, samples_per_class)
    low_rank = randn(num_classes, 2, seed=12) @ randn(2, feature_dim, seed=13)
    start = point_on_S(low_rank, 0.1, samples_per_class)
    assert torch.linalg.matrix_rank(start.weight) == 2
    limit = theorem3_limit_gram(start.weight, samples_per_class)
    range_projection = start.weight @ torch.linalg.pinv(start.weight, rtol=1e-10)
    assert torch.allclose(limit, math.sqrt(samples_per_class) * range_projection, atol=1e-12)
    kernel_projection = torch.eye(num_classes, dtype=DTYPE) - limit / math.sqrt(samples_per_class)
    ones_projection = torch.full((num_classes, num_classes), 1.0 / num_classes, dtype=DTYPE)
    assert (kernel_projection - ones_projection).norm() > 0.5
    assert torch.allclose(kernel_projection @ ones_projection, ones_projection, atol=1e-12)
    late = theorem3_trajectory(start.weight, start.bias, 40.0, samples_per_class).weight
    assert torch.allclose(late @ late.T, limit, atol=1e-12)
    numeric = integrate_gradient_flow(*start, labels, [8.0], rtol=1e-10, atol=1e-13).weight[0]
    assert torch.allclose(numeric @ numeric.T, limit, atol=1e-6)


def test_theorem3_rejects_starts_off_S():
    start = point_on_S(randn(3, 4, seed=14), 0.0, 2)
    with pytest.raises(ValueError, match="on S"):
        theorem3_trajectory(start.weight + 0.1, start.bias, 1.0, 2)
    with pytest.raises(ValueError, match="on S"):
        theorem3_trajectory(start.weight, torch.tensor([0.0, 0.1, 0.0], dtype=DTYPE), 1.0, 2)


# Theorem 2


def test_theorem2_projections_sum_to_identity_and_are_orthogonal_projections():
    num_classes, samples_per_class, feature_dim = 4, 3, 5
    features, weight = randn(12, feature_dim, seed=15), randn(4, feature_dim, seed=16)
    parts = theorem2_projections(features, weight, num_classes, samples_per_class)
    assert torch.allclose(sum(part[0] for part in parts), features, atol=1e-13)
    assert torch.allclose(sum(part[1] for part in parts), weight, atol=1e-13)
    for i, first in enumerate(parts):
        again = theorem2_projections(*first, num_classes, samples_per_class)
        for j, second in enumerate(parts):
            inner = (first[0] * second[0]).sum() + (first[1] * second[1]).sum()
            if i != j:
                assert inner.abs() < 1e-12
            reprojected = again[j]
            expected = first if i == j else (torch.zeros_like(features), torch.zeros_like(weight))
            assert torch.allclose(reprojected[0], expected[0], atol=1e-13)
            assert torch.allclose(reprojected[1], expected[1], atol=1e-13)


def test_theorem2_projections_match_projections_onto_the_defined_eigenspaces():
    num_classes, samples_per_class, feature_dim = 3, 2, 4
    n = num_classes * samples_per_class
    root_n = math.sqrt(samples_per_class)

    def e1(sign):
        def embed(parameters):
            weight = centre_rows(parameters.reshape(num_classes, feature_dim))
            return flatten(sign * spread(weight, samples_per_class), weight)

        return embed, num_classes * feature_dim

    def e2(sign):
        def embed(z):
            features = sign * torch.ones(n, 1, dtype=DTYPE) * z
            return flatten(features, root_n * torch.ones(num_classes, 1, dtype=DTYPE) * z)

        return embed, feature_dim

    def e3(parameters):
        blocks = parameters.reshape(num_classes, samples_per_class, feature_dim)
        centred = blocks - blocks.mean(dim=1, keepdim=True)
        return flatten(centred, torch.zeros(num_classes, feature_dim, dtype=DTYPE))

    spaces = [e1(1.0), e1(-1.0), e2(1.0), e2(-1.0), (e3, n * feature_dim)]
    dimensions = [feature_dim * (num_classes - 1)] * 2 + [feature_dim] * 2
    dimensions.append(feature_dim * num_classes * (samples_per_class - 1))
    features, weight = randn(n, feature_dim, seed=17), randn(num_classes, feature_dim, seed=18)
    point = flatten(features, weight)
    closed_forms = theorem2_projections(features, weight, num_classes, samples_per_class)
    for (embed, count), dimension, closed in zip(spaces, dimensions, closed_forms, strict=True):
        basis = orthonormal_image_basis(embed, count)
        assert basis.shape[1] == dimension
        assert torch.allclose(flatten(*closed), basis @ (basis.T @ point), atol=1e-13)


@pytest.mark.parametrize("t", [0.0, 0.3, 2.0])
def test_theorem2_eigenspaces_are_eigenvectors_of_the_linearised_operator(t):
    num_classes, samples_per_class, feature_dim = 3, 4, 5
    labels = class_major_labels(num_classes, samples_per_class)
    root_n = math.sqrt(samples_per_class)
    decay = math.exp(-num_classes * samples_per_class * t)
    eigenvalues = [root_n, -root_n, root_n * decay, -root_n * decay, 0.0]
    features, weight = randn(12, feature_dim, seed=19), randn(3, feature_dim, seed=20)
    bias = theorem2_bias(t, num_classes, samples_per_class)
    parts = theorem2_projections(features, weight, num_classes, samples_per_class)
    for eigenvalue, (part_features, part_weight) in zip(eigenvalues, parts, strict=True):
        image = linearised_flow_rhs(part_features, part_weight, bias, labels)
        assert torch.allclose(image.features, eigenvalue * part_features, atol=1e-12)
        assert torch.allclose(image.weight, eigenvalue * part_weight, atol=1e-12)


def test_theorem2_closed_form_and_bound_hold_along_integrated_linearised_system():
    num_classes, samples_per_class, feature_dim = 3, 3, 5
    labels = class_major_labels(num_classes, samples_per_class)
    features0 = randn(2, 9, feature_dim, seed=21)
    weight0 = randn(2, num_classes, feature_dim, seed=22)
    bias0 = torch.zeros(2, num_classes, dtype=DTYPE)
    times = [0.0, 0.05, 0.2, 0.5, 1.0, 2.0]
    integrated = integrate_flow(
        lambda state: linearised_flow_rhs(*state, labels),
        (features0, weight0, bias0),
        times,
        rtol=1e-11,
        atol=1e-13,
    )
    tangent = theorem2_projections(features0, weight0, num_classes, samples_per_class).e1_plus
    for index, t in enumerate(times):
        features_t, weight_t = integrated[0][index], integrated[1][index]
        closed_features, closed_weight = theorem2_solution(features0, weight0, t, num_classes, samples_per_class)
        error = pair_norm(features_t - closed_features, weight_t - closed_weight)
        assert (error / pair_norm(closed_features, closed_weight)).max() < 1e-8
        expected_bias = theorem2_bias(t, num_classes, samples_per_class).expand(2, -1)
        assert torch.allclose(integrated[2][index], expected_bias, rtol=1e-9, atol=1e-12)
        growth = math.exp(math.sqrt(samples_per_class) * t)
        numeric_lhs = pair_norm(features_t - growth * tangent[0], weight_t - growth * tangent[1])
        lhs, rhs = theorem2_bound(features0, weight0, t, num_classes, samples_per_class)
        assert torch.allclose(numeric_lhs, lhs, rtol=1e-8)
        assert (numeric_lhs <= rhs).all()


def test_theorem2_bound_constant_is_attained_on_E2_plus():
    num_classes, samples_per_class = 3, 3
    features, weight = randn(9, 4, seed=23), randn(3, 4, seed=24)
    start = theorem2_projections(features, weight, num_classes, samples_per_class).e2_plus
    early_lhs, rhs = theorem2_bound(*start, 0.01, num_classes, samples_per_class)
    late_lhs, _ = theorem2_bound(*start, 4.0, num_classes, samples_per_class)
    assert early_lhs < 0.99 * rhs
    assert 1 - 1e-9 < late_lhs / rhs <= 1 + 1e-12


def test_theorem2_snc3_error_is_distance_of_bias_to_one_over_C():
    times = torch.tensor([0.0, 0.01, 0.1, 1.0], dtype=DTYPE)
    bias = theorem2_bias(times, 4, 3)
    assert torch.allclose((bias - 0.25).norm(dim=-1), theorem2_snc3_error(times, 4, 3), rtol=1e-12)


# Integrator


def test_integrate_flow_solves_linear_ode_at_requested_times():
    times = [0.0, 0.5, 0.5, 2.0]
    (values,) = integrate_flow(lambda state: (-state[0],), (torch.tensor([1.0, 3.0], dtype=DTYPE),), times, rtol=1e-11)
    expected = torch.exp(-torch.tensor(times, dtype=DTYPE)).unsqueeze(-1) * torch.tensor([1.0, 3.0], dtype=DTYPE)
    assert torch.allclose(values, expected, rtol=1e-9)
    with pytest.raises(ValueError, match="nondecreasing"):
        integrate_flow(lambda state: state, (torch.ones(1, dtype=DTYPE),), [1.0, 0.5])


def test_integrate_flow_keeps_shapes_dtypes_and_start_and_reports_failures():
    matrix, scalar = torch.tensor([[1.0, 2.0]], dtype=torch.float32), torch.tensor(3.0, dtype=DTYPE)
    times = [0.0, 0.0, 1.0]  # rtol suited to a float32 right-hand side
    values, scalars = integrate_flow(lambda s: (-s[0], -2 * s[1]), (matrix, scalar), times, rtol=1e-6, atol=1e-9)
    assert (values.dtype, values.shape, scalars.dtype, scalars.shape) == (torch.float32, (3, 1, 2), DTYPE, (3,))
    assert torch.equal(values[0], matrix) and torch.equal(values[1], matrix) and torch.equal(scalars[0], scalar)
    assert torch.allclose(values[2], math.exp(-1.0) * matrix, rtol=1e-5)
    assert math.isclose(float(scalars[2]), 3 * math.exp(-2.0), rel_tol=1e-5)
    (at_start,) = integrate_flow(lambda s: (-s[0],), (matrix,), [0.0])
    assert torch.equal(at_start, matrix.unsqueeze(0))

    one = (torch.ones(1, dtype=DTYPE),)

    def blow_up(state):  # y' = y², y(0) = 1: y = 1/(1 − t) blows up at t = 1
        return (state[0].square(),)

    with pytest.raises(RuntimeError, match="solve_ivp failed: Required step size"):
        integrate_flow(blow_up, one, [2.0], rtol=1e-3, atol=1e-6)
    with pytest.raises(RuntimeError, match="over 3 steps"):
        integrate_flow(blow_up, one, [0.9], max_steps=3)
    with pytest.raises(RuntimeError, match="not finite"):
        integrate_flow(lambda state: (torch.full_like(state[0], math.nan),), one, [1.0])
