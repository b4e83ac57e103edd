"""The deep-UFM oracles against multi-start L-BFGS on the full problem, against the single-layer oracle at depth 1,
and the DNC reference against its own family."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import OptimizeResult, minimize
from threadpoolctl import threadpool_limits

from ufm_torch.errors import ConfigError
from ufm_torch.theory.deep_linear import class_scale, deep_linear_optimum
from ufm_torch.theory.deep_problem import (
    LOSS_VS_DNC_TAG,
    DeepUFMOptimum,
    DeepUFMProblem,
    OracleAssumptionError,
    deep_forward,
    deep_ufm_objective,
    layer_class_mean_gram,
)
from ufm_torch.theory.deep_relu import dnc_point, dnc_scales, relu_dnc_reference, relu_two_class_optimum
from ufm_torch.theory.optimum import UFMProblem, mse_optimum_imbalanced_without_bias, solve_optimum

DTYPE = torch.float64
GRAM_TOLERANCE = 1e-6

Point = tuple[torch.Tensor, tuple[torch.Tensor, ...]]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch and one BLAS thread: the problems are tiny, and on shared cores threads only contend (L-BFGS-B's
    BLAS calls and torch's kernels run 3–5 times slower with two threads on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


def unpack(problem: DeepUFMProblem, vector: torch.Tensor) -> Point:
    """``(H_1ᵀ, (W_1, …, W_L))`` from one flat vector."""
    shapes = [(problem.num_samples, problem.feature_dim), *problem.layer_shapes]
    sizes = [rows * cols for rows, cols in shapes]
    parts = [part.reshape(shape) for part, shape in zip(torch.split(vector, sizes), shapes, strict=True)]
    return parts[0], tuple(parts[1:])


def lbfgs(problem: DeepUFMProblem, start: np.ndarray) -> OptimizeResult:
    """L-BFGS on f over the flat ``(H_1, W_1, …, W_L)`` from ``start``, float64, gradient by autograd."""
    labels = problem.class_major_labels()

    def value_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        vector = torch.tensor(flat, dtype=DTYPE, requires_grad=True)
        value = deep_ufm_objective(*unpack(problem, vector), labels, problem)
        (gradient,) = torch.autograd.grad(value, vector)
        return float(value.detach()), gradient.numpy()

    options = {"maxiter": 20_000, "ftol": 0.0, "gtol": 1e-13, "maxcor": 30}
    return minimize(value_and_gradient, start, jac=True, method="L-BFGS-B", options=options)


def full_problem_minimum(problem: DeepUFMProblem, starts: int, seed: int = 0, init_scale: float = 0.7) -> Point:
    """The best of ``starts`` L-BFGS runs from Gaussian starts of standard deviation ``init_scale``."""
    rng = np.random.default_rng(seed)
    size = problem.num_samples * problem.feature_dim + sum(rows * cols for rows, cols in problem.layer_shapes)
    results = [lbfgs(problem, init_scale * rng.standard_normal(size)) for _ in range(starts)]
    best = min(results, key=lambda result: result.fun)
    return unpack(problem, torch.tensor(best.x, dtype=DTYPE))


def factor_penalties(problem: DeepUFMProblem, point: Point) -> list[float]:
    """``[λ_{H_1}‖H_1‖², λ_{W_1}‖W_1‖², …, λ_{W_L}‖W_L‖²]``."""
    features, weights = point
    decays = (problem.feature_decay, *problem.layer_decays)
    return [decay * float(factor.square().sum()) for decay, factor in zip(decays, (features, *weights), strict=True)]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tolerance: float = GRAM_TOLERANCE) -> None:
    """Entrywise within ``tolerance``."""
    torch.testing.assert_close(actual, expected.to(actual), rtol=0.0, atol=tolerance)


def assert_is_the_optimum_of(optimum: DeepUFMOptimum, point: Point) -> None:
    """The oracle's loss is no higher than the point's and within 1e-8 of it; the factors are balanced."""
    problem, labels = optimum.problem, optimum.problem.class_major_labels()
    found = float(deep_ufm_objective(*point, labels, problem))
    assert optimum.loss <= found + 1e-9
    assert found - optimum.loss < 1e-8
    assert np.allclose(factor_penalties(problem, point), optimum.factor_penalty, rtol=0, atol=GRAM_TOLERANCE)


def layer_grams(optimum: DeepUFMOptimum, point: Point) -> list[torch.Tensor]:
    """The class-mean Grams of ``H_1, …, H_L`` and the logits' class means at ``point``."""
    labels = optimum.problem.class_major_labels()
    layers = deep_forward(*point, optimum.problem.activation)
    return [layer_class_mean_gram(layer, labels, optimum.problem.num_classes) for layer in layers]


