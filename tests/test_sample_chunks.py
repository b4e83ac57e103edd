"""The data term, accuracy and closed-form gradients over chunks of samples equal the whole-batch formulas, for every
loss, temperature and per-replica label smoothing, whatever the chunk size."""

from __future__ import annotations

import pytest
import torch

from ufm_torch.objectives.losses import LOSSES
from ufm_torch.objectives.sample_chunks import chunk_rows, chunked_data_gradients, chunked_data_term, row_chunks
from ufm_torch.objectives.ufm import Objective

CASES = [
    Objective("sum_squared"),
    Objective("mean_squared"),
    Objective("cross_entropy"),
    Objective("cross_entropy", temperature=0.3),
    Objective("cross_entropy", label_smoothing=(0.0, 0.1, 0.3), temperature=0.5),
]


def problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three replicas of 11 samples (imbalanced labels), 5 classes, p = 4."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(3, 11, 4, generator=generator, dtype=torch.float64)
    weight = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 4])
    return features, weight, labels


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_label_residual_equals_the_dense_residual(loss: str, smoothing: float) -> None:
    data_loss = LOSSES[loss]
    if smoothing and not data_loss.supports_label_smoothing:
        pytest.skip("no label smoothing")
    features, weight, labels = problem()
    logits = features @ weight.transpose(-1, -2)
    objective = Objective(loss, label_smoothing=smoothing)
    dense = data_loss.residual(logits, objective.targets(labels, 5, torch.float64))
    scale = data_loss.residual_scale(labels.numel())
    in_place = data_loss.label_residual_(logits.clone(), labels, smoothing).mul_(scale)
    torch.testing.assert_close(in_place, dense, rtol=0, atol=1e-15)


@pytest.mark.parametrize("objective", CASES, ids=lambda objective: f"{objective.loss}-{objective.temperature}")
@pytest.mark.parametrize("rows", [1, 3, 4, 11, None])
def test_chunked_gradients_equal_autograd_of_the_whole_data_term(objective: Objective, rows: int | None) -> None:
    features, weight, labels = problem(1)
    leaf_features = features.clone().requires_grad_(True)
    leaf_weight = weight.clone().requires_grad_(True)
    objective.value(leaf_features, leaf_weight, None, labels).sum().backward()
    grad_features, grad_weight = chunked_data_gradients(features, weight, labels, objective, rows)
    torch.testing.assert_close(grad_features, leaf_features.grad, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grad_weight, leaf_weight.grad, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("objective", CASES, ids=lambda objective: f"{objective.loss}-{objective.temperature}")
@pytest.mark.parametrize("rows", [1, 4, None])
def test_chunked_value_and_accuracy_equal_the_whole_batch(objective: Objective, rows: int | None) -> None:
    features, weight, labels = problem(2)
    logits = features @ weight.transpose(-1, -2)
    term = chunked_data_term(features, weight, labels, objective, rows)
    torch.testing.assert_close(term.value, objective.data_term(logits, labels), rtol=1e-13, atol=1e-14)
    accuracy = (logits.argmax(-1) == labels).to(torch.float64).mean(-1)
    torch.testing.assert_close(term.accuracy, accuracy, rtol=0, atol=0)


def test_chunks_cover_every_sample_once_and_respect_the_entry_budget() -> None:
    assert chunk_rows(1, 10_000) == 2**24 // 10_000
    assert chunk_rows(4, 10**8) == 1
    slices = list(row_chunks(10, 3))
    assert [(part.start, part.stop) for part in slices] == [(0, 3), (3, 6), (6, 9), (9, 10)]
