"""The pair statistics of CDNV and GNC2 from Gram tiles agree with exact differences, NC2's cosine measures over
tiles with the whole cosine matrix, and the Helmert coordinates ``Qᵀx`` from cumulative sums with the Helmert basis
itself (issue: no C × C matrix)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ufm_torch.metrics import (
    CollapseMetricWarning,
    cdnv,
    class_statistics,
    gnc2,
    layer_metrics_with_statistics,
    neural_collapse,
    variability,
)
from ufm_torch.metrics.neural_collapse import cosine_values, geometry_of_means, helmert_coordinates, tiled_cosine_values
from ufm_torch.metrics.variability import PairStatistics, exact_pair_statistics, tiled_pair_statistics
from ufm_torch.theory.deep_relu import helmert_basis

DOUBLE = torch.float64


def assert_relative(tiled: PairStatistics, exact: PairStatistics, tolerance: float) -> None:
    """Every field of ``tiled`` within ``tolerance`` of ``exact``, relative (absolute for exact zeros)."""
    for name, value, expected in zip(PairStatistics._fields, tiled, exact, strict=True):
        assert value.shape == expected.shape, name
        scale = expected.abs().clamp(min=1e-300)
        error = float(((value - expected).abs() / scale).max())
        assert error <= tolerance, f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("num_classes", [2, 3, 7, 50])
@pytest.mark.parametrize("batch", [(), (3,), (2, 4)])
def test_helmert_coordinates_equal_the_helmert_basis_product(num_classes: int, batch: tuple[int, ...]) -> None:
    rows = torch.randn(*batch, num_classes, 6, dtype=DOUBLE, generator=torch.Generator().manual_seed(num_classes))
    expected = helmert_basis(num_classes) @ rows  # deep_relu's basis is Qᵀ, (C − 1) × C
    torch.testing.assert_close(helmert_coordinates(rows), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize(
    ("num_classes", "batch", "dim"), [(2, (), 3), (3, (2,), 5), (17, (3,), 6), (31, (2, 3), 20), (64, (), 40)]
)
@pytest.mark.parametrize("tile", [1, 7, None])
def test_tiles_equal_differences_on_random_means(
    monkeypatch: pytest.MonkeyPatch, num_classes: int, batch: tuple[int, ...], dim: int, tile: int | None
) -> None:
    """Several tiles (a row at a time, 7 rows' worth, one tile) against the exact path, odd C, replicas."""
    generator = torch.Generator().manual_seed(num_classes + dim)
    points = torch.randn(*batch, num_classes, dim, dtype=DOUBLE, generator=generator)
    variances = torch.rand(*batch, num_classes, dtype=DOUBLE, generator=generator)
    if tile is not None:
        monkeypatch.setattr(variability, "GRAM_TILE", tile * num_classes * max(1, math.prod(batch)))
    exact = exact_pair_statistics(points, variances)
    tiled = tiled_pair_statistics(points, variances)
    if num_classes == 2:  # one pair: GNC2 is a variance of one value, 0
        assert float(tiled.gnc2.abs().max()) == 0
        tiled, exact = tiled._replace(gnc2=exact.gnc2), exact
    assert_relative(tiled, exact, 1e-12)


def test_tiles_broadcast_variances_over_shared_means() -> None:
    points = torch.randn(9, 4, dtype=DOUBLE, generator=torch.Generator().manual_seed(3))
    variances = torch.rand(5, 9, dtype=DOUBLE, generator=torch.Generator().manual_seed(4))
    tiled = tiled_pair_statistics(points, variances)
    exact = exact_pair_statistics(points.expand(5, 9, 4), variances)
    assert_relative(tiled, exact, 1e-12)


def test_tiles_on_a_simplex_etf(monkeypatch: pytest.MonkeyPatch) -> None:
    num_classes = 12
    monkeypatch.setattr(variability, "GRAM_TILE", 3 * num_classes)
    etf = math.sqrt(num_classes / (num_classes - 1)) * helmert_basis(num_classes).T  # unit rows, cos = −1/(C − 1)
    points = geometry_of_means(etf).coordinates
    variances = torch.full((num_classes,), 0.25, dtype=DOUBLE)
    exact, tiled = exact_pair_statistics(points, variances), tiled_pair_statistics(points, variances)
    distance = math.sqrt(2 * num_classes / (num_classes - 1))
    assert abs(float(tiled.closest) - distance) < 1e-14
    assert abs(float(tiled.cdnv) - 0.25 / distance**2) < 1e-15
    assert abs(float(tiled.gnc2)) < 1e-28 and abs(float(exact.gnc2)) < 1e-28  # every distance equal
    assert_relative(tiled._replace(gnc2=exact.gnc2), exact, 1e-12)


def test_nearly_coinciding_means_are_recomputed_from_differences(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two means 1e-9 apart relative to their norms: the Gram form has no correct digit there, the differences do."""
    generator = torch.Generator().manual_seed(5)
    points = torch.randn(2, 20, 8, dtype=DOUBLE, generator=generator) + 10
    points[:, 7] = points[:, 3] + 1e-8 * torch.randn(2, 8, dtype=DOUBLE, generator=generator)
    variances = torch.rand(2, 20, dtype=DOUBLE, generator=generator)
    monkeypatch.setattr(variability, "GRAM_TILE", 2 * 2 * 20)
    exact, tiled = exact_pair_statistics(points, variances), tiled_pair_statistics(points, variances)
    assert_relative(tiled, exact, 1e-10)
    monkeypatch.setattr(variability, "NEAR_PAIR", 0.0)  # no recompute: the close pair's distance is wrong
    unrepaired = tiled_pair_statistics(points, variances)
    assert float(((unrepaired.closest - exact.closest) / exact.closest).abs().max()) > 1e-6


def field_metrics(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        values = layer_metrics_with_statistics(class_statistics(features, labels, weight.shape[-2]), weight)
    values["warnings"] = sorted(str(warning.message) for warning in caught if warning.category is CollapseMetricWarning)
    return values


@pytest.mark.parametrize("num_classes", [2, 5, 13])
def test_layer_metrics_take_the_tiled_path_above_the_threshold(
    monkeypatch: pytest.MonkeyPatch, num_classes: int
) -> None:
    generator = torch.Generator().manual_seed(num_classes)
    labels = torch.arange(num_classes).repeat(4)
    centres = torch.randn(2, num_classes, 7, dtype=DOUBLE, generator=generator)
    features = centres[:, labels] + 0.3 * torch.randn(2, labels.numel(), 7, dtype=DOUBLE, generator=generator)
    weight = centres + 0.1 * torch.randn(centres.shape, dtype=DOUBLE, generator=generator)
    features[1, labels == 1] = features[1, labels == 1] - features[1, labels == 1].mean(0) + features[1].mean(0)
    exact = field_metrics(features, labels, weight)
    monkeypatch.setattr(variability, "GRAM_PAIR_THRESHOLD", 0)
    monkeypatch.setattr(variability, "GRAM_TILE", 2 * num_classes)
    monkeypatch.setattr(neural_collapse, "GRAM_TILE", 3 * num_classes)
    tiled = field_metrics(features, labels, weight)
    assert tiled.pop("warnings") == exact.pop("warnings")
    for name, value in exact.items():
        torch.testing.assert_close(tiled[name], value, rtol=1e-12, atol=0, equal_nan=True, msg=name)


def test_degenerate_means_are_masked_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """A centred mean at 0 (a zero row of the coordinates) and two coinciding means: NaN with the same warnings."""
    generator = torch.Generator().manual_seed(8)
    means = torch.randn(3, 6, 4, dtype=DOUBLE, generator=generator)
    means[0, 2] = (means[0].sum(0) - means[0, 2]) / 5  # μ_2 = μ_G
    means[1, 4] = means[1, 1]
    variances = torch.rand(3, 6, dtype=DOUBLE, generator=generator)
    results = []
    for threshold in (variability.GRAM_PAIR_THRESHOLD, 0):
        monkeypatch.setattr(variability, "GRAM_PAIR_THRESHOLD", threshold)
        with pytest.warns(CollapseMetricWarning) as caught:
            values = cdnv(means, variances), gnc2(means)
        results.append((values, sorted(str(warning.message) for warning in caught)))
    (exact, exact_warnings), (tiled, tiled_warnings) = results
    assert tiled_warnings == exact_warnings
    assert tiled[0].isnan().tolist() == [False, True, False] and tiled[1].isnan().tolist() == [True, True, False]
    for value, expected in zip(tiled, exact, strict=True):
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize(("num_classes", "batch"), [(2, ()), (3, (2,)), (17, (3,)), (40, (2, 3))])
@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_nc2_cosine_tiles_equal_the_whole_matrix(
    monkeypatch: pytest.MonkeyPatch, num_classes: int, batch: tuple[int, ...], rows: int
) -> None:
    generator = torch.Generator().manual_seed(num_classes)
    means = torch.randn(*batch, num_classes, 5, dtype=DOUBLE, generator=generator)
    unit = geometry_of_means(means).unit
    unit[..., 1, :] = 0  # a class mean at μ_G: a zero row
    monkeypatch.setattr(neural_collapse, "GRAM_TILE", 1 << 60)
    whole = cosine_values(unit)  # the whole matrix
    monkeypatch.setattr(neural_collapse, "GRAM_TILE", rows * num_classes * max(1, math.prod(batch)))
    tiled = cosine_values(unit)  # tiles of `rows` rows (one tile for 1000)
    for name, value in whole.items():
        torch.testing.assert_close(tiled[name], value, rtol=1e-12, atol=1e-15, msg=name)


def test_nc2_cosine_tiles_on_a_simplex_etf(monkeypatch: pytest.MonkeyPatch) -> None:
    num_classes = 9
    monkeypatch.setattr(neural_collapse, "GRAM_TILE", 2 * num_classes)
    unit = math.sqrt(num_classes / (num_classes - 1)) * helmert_basis(num_classes).T
    values = tiled_cosine_values(unit)
    assert all(float(value) < 1e-15 for value in values.values()), values
