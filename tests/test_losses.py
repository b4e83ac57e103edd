"""The loss registry: each loss's residual is the gradient of its value, its reduction, bias curvature, logit
curvature and shift invariance are what they claim, and the config names are the public ones."""

from __future__ import annotations

import pytest
import torch

from ufm_torch.objectives.losses import LABEL_SMOOTHING_LOSSES, LOSSES, Link, smoothed_targets

LABELS = torch.tensor([3, 1, 0, 2, 0, 1, 0])


def random_logits(seed: int = 0) -> torch.Tensor:
    """Logits of two replicas, seven samples and four classes."""
    return torch.randn(2, 7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def smoothing_of(name: str) -> float:
    """A label smoothing the loss accepts: 0.1 where it is supported, else 0."""
    return 0.1 if LOSSES[name].supports_label_smoothing else 0.0


def test_the_registry_holds_each_loss_once_under_its_config_name() -> None:
    assert list(LOSSES) == ["sum_squared", "mean_squared", "cross_entropy"]
    assert all(loss.name == name for name, loss in LOSSES.items())
    assert LABEL_SMOOTHING_LOSSES == ("cross_entropy",)


@pytest.mark.parametrize("name", list(LOSSES))
def test_the_residual_is_the_gradient_of_the_value_in_the_logits(name: str) -> None:
    loss, smoothing = LOSSES[name], smoothing_of(name)
    logits = random_logits().requires_grad_()
    loss.value(logits, LABELS, smoothing).sum().backward()
    targets = smoothed_targets(LABELS, 4, torch.float64, smoothing)
    torch.testing.assert_close(loss.residual(logits.detach(), targets), logits.grad, rtol=0, atol=1e-15)
    assert loss.residual_scale(7) == (1 / 7 if loss.mean_reduced else 1.0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_a_mean_reduced_loss_keeps_its_value_on_a_repeated_batch_and_a_sum_doubles(name: str) -> None:
    loss, logits = LOSSES[name], random_logits()
    once = loss.value(logits, LABELS, smoothing_of(name))
    twice = loss.value(torch.cat([logits, logits], dim=-2), torch.cat([LABELS, LABELS]), smoothing_of(name))
    torch.testing.assert_close(twice, once if loss.mean_reduced else 2 * once, rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_the_bias_curvature_is_the_second_derivative_along_the_bias_where_the_loss_is_quadratic(name: str) -> None:
    loss, logits = LOSSES[name], random_logits()[0]
    curvature = loss.bias_curvature(len(LABELS))
    assert (curvature is None) == (loss.link is not Link.IDENTITY)
    if curvature is not None:
        hessian = torch.autograd.functional.hessian(lambda b: loss.value(logits + b, LABELS), torch.zeros(4).double())
        torch.testing.assert_close(hessian, curvature * torch.eye(4, dtype=torch.float64), rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", list(LOSSES))
def test_the_logit_curvature_bounds_the_hessian_of_one_sample(name: str) -> None:
    loss = LOSSES[name]
    for seed in range(5):
        logits = 3 * random_logits(seed)[0, :1]
        hessian = torch.autograd.functional.hessian(lambda z: loss.value(z, LABELS[:1], smoothing_of(name)), logits)
        largest = torch.linalg.eigvalsh(hessian.reshape(4, 4)).max()
        assert largest <= loss.logit_curvature + 1e-14


@pytest.mark.parametrize("name", list(LOSSES))
def test_only_a_shift_invariant_loss_ignores_a_common_shift_of_the_logits(name: str) -> None:
    loss, logits = LOSSES[name], random_logits()
    shifted = loss.value(logits + 0.7, LABELS, smoothing_of(name))
    same = torch.allclose(shifted, loss.value(logits, LABELS, smoothing_of(name)), rtol=1e-14, atol=0)
    assert same == loss.shift_invariant
