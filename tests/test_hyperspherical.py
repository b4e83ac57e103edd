"""The metrics for any C against p (GNC1, GNC3, the softmax-code margin ρ, the Tammes objective, hyperspherical
energies) take their known values on exact codes, agree with brute force and with an independent QP solver, do not
depend on tiling, rotation or replicas, and are NaN with a warning where undefined."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from ufm_torch.metrics import CollapseMetricWarning, nc_metrics
from ufm_torch.metrics import hyperspherical as spherical
from ufm_torch.metrics.convex_hull import hull_distances
from ufm_torch.metrics.hyperspherical import (
    gnc1,
    gnc3,
    hyperspherical_energy,
    log_hyperspherical_energy,
    max_pairwise_cosine,
    min_pairwise_angle,
    softmax_code_margin,
    softmax_code_margin_bounds,
)

DOUBLE = torch.float64
EXACT = 1e-10
"""Agreement with closed forms and brute force: the hull solver certifies its distances to 1e-10."""


def random_rotation(dim: int, seed: int) -> torch.Tensor:
    """A Haar-random orthogonal ``dim × dim`` matrix."""
    q, r = torch.linalg.qr(torch.randn(dim, dim, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed)))
    return q * torch.sign(torch.diagonal(r))


def simplex_etf(num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """``C ≤ p + 1`` unit vectors of ``R^p`` with ``⟨w_j, w_k⟩ = −1/(C−1)``, randomly rotated."""
    centred = torch.eye(num_classes, dtype=DOUBLE) - 1 / num_classes
    basis, _ = torch.linalg.qr(centred)  # an orthonormal basis of span(centred) ⊂ R^C, first C − 1 columns
    coordinates = centred @ basis[:, : num_classes - 1] * math.sqrt(num_classes / (num_classes - 1))
    rows = torch.zeros(num_classes, dim, dtype=DOUBLE)
    rows[:, : num_classes - 1] = coordinates
    return rows @ random_rotation(dim, seed)


def regular_polygon(num_classes: int) -> torch.Tensor:
    """The vertices of the regular C-gon on the unit circle."""
    angles = 2 * math.pi * torch.arange(num_classes, dtype=DOUBLE) / num_classes
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def orthoplex(dim: int) -> torch.Tensor:
    """``±e_i``: ``C = 2p`` rows."""
    return torch.cat([torch.eye(dim, dtype=DOUBLE), -torch.eye(dim, dtype=DOUBLE)])


def icosahedron() -> torch.Tensor:
    """The 12 vertices ``(0, ±1, ±φ)`` and their cyclic permutations, normalised."""
    golden = (1 + math.sqrt(5)) / 2
    rows = [row for a in (1, -1) for b in (golden, -golden) for row in ((0, a, b), (a, b, 0), (b, 0, a))]
    rows = torch.tensor(rows, dtype=DOUBLE)
    return rows / rows.norm(dim=-1, keepdim=True)


PLATONIC = {
    # name: (rows, max cosine, ρ); the Tammes optima for C = 4, 6, 12 on S² (Fejes Tóth 1943)
    "tetrahedron": (simplex_etf(4, 3), -1 / 3, 4 / 3),
    "octahedron": (orthoplex(3), 0.0, 1.0),
    "icosahedron": (icosahedron(), 1 / math.sqrt(5), 1 - 1 / math.sqrt(5)),
}


@pytest.mark.parametrize(("num_classes", "dim"), [(2, 1), (3, 2), (4, 3), (5, 7), (10, 9), (10, 30)])
def test_simplex_etf_has_margin_c_over_c_minus_one_and_cosines_minus_one_over_c_minus_one(
    num_classes: int, dim: int
) -> None:
    rows = simplex_etf(num_classes, dim, seed=num_classes)
    squared_distance = 2 * num_classes / (num_classes - 1)  # ‖w_j − w_k‖² = 2 + 2/(C−1)
    assert abs(softmax_code_margin(rows) - num_classes / (num_classes - 1)) < EXACT
    assert abs(max_pairwise_cosine(rows) + 1 / (num_classes - 1)) < EXACT
    assert abs(min_pairwise_angle(rows) - math.acos(-1 / (num_classes - 1))) < 1e-8
    assert abs(hyperspherical_energy(rows) - squared_distance**-0.5) < EXACT
    assert abs(hyperspherical_energy(rows, exponent=2.0) - 1 / squared_distance) < EXACT
    assert abs(log_hyperspherical_energy(rows) + 0.5 * math.log(squared_distance)) < EXACT
    distances = hull_distances(rows)
    assert torch.allclose(distances.distances, torch.full((num_classes,), num_classes / (num_classes - 1),
                                                          dtype=DOUBLE), atol=EXACT)  # fmt: skip


@pytest.mark.parametrize("num_classes", range(3, 13))
def test_regular_polygon_has_margin_one_minus_cos_two_pi_over_c(num_classes: int) -> None:
    rows = regular_polygon(num_classes)
    angle = 2 * math.pi / num_classes
    bounds = softmax_code_margin_bounds(rows)
    assert abs(bounds.value - (1 - math.cos(angle))) < EXACT and bounds.value - bounds.lower_bound < EXACT
    assert abs(max_pairwise_cosine(rows) - math.cos(angle)) < EXACT
    assert abs(min_pairwise_angle(rows) - angle) < 1e-8
    assert int(bounds.rows_solved) == 1  # the bound 1 − max cos is attained: one hull distance settles ρ


@pytest.mark.parametrize("dim", [2, 3, 5, 8])
def test_orthoplex_has_margin_one_and_orthogonal_neighbours(dim: int) -> None:
    rows = orthoplex(dim) @ random_rotation(dim, seed=dim)
    assert abs(softmax_code_margin(rows) - 1) < EXACT
    assert abs(max_pairwise_cosine(rows)) < EXACT
    assert abs(min_pairwise_angle(rows) - math.pi / 2) < 1e-8


@pytest.mark.parametrize("name", list(PLATONIC))
def test_tammes_optima_on_the_sphere_have_their_known_cosine_and_margin(name: str) -> None:
    rows, cosine, margin = PLATONIC[name]
    bounds = softmax_code_margin_bounds(rows)
    assert abs(max_pairwise_cosine(rows) - cosine) < EXACT
    assert abs(bounds.value - margin) < EXACT and abs(bounds.lower_bound - margin) < EXACT
    assert int(bounds.rows_solved) == 1


def brute_force_hull_distance(rows: np.ndarray, row: int) -> float:
    """``dist(w_k, conv{w_j : j ≠ k})`` by enumerating every set of at most ``p + 1`` other rows: the projection of
    ``w_k`` onto the set's affine hull, kept where its weights are ≥ 0 (the minimum-norm point is such a projection
    onto its face)."""
    others = [j for j in range(rows.shape[0]) if j != row]
    best = math.inf
    for size in range(1, rows.shape[1] + 2):
        for subset in itertools.combinations(others, size):
            vertices = rows[list(subset)]
            system = np.block([[2 * vertices @ vertices.T, np.ones((size, 1))], [np.ones((1, size)), np.zeros((1, 1))]])
            solution = np.linalg.lstsq(system, np.append(2 * vertices @ rows[row], 1.0), rcond=None)[0]
            weights = solution[:size]
            if weights.min() >= -1e-12 and abs(weights.sum() - 1) < 1e-12:
                best = min(best, float(np.linalg.norm(rows[row] - weights @ vertices)))
    return best


@pytest.mark.parametrize(("num_classes", "dim", "seed"), [(8, 3, 0), (8, 3, 1), (9, 4, 2), (6, 2, 3)])
def test_hull_distances_match_face_enumeration_on_random_rows(num_classes: int, dim: int, seed: int) -> None:
    rows = torch.randn(num_classes, dim, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))
    rows = rows / rows.norm(dim=-1, keepdim=True)
    expected = [brute_force_hull_distance(rows.numpy(), k) for k in range(num_classes)]
    distances = hull_distances(rows)
    assert torch.allclose(distances.distances, torch.tensor(expected, dtype=DOUBLE), atol=EXACT)
    assert bool((distances.lower_bounds <= distances.distances + 1e-15).all())
    assert abs(softmax_code_margin(rows) - min(expected)) < EXACT


def slsqp_hull_distance(rows: np.ndarray, row: int) -> float:
    """``min_{λ∈Δ} ‖w_k − Σ_{j≠k} λ_j w_j‖`` by scipy's SLSQP (an independent QP solver)."""
    vertices = np.delete(rows, row, axis=0)
    count = vertices.shape[0]

    def objective(weights: np.ndarray) -> tuple[float, np.ndarray]:
        residual = rows[row] - weights @ vertices
        return float(residual @ residual), -2 * vertices @ residual

    result = minimize(
        objective, np.full(count, 1 / count), jac=True, method="SLSQP", bounds=[(0, 1)] * count,
        constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1, "jac": lambda w: np.ones_like(w)}],
        options={"ftol": 1e-16, "maxiter": 1000},
    )  # fmt: skip
    return math.sqrt(result.fun)


