"""The UFM module: initialisation, replicas and gradients."""

from __future__ import annotations

import torch

from ufm_torch.data import class_major_labels
from ufm_torch.models import UnconstrainedFeatures, expand_init_scales, replica_seeds
from ufm_torch.models.ufm import random_direction
from ufm_torch.objectives.losses import sum_squared_error
from ufm_torch.objectives.ufm import ufm_gradients, ufm_risk


def test_initialisation_has_norm_epsilon_and_zero_bias() -> None:
    model = UnconstrainedFeatures(4, 5, 7, init_scale=[1.0, 1e-3], replicas=3, seed=11)
    expected = torch.tensor(expand_init_scales([1.0, 1e-3], 3), dtype=torch.float64)
    torch.testing.assert_close(model.features.detach().flatten(1).norm(dim=1), expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(model.head.weight.detach().flatten(1).norm(dim=1), expected, rtol=1e-14, atol=0)
    assert torch.all(model.head.bias == 0)
    assert model.features.shape == (6, 20, 7) and model.head.weight.shape == (6, 4, 7)


def test_replica_is_drawn_from_its_own_seed_stream() -> None:
    model = UnconstrainedFeatures(3, 3, 15, init_scale=[0.5, 0.01], replicas=2, seed=4)
    seeds = replica_seeds(4, 2)
    assert model.seeds == [seeds[0], seeds[1], seeds[0], seeds[1]]
    for replica, (scale, seed) in enumerate(zip(model.init_scales, model.seeds, strict=True)):
        generator = torch.Generator().manual_seed(seed)
        torch.testing.assert_close(model.features[replica].detach(), scale * random_direction((9, 15), generator))
        torch.testing.assert_close(model.head.weight[replica].detach(), scale * random_direction((3, 15), generator))


def test_single_replica_model_equals_first_copy_of_batched_model() -> None:
    batched = UnconstrainedFeatures(3, 3, 15, init_scale=[0.1, 1e-4], replicas=3, seed=9)
    alone = UnconstrainedFeatures(3, 3, 15, init_scale=1e-4, replicas=1, seed=9)
    assert torch.equal(alone.features[0], batched.features[3])
    assert torch.equal(alone.head.weight[0], batched.head.weight[3])


def test_different_global_seeds_give_different_replicas() -> None:
    first = UnconstrainedFeatures(3, 3, 15, replicas=2, seed=0)
    second = UnconstrainedFeatures(3, 3, 15, replicas=2, seed=1)
    assert not torch.allclose(first.features, second.features)
    assert not torch.allclose(first.features[0], first.features[1])


def test_autograd_gradients_equal_closed_form() -> None:
    model = UnconstrainedFeatures(4, 3, 6, init_scale=[1.0, 0.3], replicas=2, seed=2)
    with torch.no_grad():
        model.head.bias.normal_()
    labels = class_major_labels(4, 3)
    sum_squared_error(model(torch.arange(12)), labels).sum().backward()
    grad_features, grad_weight, grad_bias = ufm_gradients(
        model.features.detach(), model.head.weight.detach(), model.head.bias.detach(), labels
    )
    torch.testing.assert_close(model.features.grad, grad_features, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.head.weight.grad, grad_weight, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.head.bias.grad, grad_bias, rtol=0, atol=1e-12)


def test_closed_form_gradient_matches_paper_matrices() -> None:
    """∇_H = WᵀA, ∇_W = AHᵀ, ∇_b = A1 with A = WH + b1ᵀ − Y, written with the paper's H (p × CN)."""
    generator = torch.Generator().manual_seed(0)
    num_classes, samples_per_class, feature_dim = 3, 2, 5
    H = torch.randn(feature_dim, num_classes * samples_per_class, generator=generator, dtype=torch.float64)
    W = torch.randn(num_classes, feature_dim, generator=generator, dtype=torch.float64)
    b = torch.randn(num_classes, generator=generator, dtype=torch.float64)
    Y = torch.kron(torch.eye(num_classes, dtype=torch.float64), torch.ones(1, samples_per_class, dtype=torch.float64))
    A = W @ H + b[:, None] - Y
    labels = class_major_labels(num_classes, samples_per_class)
    grad_features, grad_weight, grad_bias = ufm_gradients(H.T, W, b, labels)
    torch.testing.assert_close(grad_features, (W.T @ A).T, rtol=0, atol=1e-13)
    torch.testing.assert_close(grad_weight, A @ H.T, rtol=0, atol=1e-13)
    torch.testing.assert_close(grad_bias, A.sum(dim=1), rtol=0, atol=1e-13)
    torch.testing.assert_close(ufm_risk(H.T, W, b, labels), 0.5 * A.square().sum(), rtol=1e-14, atol=0)


def test_batched_training_equals_each_replica_trained_alone() -> None:
    labels = class_major_labels(3, 3)
    indices = torch.arange(9)
    batched = UnconstrainedFeatures(3, 3, 15, init_scale=[1.0, 0.01], replicas=2, seed=5)
    singles = []
    for replica in range(batched.num_replicas):
        single = UnconstrainedFeatures(3, 3, 15, init_scale=1.0, replicas=1, seed=0)
        with torch.no_grad():
            single.features.copy_(batched.features[replica : replica + 1])
            single.head.weight.copy_(batched.head.weight[replica : replica + 1])
        singles.append(single)
    for model in [batched, *singles]:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(300):
            optimizer.zero_grad()
            sum_squared_error(model(indices), labels).sum().backward()
            optimizer.step()
    for replica, single in enumerate(singles):
        torch.testing.assert_close(batched.features[replica], single.features[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(batched.head.weight[replica], single.head.weight[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(batched.head.bias[replica], single.head.bias[0], rtol=0, atol=1e-12)
