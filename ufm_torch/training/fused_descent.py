"""Full-batch gradient steps on the UFM with the closed-form gradient, many per Lightning batch.

The gradient of R = ½‖WH + b1ᵀ − Y‖²_F is ∇_H = WᵀA, ∇_W = AHᵀ, ∇_b = A1 with A = WH + b1ᵀ − Y (Mixon et al.,
Section 3); in the row convention ``residual = Aᵀ`` and ``∇_features = residual · W``. No autograd graph is built.

Plain gradient descent (SGD without momentum or weight decay, the paper's method) updates the parameters in place.
On small problems, where each tensor operation costs its launch rather than its arithmetic, it runs on copies with
the bias folded into the weights: ``F̂ = [F, 1]``, ``Ŵ = [W, b]``, so that a step is three batched products and two
cheap updates (``A = F̂Ŵᵀ − Y``, ``[∇_W, ∇_b] = AᵀF̂``, ``F̂ ← F̂ − η·AŴ`` with the ones column reset,
``Ŵ ← Ŵ − η[∇_W, ∇_b]``) instead of seven operations; the parameters receive the copies at the end of the block.
Any other optimiser (and plain descent when a hook must run at every ``on_before_optimizer_step``) receives the
closed-form gradients in ``.grad`` and takes its step through the public ``LightningOptimizer.step``, so the
precision plugin and every hook see it and its state stays the one a checkpoint expects. The steps of plain descent
are counted by :func:`ufm_torch.training.lightning_steps.count_fused_steps`, the package's one adapter to Lightning's
step counting.
"""

from __future__ import annotations

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.training.lightning_steps import count_fused_steps
from ufm_torch.training.objective import one_hot_targets

FOLDED_BIAS_LIMIT = 2**20
"""Largest number of entries of ``[F, 1]`` (all replicas) for which plain descent folds the bias into copies of the
weights: above it the arithmetic dominates and the copies would only add memory traffic."""


def plain_gradient_descent_rate(optimizer: torch.optim.Optimizer) -> float | None:
    """The step size η if ``optimizer`` is plain gradient descent (``x ← x − η∇R``), else None."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    plain = group["momentum"] == 0 and group["weight_decay"] == 0 and not group["maximize"]
    return float(group["lr"]) if plain else None


@torch.no_grad()
def closed_form_steps(
    network: UnconstrainedFeatures,
    row_labels: Tensor,
    optimizer: LightningOptimizer,
    steps: int,
    logits: Tensor | None = None,
    through_optimizer: bool = False,
) -> Tensor:
    """Take ``steps ≥ 1`` full-batch steps; return the logits ``Wh_i + b`` of the state they leave, ``(R, n, C)``.

    That state is the one the callbacks see at the block's last step (the divergence guard checks its loss, the
    collapse monitor reuses the logits). ``row_labels[i]`` is the label of row ``i`` of ``network.features``.
    ``logits``, if given, must be those of the present state: plain descent on a large problem and the other
    optimisers start from them instead of a product, and overwrite them. Each step is counted by the trainer
    (``global_step``) exactly as a ``LightningOptimizer.step`` would count it. ``through_optimizer`` sends plain
    descent through ``optimizer.step()`` as well (for hooks that must see every optimiser step).
    """
    targets = one_hot_targets(row_labels, network.num_classes, network.features.dtype)
    step_size = None if through_optimizer else plain_gradient_descent_rate(optimizer.optimizer)
    if step_size is None:
        logits = network.head(network.features) if logits is None else logits
        return optimizer_steps(network, targets, optimizer, steps, logits)
    if network.features.shape[:-1].numel() * (network.feature_dim + 1) <= FOLDED_BIAS_LIMIT:
        logits = folded_bias_descent(network, targets, steps, step_size)
    else:
        logits = network.head(network.features) if logits is None else logits
        logits = in_place_descent(network, targets, steps, step_size, logits)
    count_fused_steps(optimizer, steps)
    return logits


def folded_bias_descent(network: UnconstrainedFeatures, targets: Tensor, steps: int, step_size: float) -> Tensor:
    """Plain descent on ``F̂ = [F, 1]``, ``Ŵ = [W, b]`` (module docstring); returns the final logits ``F̂Ŵᵀ``."""
    features, weight, bias = network.features, network.head.weight, network.head.bias
    folded_features = torch.cat([features, features.new_ones(*features.shape[:-1], 1)], dim=-1)
    folded_weight = torch.cat([weight, bias.unsqueeze(-1)], dim=-1)
    ones_column, folded_weight_t = folded_features[..., -1], folded_weight.transpose(-1, -2)
    for _ in range(steps):
        residual = torch.baddbmm(targets, folded_features, folded_weight_t, beta=-1)
        gradient = torch.bmm(residual.transpose(-1, -2), folded_features)
        folded_features.baddbmm_(residual, folded_weight, alpha=-step_size)
        ones_column.fill_(1.0)
        folded_weight.sub_(gradient, alpha=step_size)
    features.copy_(folded_features[..., :-1])
    weight.copy_(folded_weight[..., :-1])
    bias.copy_(folded_weight[..., -1])
    return torch.bmm(folded_features, folded_weight_t)


def in_place_descent(
    network: UnconstrainedFeatures, targets: Tensor, steps: int, step_size: float, logits: Tensor
) -> Tensor:
    """Plain descent on the parameters themselves, ``F ← F − η·AᵀW`` as one GEMM with β = 1, from the present
    state's ``logits``; returns the final logits (each step's product gives the next step's residual)."""
    features, weight, bias = network.features, network.head.weight, network.head.bias
    bias_row, weight_t = bias.unsqueeze(-2), weight.transpose(-1, -2)
    for _ in range(steps):
        residual = logits.sub_(targets)
        grad_weight = torch.bmm(residual.transpose(-1, -2), features)
        grad_bias = residual.sum(dim=-2)
        features.baddbmm_(residual, weight, alpha=-step_size)
        weight.sub_(grad_weight, alpha=step_size)
        bias.sub_(grad_bias, alpha=step_size)
        logits = torch.baddbmm(bias_row, features, weight_t)
    return logits


def optimizer_steps(
    network: UnconstrainedFeatures, targets: Tensor, optimizer: LightningOptimizer, steps: int, logits: Tensor
) -> Tensor:
    """Closed-form gradients in ``.grad``, then ``optimizer.step()`` (Lightning's public step: the precision plugin,
    the ``on_before_optimizer_step`` hooks, the step count), from the present state's ``logits``; returns the final
    logits."""
    features, weight, bias = network.features, network.head.weight, network.head.bias
    bias_row, weight_t = bias.unsqueeze(-2), weight.transpose(-1, -2)
    for _ in range(steps):
        residual = logits.sub_(targets)
        features.grad = torch.bmm(residual, weight)
        weight.grad = torch.bmm(residual.transpose(-1, -2), features)
        bias.grad = residual.sum(dim=-2)
        optimizer.step()
        logits = torch.baddbmm(bias_row, features, weight_t)
    return logits