def test_margin_matches_scipy_slsqp_on_a_random_twenty_four_by_six_matrix() -> None:
    rows = torch.randn(24, 6, dtype=DOUBLE, generator=torch.Generator().manual_seed(7))
    unit = rows / rows.norm(dim=-1, keepdim=True)
    expected = np.array([slsqp_hull_distance(unit.numpy(), k) for k in range(24)])
    assert np.abs(hull_distances(unit).distances.numpy() - expected).max() < 1e-9  # measured 2e-15
    assert abs(float(softmax_code_margin(rows)) - expected.min()) < 1e-9  # rows of any length: ρ of the ŵ_k


def full_matrix_values(rows: torch.Tensor) -> dict[str, float]:
    """The pairwise metrics from the whole ``C × C`` matrix, straight from the definitions."""
    unit = rows / rows.norm(dim=-1, keepdim=True)
    cosines = unit @ unit.T
    off = ~torch.eye(rows.shape[0], dtype=torch.bool)
    distances = (unit[:, None] - unit[None]).norm(dim=-1)[off]
    return {
        "max_cosine": float(cosines[off].max()),
        "energy": float(distances.pow(-1).mean()),
        "energy_2": float(distances.pow(-2).mean()),
        "log_energy": float(distances.reciprocal().log().mean()),
    }