def logit_means(optimum: DeepUFMOptimum, point: Point) -> torch.Tensor:
    """K × K: column k the mean logits of class k."""
    labels = optimum.problem.class_major_labels()
    logits = deep_forward(*point, optimum.problem.activation)[-1]
    indicator = torch.nn.functional.one_hot(labels, optimum.problem.num_classes).to(logits)
    return (indicator.T @ logits / indicator.sum(0).unsqueeze(-1)).T


def top_singular_values(weight: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` largest singular values of ``weight``, descending, padded with zeros."""
    values = torch.linalg.svdvals(weight)[:count]
    return torch.cat([values, values.new_zeros(count - values.numel())])


# ------------------------------------------------------------------------------------------------------- deep linear

LINEAR_CASES = {
    # name: (class sizes, p, width, depth, λ_H1, λ_hidden, λ_classifier, L-BFGS starts)
    "balanced-L2": ((2, 2, 2), 4, 4, 2, 0.01, 0.02, 0.015, 6),
    "balanced-L3": ((3, 3, 3), 4, 4, 3, 0.02, 0.01, 0.03, 8),
    "imbalanced-L2": ((3, 2, 1), 4, 4, 2, 0.02, 0.01, 0.03, 6),
    "imbalanced-L3": ((3, 2, 1), 4, 5, 3, 0.02, 0.01, 0.03, 6),
    "four-classes-L2": ((3, 1, 2, 2), 5, 5, 2, 0.01, 0.02, 0.01, 6),
    "minority-collapse-L2": ((3, 2, 1), 4, 4, 2, 0.08, 0.08, 0.08, 8),
    "minority-collapse-L3": ((3, 2, 1), 4, 4, 3, 0.06, 0.06, 0.06, 8),
    "zero-L2": ((3, 2, 1), 4, 4, 2, 0.2, 0.2, 0.2, 4),
    "zero-L3": ((2, 2, 2), 4, 4, 3, 0.2, 0.1, 0.3, 4),
    "rank-p-L2": ((3, 2, 1), 2, 4, 2, 0.02, 0.01, 0.03, 6),
    "rank-width-L3": ((3, 2, 1), 4, 2, 3, 0.02, 0.01, 0.03, 6),
}


@pytest.mark.parametrize("case", LINEAR_CASES.values(), ids=LINEAR_CASES.keys())
def test_deep_linear_oracle_is_the_minimum_found_by_lbfgs(case: tuple) -> None:
    *settings, starts = case
    optimum = deep_linear_optimum(*settings)
    point = full_problem_minimum(optimum.problem, starts)
    assert_is_the_optimum_of(optimum, point)
    grams = layer_grams(optimum, point)
    for found, expected in zip(grams, optimum.feature_grams, strict=False):
        assert_close(found, expected)
    assert_close(logit_means(optimum, point), optimum.logit_matrix)
    weights = point[1]
    assert_close(weights[-1] @ weights[-1].T, optimum.classifier_gram)
    product = torch.linalg.multi_dot(weights[::-1])
    assert_close(product @ product.T, optimum.product_gram)
    for weight, expected in zip(weights, optimum.weight_singular_values, strict=True):
        assert_close(top_singular_values(weight, len(expected)), expected.sort(descending=True).values)


def test_regimes_of_the_test_cases_are_the_intended_ones() -> None:
    """Minority collapse keeps the two larger classes; the zero cases are 0; the rank cases keep two classes."""
    scales = {name: deep_linear_optimum(*case[:-1]).class_scales for name, case in LINEAR_CASES.items()}
    for name in ("minority-collapse-L2", "minority-collapse-L3", "rank-p-L2", "rank-width-L3"):
        assert (scales[name] > 0).tolist() == [True, True, False], name
    assert not scales["zero-L2"].any() and not scales["zero-L3"].any()
    assert abs(deep_linear_optimum(*LINEAR_CASES["zero-L3"][:-1]).loss - 0.5) < 1e-15
    assert (scales["four-classes-L2"] > 0).all() and (scales["imbalanced-L3"] > 0).all()
    assert relu_two_class_optimum(*RELU_TWO_CLASS_CASES["zero-L3"][:-1]).is_zero


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_class_scale_is_the_global_minimum_of_the_scalar_problem(depth: int) -> None:
    """t_k against a fine grid of ``g(t) = (t^m − √n_k)²/(2n) + (m/2)τt²``, across the jump to zero."""
    m, n, sqrt_size = depth + 1, 7, math.sqrt(3)
    grid = np.linspace(0.0, sqrt_size ** (1 / m), 200_001)
    for tau in np.geomspace(1e-3, 0.3, 25):
        scale = class_scale(sqrt_size, n, tau, m)
        values = (grid**m - sqrt_size) ** 2 / (2 * n) + 0.5 * m * tau * grid**2
        value = (scale**m - sqrt_size) ** 2 / (2 * n) + 0.5 * m * tau * scale**2
        assert value <= values.min() + 1e-12
        assert value >= values.min() - 1e-6


# ------------------------------------------------------------------------------------------------------------ depth 1


@pytest.mark.parametrize("class_sizes", [(2, 2, 2), (3, 2, 1)])
@pytest.mark.parametrize("decays", [(0.02, 0.05), (0.3, 0.1), (0.5, 0.6)], ids=["inside", "minority", "zero"])
def test_depth_one_is_the_regularised_ufm_of_optimum_py(class_sizes: tuple[int, ...], decays: tuple) -> None:
    """L = 1: ``UFMProblem('mean_squared', bias=False)`` with λ_W = classifier_decay, λ_H = feature_decay."""
    lambda_weight, lambda_features = decays
    deep = deep_linear_optimum(class_sizes, 4, 1, 1, lambda_features, 1.0, lambda_weight)
    problem = UFMProblem("mean_squared", class_sizes, 4, lambda_weight, lambda_features, bias=False)
    single = solve_optimum(problem)
    closed = mse_optimum_imbalanced_without_bias(class_sizes, lambda_weight, lambda_features)
    assert abs(deep.loss - single.value) < 1e-10
    assert abs(deep.loss - closed.value) < 1e-12
    assert_close(deep.classifier_gram, single.classifier_gram, 1e-9)
    assert_close(deep.feature_grams[0], single.feature_gram, 1e-9)
    assert_close(deep.classifier_gram, closed.classifier_gram, 1e-12)
    assert deep.is_zero == single.weight_is_zero


# --------------------------------------------------------------------------------------------------------------- ReLU

RELU_TWO_CLASS_CASES = {
    "L2": ((3, 3), 2, 3, 2, 0.01, 0.01, 0.01, 8),
    "L3": ((3, 3), 2, 3, 3, 0.02, 0.01, 0.03, 8),
    "L3-antipodal-p1": ((2, 2), 1, 2, 3, 0.005, 0.005, 0.005, 30),
    "zero-L3": ((2, 2), 2, 2, 3, 0.15, 0.15, 0.15, 4),
}


@pytest.mark.parametrize("case", RELU_TWO_CLASS_CASES.values(), ids=RELU_TWO_CLASS_CASES.keys())
def test_relu_two_class_oracle_is_the_minimum_found_by_lbfgs(case: tuple) -> None:
    *settings, starts = case
    optimum = relu_two_class_optimum(*settings)
    point = full_problem_minimum(optimum.problem, starts)
    assert_is_the_optimum_of(optimum, point)
    grams = layer_grams(optimum, point)
    for found, expected in zip(grams[1:], optimum.feature_grams[1:], strict=False):
        assert_close(found, expected)  # post-ReLU layers: an orthogonal frame of equal norms
    first, expected_first = grams[0], optimum.feature_grams[0]
    assert_close(torch.diag(first), torch.diag(expected_first))  # H_1: only the norms are determined,
    assert -float(first[0, 0]) - 1e-6 <= float(first[0, 1]) <= 1e-6  # the angle anywhere in [90°, 180°]
    assert_close(logit_means(optimum, point), optimum.logit_matrix)
    weights = point[1]
    assert_close(weights[-1] @ weights[-1].T, optimum.classifier_gram)
    for weight, expected in zip(weights[1:], optimum.weight_singular_values[1:], strict=True):
        assert_close(top_singular_values(weight, 2), expected)


def test_two_class_relu_optimum_has_the_loss_of_the_balanced_linear_optimum() -> None:
    relu = relu_two_class_optimum((3, 3), 2, 3, 3, 0.02, 0.01, 0.03)
    linear = deep_linear_optimum((3, 3), 2, 3, 3, 0.02, 0.01, 0.03)
    assert abs(relu.loss - linear.loss) < 1e-15
    assert relu.is_global


@pytest.mark.parametrize("oracle", [deep_linear_optimum, relu_dnc_reference], ids=["linear", "relu"])
@pytest.mark.parametrize("class_sizes", [(2, 2, 2), (1, 1, 1, 1)])
def test_minimiser_attains_the_loss_and_the_grams(oracle, class_sizes: tuple[int, ...]) -> None:
    """f and every Gram at the oracle's own minimiser (the explicit construction) are the reported ones."""
    optimum = oracle(class_sizes, 4, 5, 3, 0.004, 0.003, 0.005)
    point = optimum.minimiser()
    value = float(deep_ufm_objective(*point, optimum.problem.class_major_labels(), optimum.problem))
    assert abs(value - optimum.loss) < 1e-14
    for found, expected in zip(layer_grams(optimum, point), optimum.feature_grams, strict=False):
        assert_close(found, expected, 1e-14)
    assert_close(logit_means(optimum, point), optimum.logit_matrix, 1e-14)
    weights = point[1]
    product = torch.linalg.multi_dot(weights[::-1])
    assert_close(product @ product.T, optimum.product_gram, 1e-14)
    for weight, expected in zip(weights, optimum.weight_singular_values, strict=True):
        assert_close(top_singular_values(weight, len(expected)), expected.sort(descending=True).values, 1e-14)
    assert np.allclose(factor_penalties(optimum.problem, point), optimum.factor_penalty, rtol=1e-13, atol=0)


@pytest.mark.parametrize(
    "settings",
    [
        ((2, 2, 2), 2, 3, 2, 0.01, 0.01, 0.01),
        ((2, 2, 2, 2), 3, 4, 3, 0.003, 0.004, 0.002),
        ((1,) * 4, 4, 4, 4, *(0.002,) * 3),
    ],
    ids=["K3-L2", "K4-L3", "K4-L4"],
)
def test_dnc_reference_is_the_minimum_of_the_dnc_family(settings: tuple) -> None:
    """f at the DNC construction from the reference's scalars is its loss; L-BFGS over the family's L + 1
    scalars, from there or from random scalars, goes no lower."""
    reference = relu_dnc_reference(*settings)
    problem, labels = reference.problem, reference.problem.class_major_labels()
    assert not reference.is_global and not reference.is_zero

    def family_loss(log_scales: np.ndarray) -> float:
        class_means, weights = dnc_point(problem, torch.tensor(np.exp(log_scales), dtype=DTYPE))
        return float(deep_ufm_objective(class_means[labels], weights, labels, problem))

    scales = dnc_scales(problem, float(reference.class_scales[0]))
    assert abs(family_loss(scales.log().numpy()) - reference.loss) < 1e-14
    rng = np.random.default_rng(1)
    starts = [scales.log().numpy(), *(rng.normal(size=problem.depth + 1) for _ in range(3))]
    found = [
        minimize(family_loss, start, method="L-BFGS-B", options={"ftol": 0, "gtol": 1e-12}).fun for start in starts
    ]
    assert min(found) >= reference.loss - 1e-12
    assert found[0] - reference.loss < 1e-12


def test_dnc_point_is_a_local_minimum_of_the_full_problem() -> None:
    """L-BFGS on the full problem from the DNC point plus 1 % noise comes back to f_DNC (K = 4, L = 3); random
    starts can still end lower (K = 3, N = 1, L = 4, λ = 0.002: f = 0.014740 < f_DNC = 0.014982; the docs, §5)."""
    reference = relu_dnc_reference((1, 1, 1, 1), 4, 4, 3, 0.002, 0.002, 0.002)
    features, weights = reference.minimiser()
    start = torch.cat([features.flatten(), *(weight.flatten() for weight in weights)]).numpy()
    result = lbfgs(reference.problem, start + 0.01 * np.random.default_rng(0).standard_normal(start.size))
    assert abs(result.fun - reference.loss) < 1e-12


def test_metrics_are_zero_at_the_optimum_and_positive_elsewhere() -> None:
    optimum = deep_linear_optimum((3, 2, 1), 4, 4, 3, 0.02, 0.01, 0.03)
    features, weights = optimum.minimiser()
    labels = optimum.problem.class_major_labels()
    moved = (1.1 * features, tuple(1.05 * weight for weight in weights))
    replicas = (
        torch.stack([features, moved[0]]),
        tuple(torch.stack(pair) for pair in zip(weights, moved[1], strict=True)),
    )
    values = optimum.metrics(*replicas, labels)
    assert sorted(values) == ["optimum/classifier_gram", "optimum/feature_gram", "optimum/loss_gap"]
    for value in values.values():
        assert value.shape == (2,)
        assert abs(float(value[0])) < 1e-14 and float(value[1]) > 1e-3
    reference = relu_dnc_reference((2, 2, 2), 2, 3, 2, 0.01, 0.01, 0.01)
    assert LOSS_VS_DNC_TAG in reference.metrics(*reference.minimiser(), reference.problem.class_major_labels())


OUTSIDE = {
    "bias": (deep_linear_optimum, ((2, 2), 2, 2, 2, 0.1, 0.1, 0.1), {"bias": True}, "bias-free"),
    "zero-decay": (deep_linear_optimum, ((2, 2), 2, 2, 2, 0.1, 0.0, 0.1), {}, "decay > 0"),
    "three-classes": (relu_two_class_optimum, ((2, 2, 2), 3, 3, 2, 0.1, 0.1, 0.1), {}, "relu_dnc_reference"),
    "imbalanced-relu": (relu_dnc_reference, ((2, 1, 2), 3, 3, 2, 0.1, 0.1, 0.1), {}, "balanced"),
    "narrow-relu": (relu_dnc_reference, ((2, 2, 2), 3, 2, 2, 0.1, 0.1, 0.1), {}, "width ≥ K"),
    "shallow-relu": (relu_two_class_optimum, ((2, 2), 2, 2, 1, 0.1, 0.1, 0.1), {}, "deep_linear_optimum"),
}


@pytest.mark.parametrize(("oracle", "args", "kwargs", "message"), OUTSIDE.values(), ids=OUTSIDE.keys())
def test_oracles_refuse_problems_outside_their_assumptions(oracle, args, kwargs, message: str) -> None:
    with pytest.raises(OracleAssumptionError, match=message) as raised:
        oracle(*args, **kwargs)
    assert isinstance(raised.value, ConfigError) and isinstance(raised.value, ValueError)
    assert "\n" not in str(raised.value)
