"""The global-optimum oracle per replica: closed forms evaluated for many λ at once, the convex solve batched over
the distinct settings, and the distances to the optimum of each replica against its own problem."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from ufm_torch.theory.optimum import (
    CLOSED_FORMS,
    UFMProblem,
    collapse_threshold,
    cross_entropy_optimum,
    mse_optimum_imbalanced_without_bias,
    mse_optimum_with_free_bias,
    mse_optimum_with_regularised_bias,
    mse_optimum_without_bias,
    optimum_metrics,
    solve_optima,
    solve_optima_batched,
    solve_optimum,
)

LAMBDAS = torch.tensor([1e-3, 0.02, 0.05, 0.11, 0.2], dtype=torch.float64)
"""λ values on both sides of the balanced threshold of C = 4, N = 5 (λ = λ_W = λ_H ≈ 0.112)."""


@pytest.mark.parametrize(
    "closed_form",
    [
        lambda w, h, b, s: mse_optimum_without_bias(4, 5, w, h, "sum_squared"),
        lambda w, h, b, s: mse_optimum_with_free_bias(4, 5, w, h),
        lambda w, h, b, s: mse_optimum_with_regularised_bias(4, 5, w, h, b),
        lambda w, h, b, s: mse_optimum_imbalanced_without_bias((5, 5, 2, 2), w, h),
        lambda w, h, b, s: cross_entropy_optimum(4, 5, w, h, s),
    ],
)
def test_a_closed_form_of_many_lambdas_is_each_lambdas_closed_form(closed_form) -> None:
    weights, features = LAMBDAS, LAMBDAS.flip(0) * 0.7
    bias_decays, smoothing = LAMBDAS * 3, torch.linspace(0.0, 0.2, LAMBDAS.numel(), dtype=torch.float64)
    batched = closed_form(weights, features, bias_decays, smoothing)
    for g in range(LAMBDAS.numel()):
        one = closed_form(*(float(values[g]) for values in (weights, features, bias_decays, smoothing)))
        assert isinstance(one.value, float)
        for ours, theirs in zip(batched[:3], one[:3], strict=True):
            torch.testing.assert_close(ours[g], theirs, rtol=0, atol=0)
        assert float(batched.value[g]) == one.value


def problems(loss: str, counts: tuple[int, ...], bias: bool = True) -> list[UFMProblem]:
    """One problem per λ of :data:`LAMBDAS` (λ_W = λ, λ_H = 0.7λ), with λ_b and s varying too."""
    base = UFMProblem(loss, counts, 8, 0.1, 0.1, bias=bias)
    smoothing = 0.05 if loss == "cross_entropy" else 0.0
    return [replace(base, lambda_weight=float(lam), lambda_features=0.7 * float(lam), lambda_bias=0.1 * g,
                    label_smoothing=smoothing * g) for g, lam in enumerate(LAMBDAS)]  # fmt: skip


@pytest.mark.parametrize(("loss", "counts"), [("cross_entropy", (9, 9, 3, 3)), ("mean_squared", (9, 9, 3, 3))])
def test_the_batched_solver_gives_each_problem_its_own_solution(loss: str, counts: tuple[int, ...]) -> None:
    batch = problems(loss, counts)
    for together, alone in zip(solve_optima_batched(batch), (solve_optimum(problem) for problem in batch), strict=True):
        assert together.converged and together.problem == alone.problem
        assert together.value == pytest.approx(alone.value, rel=1e-12, abs=1e-14)
        torch.testing.assert_close(together.classifier_gram, alone.classifier_gram, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(together.bias, alone.bias, rtol=1e-10, atol=1e-12)
        assert together.weight_is_zero == alone.weight_is_zero


def test_solve_optima_takes_the_closed_form_where_one_applies_and_the_solver_elsewhere() -> None:
    balanced = problems("cross_entropy", (5, 5, 5, 5)) + problems("mean_squared", (5, 5, 5, 5), bias=False)
    for problem in balanced:
        assert any(closed_form.covers(problem) for closed_form in CLOSED_FORMS)
        optimum, solved = solve_optima([problem]), solve_optimum(problem)
        torch.testing.assert_close(optimum.classifier_gram[0], solved.classifier_gram, rtol=1e-7, atol=1e-8)
        assert float(optimum.value[0]) == pytest.approx(solved.value, rel=1e-9, abs=1e-12)
    imbalanced = problems("cross_entropy", (9, 9, 3, 3))
    assert not any(closed_form.covers(problem) for problem in imbalanced for closed_form in CLOSED_FORMS)
    repeated = [imbalanced[1], imbalanced[3], imbalanced[1]]
    optima = solve_optima(repeated)
    assert torch.equal(optima.classifier_gram[0], optima.classifier_gram[2])
    torch.testing.assert_close(optima.classifier_gram[1], solve_optimum(imbalanced[3]).classifier_gram)


def test_each_replica_is_measured_against_its_own_optimum() -> None:
    batch = problems("mean_squared", (5, 5, 5, 5))
    optima = solve_optima(batch)
    labels = batch[0].class_major_labels()
    points = [solve_optimum(problem).factorisation(labels) for problem in batch]
    features, weight, bias = (torch.stack(parts) for parts in zip(*points, strict=True))
    distances = optimum_metrics(features, weight, bias, labels, optima)
    assert all(values.shape == (len(batch),) for values in distances.values())
    assert all(float(values.abs().max()) < 1e-7 for values in distances.values())
    swapped = optimum_metrics(features.flip(0), weight.flip(0), bias.flip(0), labels, optima)
    assert float(swapped["optimum/classifier_gram"].max()) > 0.1


@pytest.mark.parametrize(("loss", "smoothing"), [("mean_squared", 0.0), ("sum_squared", 0.0), ("cross_entropy", 0.2)])
def test_the_weight_vanishes_exactly_past_the_collapse_threshold(loss: str, smoothing: float) -> None:
    product = collapse_threshold(loss, 4, 5, smoothing)
    base = UFMProblem(loss, (5, 5, 5, 5), 8, 1.0, 1.0, label_smoothing=smoothing)
    below, above = (replace(base, lambda_weight=math.sqrt(product * f), lambda_features=math.sqrt(product * f))
                    for f in (0.98, 1.02))  # fmt: skip
    optima = solve_optima([below, above])
    assert optima.weight_is_zero.tolist() == [False, True]