def pairwise_values(rows: torch.Tensor) -> dict[str, float]:
    """The same metrics from the tiled functions."""
    return {
        "max_cosine": float(max_pairwise_cosine(rows)),
        "energy": float(hyperspherical_energy(rows)),
        "energy_2": float(hyperspherical_energy(rows, exponent=2.0)),
        "log_energy": float(log_hyperspherical_energy(rows)),
    }


def test_tiled_and_untiled_kernels_agree_with_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = torch.randn(57, 5, dtype=DOUBLE, generator=torch.Generator().manual_seed(3)) * 3
    whole = full_matrix_values(rows)
    untiled = pairwise_values(rows) | {"margin": float(softmax_code_margin(rows))}
    monkeypatch.setattr(spherical, "PAIR_TILE", 7 * 57)  # 7 rows per tile, the last one short
    tiled = pairwise_values(rows) | {"margin": float(softmax_code_margin(rows))}
    for name, value in whole.items():
        assert abs(untiled[name] - value) < 1e-12 * max(1, abs(value)), name
        assert abs(tiled[name] - value) < 1e-12 * max(1, abs(value)), name
    assert abs(tiled["margin"] - untiled["margin"]) < 1e-14


def test_metrics_are_invariant_under_rotations_and_row_scalings_and_batched_per_replica() -> None:
    generator = torch.Generator().manual_seed(11)
    rows = torch.randn(3, 20, 4, dtype=DOUBLE, generator=generator)
    means = torch.randn(3, 20, 4, dtype=DOUBLE, generator=generator)
    moved = rows @ random_rotation(4, seed=5) * torch.rand(3, 20, 1, dtype=DOUBLE, generator=generator).add(0.1)
    moved_means = means @ random_rotation(4, seed=5)
    for metric in (max_pairwise_cosine, min_pairwise_angle, hyperspherical_energy, log_hyperspherical_energy,
                   softmax_code_margin):  # fmt: skip
        values = metric(rows)
        assert values.shape == (3,) and values.dtype == DOUBLE
        assert torch.allclose(metric(moved), values, atol=1e-12, rtol=1e-12), metric.__name__
        assert torch.allclose(torch.stack([metric(replica) for replica in rows]), values, atol=1e-14, rtol=0)
    assert torch.allclose(gnc3(moved_means, moved), gnc3(means, rows), atol=1e-14)


def test_margin_bounds_with_few_rows_bracket_the_margin() -> None:
    rows = torch.randn(40, 5, dtype=DOUBLE, generator=torch.Generator().manual_seed(4))
    exact = softmax_code_margin_bounds(rows)
    assert int(exact.rows_solved) <= 40 and exact.value - exact.lower_bound <= 1e-10
    partial = softmax_code_margin_bounds(rows, max_rows=3)
    assert int(partial.rows_solved) == 3
    assert partial.lower_bound <= exact.value + 1e-15 and exact.value <= partial.value + 1e-15


def test_a_row_inside_the_hull_of_the_others_gives_margin_zero() -> None:
    rows = torch.cat([regular_polygon(6), regular_polygon(6)[:1]])  # a repeated vertex
    assert float(softmax_code_margin(rows)) < 1e-12
    assert max_pairwise_cosine(rows) == pytest.approx(1.0, abs=1e-15)
    assert math.isinf(hyperspherical_energy(rows)) and math.isinf(log_hyperspherical_energy(rows))


