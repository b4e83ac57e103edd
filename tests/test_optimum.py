"""The global-optimum oracle of the regularised UFM, against closed forms and against L-BFGS on the full problem."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from ufm_torch.metrics.tags import OPTIMUM_TAGS
from ufm_torch.objectives.losses import LOSSES
from ufm_torch.theory import (
    UFMOptimum,
    UFMProblem,
    bias_error,
    class_mean_gram,
    classifier_gram_error,
    cross_entropy_optimum,
    feature_gram_error,
    loss_gap,
    mse_optimum_imbalanced_without_bias,
    mse_optimum_with_free_bias,
    mse_optimum_with_regularised_bias,
    mse_optimum_without_bias,
    optimum_metrics,
    solve_optimum,
    ufm_objective,
)
from ufm_torch.theory.optimum import ClosedFormOptimum

DTYPE = torch.float64


def mean_lambdas(beta: float, samples_per_class: int, ratio: float = 2.0) -> tuple[float, float]:
    """``(λ_W, λ_H)`` with ``√(Nλ_Wλ_H) = β`` and ``λ_H/λ_W = ratio``."""
    root = math.sqrt(samples_per_class)
    return beta / (math.sqrt(ratio) * root), beta * math.sqrt(ratio) / root


def problem_for(
    loss: str,
    num_classes: int,
    samples_per_class: int,
    beta: float,
    lambda_bias: float = 0.0,
    bias: bool = True,
    label_smoothing: float = 0.0,
) -> UFMProblem:
    """A balanced problem whose mean-reduced β is ``beta`` (for ``sum_squared`` every λ is n times the mean one)."""
    scale = num_classes * samples_per_class if loss == "sum_squared" else 1
    lambda_weight, lambda_features = mean_lambdas(beta, samples_per_class)
    return UFMProblem(
        loss,
        (samples_per_class,) * num_classes,
        num_classes + 2,
        scale * lambda_weight,
        scale * lambda_features,
        scale * lambda_bias,
        bias,
        label_smoothing,
    )


def assert_matches(optimum: UFMOptimum, expected: ClosedFormOptimum, tolerance: float = 1e-8) -> None:
    """Grams, bias (modulo 1 when the optimal biases form a line) and f* agree to ``tolerance`` (relative to ≥ 1)."""
    assert optimum.converged
    for actual, wanted in (
        (optimum.classifier_gram, expected.classifier_gram),
        (optimum.feature_gram, expected.feature_gram),
    ):
        scale = max(1.0, float(torch.linalg.matrix_norm(wanted)))
        torch.testing.assert_close(actual, wanted, rtol=0, atol=tolerance * scale)
    difference = optimum.bias - expected.bias
    if optimum.problem.bias_shift_invariant:
        difference = difference - difference.mean()
    assert float(difference.abs().max()) < tolerance
    assert abs(optimum.value - expected.value) < tolerance * max(1.0, abs(expected.value))


# ---------------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("loss", ["mean_squared", "sum_squared"])
@pytest.mark.parametrize("num_classes,samples_per_class", [(2, 1), (3, 4), (5, 2)])
@pytest.mark.parametrize("c_beta", [0.3, 0.9, 1.5])
def test_mse_oracle_matches_tirer_bruna_and_zhou(
    loss: str, num_classes: int, samples_per_class: int, c_beta: float
) -> None:
    beta = c_beta / num_classes
    lambda_weight, lambda_features = mean_lambdas(beta, samples_per_class)
    scale = num_classes * samples_per_class if loss == "sum_squared" else 1
    lambdas = (num_classes, samples_per_class, scale * lambda_weight, scale * lambda_features)
    without_bias = solve_optimum(problem_for(loss, num_classes, samples_per_class, beta, bias=False))
    assert_matches(without_bias, mse_optimum_without_bias(*lambdas, loss=loss))
    free_bias = solve_optimum(problem_for(loss, num_classes, samples_per_class, beta))
    assert_matches(free_bias, mse_optimum_with_free_bias(*lambdas, loss=loss))
    assert without_bias.weight_is_zero == free_bias.weight_is_zero == (c_beta >= 1)


@pytest.mark.parametrize("loss", ["mean_squared", "sum_squared"])
@pytest.mark.parametrize("lambda_bias", [0.05, 1.0])
@pytest.mark.parametrize("beta_over_threshold", [0.4, 0.9, 1.5, "c_beta_above_one"])
def test_mse_oracle_matches_regularised_bias_closed_form(
    loss: str, lambda_bias: float, beta_over_threshold: float | str
) -> None:
    num_classes, samples_per_class = 3, 2
    threshold = lambda_bias / (num_classes * (1 + lambda_bias))
    beta = 1.4 / num_classes if beta_over_threshold == "c_beta_above_one" else beta_over_threshold * threshold
    problem = problem_for(loss, num_classes, samples_per_class, beta, lambda_bias=lambda_bias)
    optimum = solve_optimum(problem)
    expected = mse_optimum_with_regularised_bias(
        num_classes, samples_per_class, problem.lambda_weight, problem.lambda_features, problem.lambda_bias, loss
    )
    assert_matches(optimum, expected)
    assert optimum.weight_is_zero == (beta_over_threshold == "c_beta_above_one")
    if optimum.weight_is_zero:  # W = 0, but the bias is still 1/(C(1 + λ_b)) and nonzero
        assert float(optimum.bias.min()) > 0.1 / num_classes


@pytest.mark.parametrize("loss", ["mean_squared", "sum_squared"])
@pytest.mark.parametrize("class_counts", [(1, 2, 4), (5, 1, 3, 2)])
@pytest.mark.parametrize("collapse", [0.5, 1.5, 2.5])
def test_mse_oracle_matches_dang_imbalanced_closed_form(
    loss: str, class_counts: tuple[int, ...], collapse: float
) -> None:
    """``nτ = collapse·√n_min``: no class, the smallest, or several collapse to zero (minority collapse)."""
    n = sum(class_counts)
    tau = collapse * math.sqrt(min(class_counts)) / n
    scale = n if loss == "sum_squared" else 1
    lambda_weight, lambda_features = scale * tau / 1.5, scale * tau * 1.5
    problem = UFMProblem(loss, class_counts, len(class_counts) + 2, lambda_weight, lambda_features, bias=False)
    expected = mse_optimum_imbalanced_without_bias(class_counts, lambda_weight, lambda_features, loss)
    assert_matches(solve_optimum(problem), expected)
    collapsed = torch.diagonal(expected.classifier_gram) == 0
    assert bool(collapsed[torch.tensor(class_counts).argmin()]) == (collapse >= 1)


@pytest.mark.parametrize("num_classes,samples_per_class", [(2, 3), (4, 1), (5, 2)])
@pytest.mark.parametrize("c_beta", [0.2, 0.8, 1.5])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_oracle_matches_zhu_closed_form(
    num_classes: int, samples_per_class: int, c_beta: float, label_smoothing: float
) -> None:
    beta = c_beta * (1 - label_smoothing) / num_classes
    lambda_weight, lambda_features = mean_lambdas(beta, samples_per_class)
    expected = cross_entropy_optimum(num_classes, samples_per_class, lambda_weight, lambda_features, label_smoothing)
    for bias, lambda_bias in ((False, 0.0), (True, 0.01), (True, 0.0)):
        problem = problem_for("cross_entropy", num_classes, samples_per_class, beta, lambda_bias, bias, label_smoothing)
        optimum = solve_optimum(problem)
        assert_matches(optimum, expected)
        assert optimum.weight_is_zero == (c_beta >= 1)


def test_zhu_gain_is_log_of_inverse_beta_minus_c_minus_one_without_smoothing() -> None:
    num_classes, samples_per_class, beta = 4, 3, 0.05
    lambda_weight, lambda_features = mean_lambdas(beta, samples_per_class)
    gamma = math.sqrt(samples_per_class * lambda_features / lambda_weight)
    gram = cross_entropy_optimum(num_classes, samples_per_class, lambda_weight, lambda_features).classifier_gram
    centring = torch.eye(num_classes, dtype=DTYPE) - 1.0 / num_classes
    expected = gamma * math.log(1 / beta - (num_classes - 1)) * centring
    torch.testing.assert_close(gram, expected, rtol=1e-14, atol=0)


def test_sum_squared_is_n_times_mean_squared_with_lambdas_divided_by_n() -> None:
    counts, lambdas = (2, 3, 5), (0.3, 0.2, 0.1)
    n = sum(counts)
    summed = solve_optimum(UFMProblem("sum_squared", counts, 4, *lambdas))
    mean = solve_optimum(UFMProblem("mean_squared", counts, 4, *(value / n for value in lambdas)))
    assert summed.value == pytest.approx(n * mean.value, rel=1e-12)
    for name in ("logit_matrix", "bias", "classifier_gram", "feature_gram"):
        torch.testing.assert_close(getattr(summed, name), getattr(mean, name), rtol=0, atol=1e-10)


# ------------------------------------------------------------------------------- the full problem, by L-BFGS


def objective_closure(
    optimiser: torch.optim.Optimizer,
    point: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    labels: torch.Tensor,
    problem: UFMProblem,
) -> Callable[[], torch.Tensor]:
    """The L-BFGS closure: f(W, H, b) at ``point`` with its gradient."""

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = ufm_objective(*point, labels, problem)
        value.backward()
        return value

    return closure


def full_problem_minimum(
    problem: UFMProblem, starts: int = 4
) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Best of ``starts`` L-BFGS runs (strong Wolfe, float64) on f(W, H, b) with W, H, b free."""
    labels = problem.class_major_labels()
    best: tuple[float, torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
    for start in range(starts):
        generator = torch.Generator().manual_seed(start)
        shapes = [(problem.num_samples, problem.feature_dim), (problem.num_classes, problem.feature_dim)]
        shapes += [(problem.num_classes,)] if problem.bias else []
        parameters = [(0.5 * torch.randn(shape, generator=generator, dtype=DTYPE)).requires_grad_() for shape in shapes]
        features, weight, bias = (*parameters, None)[:3]
        optimiser = torch.optim.LBFGS(
            parameters,
            lr=1,
            max_iter=500,
            history_size=50,
            tolerance_grad=1e-14,
            tolerance_change=1e-20,
            line_search_fn="strong_wolfe",
        )
        closure = objective_closure(optimiser, (features, weight, bias), labels, problem)
        for _ in range(6):
            optimiser.step(closure)
        with torch.no_grad():
            value = float(ufm_objective(features, weight, bias, labels, problem))
        if best is None or value < best[0]:
            best = (value, features.detach(), weight.detach(), None if bias is None else bias.detach())
    assert best is not None
    return best


FULL_PROBLEMS = [
    UFMProblem("mean_squared", (2, 3, 5), 5, 5e-3, 1e-2, bias=False),
    UFMProblem("mean_squared", (3, 3, 3), 5, 1e-2, 2e-2),
    UFMProblem("mean_squared", (2, 3, 5), 5, 1e-2, 2e-2, lambda_bias=0.1),
    UFMProblem("mean_squared", (3, 3, 3), 5, 0.3, 0.2, lambda_bias=0.1),  # W = 0, b ≠ 0
    UFMProblem("sum_squared", (2, 3, 5), 5, 0.3, 0.2),
    UFMProblem("sum_squared", (1, 2, 4), 4, 0.5, 0.4, lambda_bias=2.0),
    UFMProblem("cross_entropy", (2, 3, 5), 5, 1e-2, 2e-2, bias=False),
    UFMProblem("cross_entropy", (3, 3, 3), 5, 1e-2, 2e-2, lambda_bias=1e-2),
    UFMProblem("cross_entropy", (2, 3, 5), 5, 1e-2, 2e-2, lambda_bias=1e-2),
    UFMProblem("cross_entropy", (2, 3, 5), 5, 1e-2, 2e-2),
    UFMProblem("cross_entropy", (2, 3, 5), 5, 1e-2, 2e-2, lambda_bias=1e-3, label_smoothing=0.1),
    UFMProblem("cross_entropy", (1, 2, 4, 3), 6, 2e-2, 1e-2, label_smoothing=0.2),
    UFMProblem("cross_entropy", (3, 3, 3), 5, 0.3, 0.2),  # W = 0
]


@pytest.mark.parametrize(
    "problem",
    FULL_PROBLEMS,
    ids=lambda p: f"{p.loss}-{p.class_counts}-b{p.bias}{p.lambda_bias}-s{p.label_smoothing}-lw{p.lambda_weight}",
)
def test_oracle_agrees_with_lbfgs_on_the_full_problem(problem: UFMProblem) -> None:
    optimum = solve_optimum(problem)
    assert optimum.converged
    value, features, weight, bias = full_problem_minimum(problem)
    assert value == pytest.approx(optimum.value, rel=1e-8, abs=1e-12)
    metrics = optimum_metrics(features, weight, bias, problem.class_major_labels(), optimum)
    assert abs(float(metrics["optimum/loss_gap"])) < 1e-8 * abs(optimum.value) + 1e-12
    for name in ("optimum/classifier_gram", "optimum/feature_gram", "optimum/bias"):
        assert float(metrics[name]) < 1e-6, name


# -------------------------------------------------------------------------------------------------- metrics


METRIC_PROBLEMS = [
    UFMProblem("mean_squared", (2, 3, 5), 5, 1e-2, 2e-2, lambda_bias=0.1),
    UFMProblem("sum_squared", (3, 3, 3), 3, 0.3, 0.2, bias=False),
    UFMProblem("cross_entropy", (2, 3, 5), 4, 1e-2, 2e-2),
    UFMProblem("cross_entropy", (2, 3, 2, 4), 7, 1e-2, 2e-2, lambda_bias=1e-2, label_smoothing=0.1),
]


@pytest.mark.parametrize("problem", METRIC_PROBLEMS, ids=lambda p: f"{p.loss}-{p.class_counts}")
def test_metrics_vanish_at_the_optimum_and_are_positive_elsewhere(problem: UFMProblem) -> None:
    optimum = solve_optimum(problem)
    features, weight, bias = optimum.factorisation()
    generator = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(
        torch.randn(problem.feature_dim, problem.feature_dim, generator=generator, dtype=DTYPE)
    )
    shifted = bias + 3.0 if problem.bias_shift_invariant else bias
    nudge = [0.05 * torch.randn(t.shape, generator=generator, dtype=DTYPE) for t in (features, weight, bias)]
    replicas = (
        torch.stack([features, features @ rotation, features + nudge[0]]),
        torch.stack([weight, weight @ rotation, weight + nudge[1]]),
        torch.stack([bias, shifted, bias + nudge[2]]) if problem.bias else None,
    )
    metrics = optimum_metrics(*replicas, problem.class_major_labels(), optimum)
    assert set(metrics) == set(OPTIMUM_TAGS)
    for name, value in metrics.items():
        assert value.shape == (3,)
        assert float(value[:2].abs().max()) < 1e-10, name  # the optimum, rotated, with b* + t1 on a line
        if name != "optimum/bias" or problem.bias:
            assert float(value[2]) > 1e-6, name  # a perturbed point
    assert loss_gap(features, weight, bias, problem.class_major_labels(), optimum).abs() < 1e-12


def test_zero_optimum_uses_the_absolute_gram_measure() -> None:
    problem = UFMProblem("cross_entropy", (3, 3, 3), 4, 0.3, 0.2, lambda_bias=0.1)
    optimum = solve_optimum(problem)
    assert optimum.weight_is_zero and not optimum.classifier_gram.any() and float(optimum.bias.abs().max()) < 1e-15
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(2, 3, 4, generator=generator, dtype=DTYPE)
    features = torch.randn(2, 9, 4, generator=generator, dtype=DTYPE)
    labels = problem.class_major_labels()
    gram = weight @ weight.transpose(-1, -2)
    torch.testing.assert_close(classifier_gram_error(weight, optimum), torch.linalg.matrix_norm(gram))
    expected = torch.linalg.matrix_norm(class_mean_gram(features, labels, 3))
    torch.testing.assert_close(feature_gram_error(features, labels, optimum), expected)
    zero_point = optimum.factorisation()
    assert not zero_point[0].any() and not zero_point[1].any()
    assert float(loss_gap(*zero_point[:2], zero_point[2], labels, optimum)) == pytest.approx(0.0, abs=1e-15)


def test_bias_error_is_distance_to_point_or_to_line() -> None:
    regularised = solve_optimum(UFMProblem("cross_entropy", (2, 3), 2, 1e-2, 1e-2, lambda_bias=0.1))
    free = solve_optimum(UFMProblem("cross_entropy", (2, 3), 2, 1e-2, 1e-2))
    shift = torch.tensor([0.3, 0.3], dtype=DTYPE)
    assert float(bias_error(regularised.bias + shift, regularised)) == pytest.approx(0.3 * math.sqrt(2))
    assert float(bias_error(free.bias + shift, free)) == pytest.approx(0.0, abs=1e-15)
    assert float(bias_error(free.bias + torch.tensor([0.3, -0.3], dtype=DTYPE), free)) == pytest.approx(
        0.3 * math.sqrt(2)
    )


def test_objective_matches_the_codebase_losses_and_torch_label_smoothing() -> None:
    generator = torch.Generator().manual_seed(2)
    labels = torch.tensor([0, 2, 1, 1, 0, 2, 2])
    features = torch.randn(3, 7, 5, generator=generator, dtype=DTYPE)
    weight = torch.randn(3, 3, 5, generator=generator, dtype=DTYPE)
    bias = torch.randn(3, 3, generator=generator, dtype=DTYPE)
    logits = features @ weight.transpose(-1, -2) + bias.unsqueeze(-2)
    penalty = 0.5 * (
        0.1 * weight.square().sum((-1, -2)) + 0.2 * features.square().sum((-1, -2)) + 0.3 * bias.square().sum(-1)
    )
    for loss in ("sum_squared", "mean_squared"):
        problem = UFMProblem.from_labels(
            labels, 3, loss=loss, feature_dim=5, lambda_weight=0.1, lambda_features=0.2, lambda_bias=0.3
        )
        torch.testing.assert_close(
            ufm_objective(features, weight, bias, labels, problem), LOSSES[loss].value(logits, labels) + penalty
        )
    problem = UFMProblem.from_labels(
        labels,
        3,
        loss="cross_entropy",
        feature_dim=5,
        lambda_weight=0.1,
        lambda_features=0.2,
        lambda_bias=0.3,
        label_smoothing=0.15,
    )
    expected = torch.stack([F.cross_entropy(z, labels, label_smoothing=0.15) for z in logits]) + penalty
    torch.testing.assert_close(ufm_objective(features, weight, bias, labels, problem), expected)


def test_optimum_value_is_the_original_objective_at_its_factorisation() -> None:
    problem = UFMProblem("cross_entropy", (1, 2, 4, 3), 6, 2e-2, 1e-2, label_smoothing=0.2)
    optimum = solve_optimum(problem)
    labels = problem.class_major_labels()[torch.randperm(problem.num_samples, generator=torch.Generator())]
    features, weight, bias = optimum.factorisation(labels)
    assert float(ufm_objective(features, weight, bias, labels, problem)) == pytest.approx(optimum.value, rel=1e-14)
    torch.testing.assert_close(weight @ weight.T, optimum.classifier_gram)
    torch.testing.assert_close(class_mean_gram(features, labels, 4), optimum.feature_gram)


def test_feature_dimension_below_the_class_count_raises() -> None:
    with pytest.raises(ValueError, match=r"needs p ≥ C, got feature_dim p = 2 < C = 3"):
        UFMProblem("mean_squared", (2, 2, 2), 2, 0.1, 0.1)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"lambda_weight": 0.0}, "λ_W > 0 and λ_H > 0"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"label_smoothing": 0.1}, "cross_entropy only"),
        ({"class_counts": (2, 0, 1)}, "each with a sample"),
        ({"lambda_bias": -1.0}, "λ_b must be ≥ 0"),
    ],
)
def test_invalid_problems_raise(settings: dict[str, object], message: str) -> None:
    base: dict[str, object] = {
        "loss": "mean_squared",
        "class_counts": (2, 2, 2),
        "feature_dim": 3,
        "lambda_weight": 0.1,
        "lambda_features": 0.1,
    }
    with pytest.raises(ValueError, match=message):
        UFMProblem(**(base | settings))  # type: ignore[arg-type]


def test_labels_of_other_class_sizes_are_refused() -> None:
    optimum = solve_optimum(UFMProblem("mean_squared", (2, 2), 2, 0.1, 0.1))
    features, weight, bias = optimum.factorisation()
    with pytest.raises(ValueError, match="class sizes"):
        loss_gap(features[:3], weight, bias, torch.tensor([0, 1, 1]), optimum)


def test_cross_entropy_exactly_at_the_threshold_has_the_zero_optimum() -> None:
    """β = 1/C: thresholding leaves singular values of the order of rounding, which the oracle drops."""
    num_classes, samples_per_class = 3, 3
    lambda_weight, lambda_features = mean_lambdas(1 / num_classes, samples_per_class)
    optimum = solve_optimum(UFMProblem("cross_entropy", (3, 3, 3), 3, lambda_weight, lambda_features))
    assert optimum.converged and optimum.weight_is_zero and not optimum.logit_matrix.any()
    assert optimum.value == pytest.approx(math.log(num_classes), rel=1e-15)
