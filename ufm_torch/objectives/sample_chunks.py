"""The data term D of the UFM, its accuracy and its closed-form gradients, computed over chunks of samples.

The logits ``Z = FWᵀ`` of n samples and C classes take ``R·n·C`` numbers: at C = 10 000 classes and N = 10 samples per
class (n = 100 000) that is 8 GB in float64 for one replica, more than the parameters (``(n + C)·p`` numbers, 451 MB
at p = 512) by a factor C/p. Every quantity of a full-batch step is a sum over samples, so it is computed here over
chunks of at most :data:`CHUNK_ENTRIES` logits (rows ``F_c`` of the features, ``Z_c = F_c Wᵀ``), each chunk's
logits overwritten in place by its residual:

    D = c Σ_c Σ_{i ∈ c} ℓ(z_i/τ, q_i),                         (c = 1/n for a mean, 1 for a sum)
    ∇_F = R·W  row block by row block,  R_c = (c/τ)(σ(Z_c/τ) − Q_c),
    ∇_W = Σ_c R_cᵀ F_c                     (accumulated in one ``(R, C, p)`` tensor),

with σ and Q those of the loss (:meth:`~ufm_torch.objectives.losses.Loss.label_residual_`; τ the temperature of
the spherical UFM, 1 otherwise). These are the formulas of :mod:`ufm_torch.objectives.ufm` (the closed-form gradient
of the objective's data term) evaluated chunk by chunk: equal to them up to the summation order of ∇_W. Peak memory
is the parameters, the two gradients and one chunk of logits; the arithmetic is the three products of a full step
(``Z``, ``R·W``, ``RᵀF``, each ``2·R·n·C·p`` flops) plus the loss's elementwise work. Penalties (λ) are not included:
they cost nothing comparable and are added by the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ufm_torch.objectives.ufm import Objective, replica_tensor

CHUNK_ENTRIES = 2**24
"""Most logits held at once (all replicas of one chunk of samples): 128 MiB in float64. Chunks of this size keep the
products at the speed of a full one (``benchmarks/bench_spherical_step.py``)."""


def chunk_rows(replicas: int, num_classes: int, entries: int | None = None) -> int:
    """Samples per chunk: ``max(1, K // (R·C))`` for at most K = ``entries`` logits (None: :data:`CHUNK_ENTRIES`)."""
    return max(1, (entries or CHUNK_ENTRIES) // (replicas * num_classes))


def fits_one_chunk(features: Tensor, weight: Tensor, entries: int | None = None) -> bool:
    """Whether all logits ``(R, n, C)`` of ``features`` ``(R, n, p)`` and ``weight`` ``(R, C, p)`` fit in one chunk of
    at most ``entries`` (None: :data:`CHUNK_ENTRIES`)."""
    return features.shape[:-1].numel() * weight.shape[-2] <= (entries or CHUNK_ENTRIES)


def row_chunks(num_samples: int, rows: int) -> Iterator[slice]:
    """Consecutive slices of at most ``rows`` samples covering ``range(num_samples)``."""
    for start in range(0, num_samples, rows):
        yield slice(start, min(start + rows, num_samples))


@dataclass(frozen=True)
class DataTerm:
    """D and the training accuracy per replica, ``(R,)``, of a state (:func:`chunked_data_term`)."""

    value: Tensor
    accuracy: Tensor


def chunk_logits(features: Tensor, weight: Tensor, objective: Objective) -> Tensor:
    """``Z_c/τ = F_c Wᵀ/τ``, shape ``(R, b, C)``."""
    logits = torch.bmm(features, weight.transpose(-1, -2))
    scale = objective.inverse_temperature_of(logits)
    return logits if isinstance(scale, float) and scale == 1.0 else logits.mul_(scale)


@torch.no_grad()
def chunked_data_term(
    features: Tensor, weight: Tensor, labels: Tensor, objective: Objective, rows: int | None = None
) -> DataTerm:
    """``D(FWᵀ/τ)`` of ``objective``'s loss and the accuracy ``(1/n)#{i : argmax_k z_ik = y_i}`` per replica,
    over chunks of ``rows`` samples (default :func:`chunk_rows`): ``D = Σ_c w_c D(Z_c/τ)`` with ``w_c = b_c/n`` for a
    mean-reduced loss and 1 for a sum. ``features`` ``(R, n, p)``, ``weight`` ``(R, C, p)``, ``labels`` ``(n,)``."""
    num_samples = features.shape[-2]
    rows = rows or chunk_rows(features.shape[0], weight.shape[-2])
    mean_reduced = objective.data_loss.mean_reduced
    value = features.new_zeros(features.shape[0])
    correct = torch.zeros(features.shape[0], dtype=torch.int64, device=features.device)
    for chunk in row_chunks(num_samples, rows):
        logits = chunk_logits(features[:, chunk], weight, objective)
        correct += (logits.argmax(dim=-1) == labels[chunk]).sum(dim=-1)
        smoothing = replica_tensor(objective.label_smoothing, logits)
        chunk_value = objective.data_loss.value(logits, labels[chunk], smoothing)
        value += chunk_value * ((chunk.stop - chunk.start) / num_samples) if mean_reduced else chunk_value
    return DataTerm(value, correct.to(features.dtype) / num_samples)


@torch.no_grad()
def chunked_data_gradients(
    features: Tensor, weight: Tensor, labels: Tensor, objective: Objective, rows: int | None = None
) -> tuple[Tensor, Tensor]:
    """The Euclidean gradients ``(∇_F D, ∇_W D)`` of the data term at the logits ``FWᵀ/τ``, shapes ``(R, n, p)`` and
    ``(R, C, p)``, over chunks of ``rows`` samples (module docstring): per chunk one product for ``Z_c``, the
    residual written over it, one product into the rows of ``∇_F`` and one accumulated into ``∇_W``."""
    num_samples = features.shape[-2]
    rows = rows or chunk_rows(features.shape[0], weight.shape[-2])
    grad_features = torch.empty_like(features)
    grad_weight = torch.zeros_like(weight)
    for chunk in row_chunks(num_samples, rows):
        block = features[:, chunk]
        residual = chunk_logits(block, weight, objective)
        smoothing = replica_tensor(objective.label_smoothing, residual)
        objective.data_loss.label_residual_(residual, labels[chunk], smoothing)
        grad_features[:, chunk] = torch.bmm(residual, weight)
        grad_weight.baddbmm_(residual.transpose(-1, -2), block)
    scale = objective.data_loss.residual_scale(num_samples)
    factor = objective.inverse_temperature_of(features) * scale
    return grad_features.mul_(factor), grad_weight.mul_(factor)
