"""The softmax-code solver reaches the known optima (simplex ETF, regular polygon, orthoplex, tetrahedron,
octahedron, icosahedron), reports the certified margin of the code it returns, and is deterministic."""

from __future__ import annotations

import math

import pytest
import torch

from ufm_torch.metrics.hyperspherical import max_pairwise_cosine, softmax_code_margin
from ufm_torch.theory.softmax_code import softmax_code

QUICK = {"restarts": 4, "stages": 8, "steps": 100, "polish_stages": 4}
"""A quarter of the default effort (about 0.2 s a case here): enough for these sizes."""

KNOWN_OPTIMA = [
    # (C, p, ρ, max cosine, what)
    (3, 2, 3 / 2, -1 / 2, "simplex ETF (triangle)"),
    (5, 4, 5 / 4, -1 / 4, "simplex ETF"),
    (4, 3, 4 / 3, -1 / 3, "tetrahedron"),
    (5, 2, 1 - math.cos(2 * math.pi / 5), math.cos(2 * math.pi / 5), "regular pentagon"),
    (8, 2, 1 - math.cos(2 * math.pi / 8), math.cos(2 * math.pi / 8), "regular octagon"),
    (6, 3, 1.0, 0.0, "octahedron (orthoplex)"),
    (8, 4, 1.0, 0.0, "orthoplex"),
    (12, 3, 1 - 1 / math.sqrt(5), 1 / math.sqrt(5), "icosahedron"),
]
MARGIN_TOLERANCE = 1e-8
"""ρ of the code found against the optimum (measured: at most 3e-10, the icosahedron)."""
COSINE_TOLERANCE = 1e-5
"""The max cosine, which ρ pins only to second order in some directions (measured: 2e-6, the tetrahedron)."""


@pytest.mark.parametrize(("num_classes", "dim", "margin", "cosine", "what"), KNOWN_OPTIMA)
def test_solver_reaches_the_known_softmax_code(num_classes: int, dim: int, margin: float, cosine: float,
                                               what: str) -> None:  # fmt: skip
    code = softmax_code(num_classes, dim, **QUICK)
    assert code.weight.shape == (num_classes, dim) and code.weight.dtype == torch.float64
    assert abs(float(code.margin) - margin) < MARGIN_TOLERANCE, what
    assert abs(float(code.max_cosine) - cosine) < COSINE_TOLERANCE, what


def test_the_reported_margin_is_the_certified_margin_of_the_returned_unit_rows() -> None:
    code = softmax_code(20, 3, **QUICK)
    assert torch.allclose(code.weight.norm(dim=-1), torch.ones(20, dtype=torch.float64), atol=1e-14)
    assert float(code.margin) == float(softmax_code_margin(code.weight))
    assert float(code.max_cosine) == float(max_pairwise_cosine(code.weight))
    assert code.start_margins.shape == (4,) and bool((code.start_margins <= code.margin).all())


def test_best_found_code_beats_random_unit_rows_and_is_deterministic_given_the_seed() -> None:
    code = softmax_code(16, 3, **QUICK, seed=3)
    random_rows = torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert float(code.margin) > float(softmax_code_margin(random_rows)) + 0.1
    again = softmax_code(16, 3, **QUICK, seed=3)
    assert torch.equal(again.weight, code.weight)


def test_a_code_needs_two_classes() -> None:
    with pytest.raises(ValueError, match="C ≥ 2"):
        softmax_code(1, 3)