def test_undefined_inputs_give_nan_with_a_warning() -> None:
    rows = torch.randn(2, 5, 3, dtype=DOUBLE, generator=torch.Generator().manual_seed(0))
    rows[1, 2] = 0
    for metric in (max_pairwise_cosine, hyperspherical_energy, log_hyperspherical_energy, softmax_code_margin):
        with pytest.warns(CollapseMetricWarning, match="1 of 2 replicas"):
            values = metric(rows)
        assert math.isfinite(values[0]) and math.isnan(values[1])
    with pytest.warns(CollapseMetricWarning, match="C = 1"):
        assert math.isnan(max_pairwise_cosine(torch.ones(1, 3, dtype=DOUBLE)))
    with pytest.raises(ValueError, match="exponent"):
        hyperspherical_energy(rows[0], exponent=0.0)


def balanced_features(num_classes: int, per_class: int, dim: int, noise: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Features ``(n, p)`` around random class centres, labels ``(n,)`` (shuffled) and the centres."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, dtype=DOUBLE, generator=generator)
    labels = torch.arange(num_classes).repeat(per_class)[torch.randperm(num_classes * per_class, generator=generator)]
    features = centres[labels] + noise * torch.randn(labels.numel(), dim, dtype=DOUBLE, generator=generator)
    return features, labels, centres


def jiang_gnc1(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """GNC1 as Jiang et al.'s script computes it: normalised features, ``Σ_W``, ``Σ_B``, ``tr(Σ_W pinv(Σ_B))/C``."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    means = np.stack([unit[labels == c].mean(axis=0) for c in range(num_classes)])
    global_mean = unit.mean(axis=0)
    centred = unit - means[labels]
    within = centred.T @ centred / len(labels)
    between = (means - global_mean).T @ (means - global_mean) / num_classes
    return float(np.trace(within @ np.linalg.pinv(between)) / num_classes)


@pytest.mark.parametrize(("num_classes", "dim"), [(12, 4), (5, 9), (30, 6)])
def test_gnc1_matches_jiang_et_al_script_for_balanced_classes(num_classes: int, dim: int) -> None:
    features, labels, _ = balanced_features(num_classes, 6, dim, noise=0.3, seed=num_classes)
    expected = jiang_gnc1(features.numpy(), labels.numpy(), num_classes)
    assert float(gnc1(features, labels, num_classes)) == pytest.approx(expected, rel=1e-9)


def test_gnc1_is_nc1_of_the_normalised_features_invariant_to_their_lengths_and_zero_at_collapse() -> None:
    features, labels, centres = balanced_features(6, 5, 8, noise=0.4, seed=1)
    unit = features / features.norm(dim=-1, keepdim=True)
    weight = torch.randn(6, 8, dtype=DOUBLE)
    nc1 = nc_metrics(unit, labels, weight, torch.zeros(6, dtype=DOUBLE))["nc1"]
    assert float(gnc1(features, labels, 6)) == pytest.approx(float(nc1), rel=1e-10)
    lengths = torch.rand(features.shape[0], 1, dtype=DOUBLE).add(0.5)
    assert float(gnc1(features * lengths, labels, 6)) == pytest.approx(float(nc1), rel=1e-10)
    collapsed = centres[labels] * lengths  # every feature of a class in the same direction
    assert abs(float(gnc1(collapsed, labels, 6))) < 1e-20
    batched = gnc1(torch.stack([features, collapsed]), labels, 6)
    assert batched.shape == (2,) and float(batched[0]) == pytest.approx(float(nc1), rel=1e-10)


def test_gnc1_is_nan_with_a_warning_for_a_zero_feature_or_an_empty_class() -> None:
    features, labels, _ = balanced_features(4, 3, 3, noise=0.1, seed=2)
    features[0] = 0
    with pytest.warns(CollapseMetricWarning, match="gnc1"):
        assert math.isnan(gnc1(features, labels, 4))
    with pytest.warns(CollapseMetricWarning, match="gnc1"):
        assert math.isnan(gnc1(features[1:], labels[1:], 5))


def test_gnc3_is_zero_for_a_classifier_pointing_at_its_means_two_when_opposite_and_matches_the_formula() -> None:
    generator = torch.Generator().manual_seed(9)
    means = torch.randn(7, 3, dtype=DOUBLE, generator=generator)
    lengths = torch.rand(7, 1, dtype=DOUBLE, generator=generator).add(0.1)
    assert abs(float(gnc3(means, means * lengths))) < 1e-15
    assert float(gnc3(means, -means)) == pytest.approx(2.0, abs=1e-15)
    weight = torch.randn(7, 3, dtype=DOUBLE, generator=generator)
    cosines = [float(weight[k] @ means[k] / (weight[k].norm() * means[k].norm())) for k in range(7)]
    assert float(gnc3(means, weight)) == pytest.approx(np.mean([1 - c for c in cosines]), abs=1e-15)
    weight[3] = 0
    with pytest.warns(CollapseMetricWarning, match="gnc3"):
        assert math.isnan(gnc3(means, weight))
