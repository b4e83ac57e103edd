"""Full-batch gradient steps on the deep UFM by hand-written backpropagation, many per Lightning batch.

These are the steps of a :class:`~ufm_torch.models.contract.FreeLayersNetwork` (the deep UFM of Súkeník, Mondelli &
Lampert 2023 and Dang et al. 2023), on its :meth:`~ufm_torch.models.contract.FreeLayersNetwork.free_layers`: F = H_1ᵀ
``(R, n, p)`` and ``W_1, …, W_L`` ``(R, out, in)``, with the head's b. The objective is
:class:`ufm_torch.objectives.deep_ufm.DeepObjective`. The steps compute in the papers' column convention, samples as
columns, per replica: ``H_{l+1} = σ(W_l H_l)``, logits ``Z = W_L H_L + b1ᵀ`` ``(C, n)``. With the residual
``G_L = ∂D/∂Z = c(σ_D(Z) − Y)`` (the loss's, c = 1/n for a mean; the softmax over classes runs along dimension −2,
the fast one for small C) backpropagation is::

    ∇_{W_l} = G_l H_lᵀ + λ_l W_l,    G_{l−1} = (W_lᵀ G_l) ⊙ σ'(H_l)   (l = L … 2),
    ∇_{H_1} = W_1ᵀ G_1 + λ_{H_1} H_1,  ∇_b = G_L1 + λ_b b,

σ'(H_l) read from the layer's output (:meth:`~ufm_torch.models.deep_ufm.Activation.backward`; ReLU: 1 where
H_l > 0), every product one ``bmm`` over the replicas. No autograd graph is built: at the benchmark's size (C = 4,
N = 5, p = d = 8, L = 3, ``benchmarks/bench_deep_step.py``) an autograd step costs 11–12 times a hand-written one
with one replica and about 4 times with 64. The column convention is measured too: with 64 replicas its products
with contiguous operands make a step about 15% cheaper than the same step on rows. A bias-free head
(``head.has_bias`` False) keeps b = 0: nothing here writes it.

Plain gradient descent (SGD without momentum or weight decay) runs on a contiguous copy of H_1 and updates the
weights in place, layer by layer from the top as the backward pass reaches them: the factor c goes into the step
size (ηc) and each decay into a factor ``1 − ηλ``, the β of the layer's GEMM (``W_l ← (1 − ηλ_l)W_l − ηc·G_lH_lᵀ``,
after ``W_lᵀG_l`` has been formed from the old W_l); H_1 last, and F receives the copy at the end of the block. Any
other optimiser (and plain descent when a hook must see every ``on_before_optimizer_step``) receives the gradients
in ``.grad`` (F's in its own row layout) and steps through the public ``LightningOptimizer.step``; plain descent's
steps are counted by :func:`ufm_torch.training.lightning_steps.count_fused_steps`, as the UFM's are
(:mod:`ufm_torch.training.fused_descent`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from ufm_torch.models import Activation, FreeLayersNetwork
from ufm_torch.objectives.deep_ufm import DeepObjective
from ufm_torch.objectives.losses import Link
from ufm_torch.objectives.ufm import Objective
from ufm_torch.training.fused_descent import plain_gradient_descent_rate
from ufm_torch.training.lightning_steps import count_fused_steps


@torch.no_grad()
def free_layer_steps(
    network: FreeLayersNetwork,
    row_labels: Tensor,
    optimizer: LightningOptimizer,
    steps: int,
    objective: DeepObjective,
    through_optimizer: bool = False,
) -> Tensor:
    """Take ``steps ≥ 1`` full-batch steps on ``objective``; return the logits ``(R, n, C)`` of the state they
    leave (the one the callbacks see at the block's last step).

    ``row_labels[i]`` is the label of row i of F. Each step is counted by the trainer (``global_step``) exactly as
    a ``LightningOptimizer.step`` would count it. ``through_optimizer`` sends plain descent through
    ``optimizer.step()`` as well (for hooks that must see every optimiser step).
    """
    features, weights, activation = network.free_layers()
    bias = network.head.bias if network.head.has_bias else None
    data_objective = objective.objective
    targets = data_objective.targets(row_labels, network.num_classes, features.dtype).mT.contiguous()
    softmax = data_objective.data_loss.link is Link.SOFTMAX
    scale = data_objective.data_loss.residual_scale(features.shape[-2])
    decays = objective.layer_decays(len(weights))
    step_size = None if through_optimizer else plain_gradient_descent_rate(optimizer.optimizer)
    if step_size is None:
        first = features.mT
        for _ in range(steps):
            columns, logits = forward_columns(first, weights, activation, bias)
            residual = column_residual(logits, targets, softmax).mul_(scale)
            fill_gradients(features, weights, activation, bias, columns, residual, decays, data_objective)
            optimizer.step()
        return forward_columns(first, weights, activation, bias)[1].mT
    first = features.mT.contiguous()
    for _ in range(steps):
        columns, logits = forward_columns(first, weights, activation, bias)
        residual = column_residual(logits, targets, softmax)
        descend(weights, activation, bias, columns, residual, step_size, scale, decays, data_objective)
    features.copy_(first.mT)
    count_fused_steps(optimizer, steps)
    return forward_columns(first, weights, activation, bias)[1].mT


def forward_columns(
    first: Tensor, weights: Sequence[Tensor], activation: Activation, bias: Tensor | None
) -> tuple[list[Tensor], Tensor]:
    """``[H_1, …, H_L]`` (``H_1`` is ``first`` itself, ``(R, p, n)``) and the logits ``W_L H_L + b1ᵀ`` ``(R, C, n)``."""
    columns = [first]
    for weight in weights[:-1]:
        columns.append(activation.apply_(torch.bmm(weight, columns[-1])))
    if bias is None:
        return columns, torch.bmm(weights[-1], columns[-1])
    return columns, torch.baddbmm(bias.unsqueeze(-1), weights[-1], columns[-1])


def column_residual(logits: Tensor, targets: Tensor, softmax: bool) -> Tensor:
    """``σ_D(Z) − Y`` over ``logits`` Z, written over them: softmax over classes (dimension −2) or the identity."""
    return (logits.softmax(dim=-2) if softmax else logits).sub_(targets)


def descend(
    weights: Sequence[Tensor], activation: Activation, bias: Tensor | None, columns: list[Tensor], residual: Tensor,
    step_size: float, scale: float, decays: Sequence[float], objective: Objective,
) -> None:  # fmt: skip
    """One step of plain descent in place from the forward pass ``columns`` and the unscaled ``residual``
    σ_D(Z) − Y (module docstring): b, then each W_l right after ``W_lᵀG_l`` is formed, then H_1 (``columns[0]``);
    ``objective`` holds the decays of H_1 and b, ``decays`` those of ``W_1, …, W_L``."""
    rate = step_size * scale
    if bias is not None:
        gradient_bias = residual.sum(dim=-1)
        if objective.bias_decay:
            bias.mul_(1.0 - step_size * objective.bias_decay)
        bias.sub_(gradient_bias, alpha=rate)
    gradient = residual
    for layer in range(len(weights) - 1, -1, -1):
        weight, inputs = weights[layer], columns[layer]
        upstream = torch.bmm(weight.mT, gradient)
        weight.baddbmm_(gradient, inputs.mT, beta=1.0 - step_size * decays[layer], alpha=-rate)
        gradient = activation.backward(upstream, inputs) if layer else upstream
    if objective.feature_decay:
        columns[0].mul_(1.0 - step_size * objective.feature_decay)
    columns[0].sub_(gradient, alpha=rate)


def fill_gradients(
    features: Tensor, weights: Sequence[Tensor], activation: Activation, bias: Tensor | None, columns: list[Tensor],
    residual: Tensor, decays: Sequence[float], objective: Objective,
) -> None:  # fmt: skip
    """``.grad`` of F (rows: ``G_1ᵀW_1 + λ_{H_1}F``), every W_l and b (module docstring) from the forward pass
    ``columns`` and the scaled ``residual`` ∂D/∂Z; a bias-free head's bias buffer gets none."""
    if bias is not None:
        bias.grad = torch.add(residual.sum(dim=-1), bias, alpha=objective.bias_decay)
    gradient = residual
    for layer in range(len(weights) - 1, 0, -1):
        weight, inputs = weights[layer], columns[layer]
        upstream = torch.bmm(weight.mT, gradient)
        weight.grad = torch.baddbmm(weight, gradient, inputs.mT, beta=decays[layer])
        gradient = activation.backward(upstream, inputs)
    weights[0].grad = torch.baddbmm(weights[0], gradient, columns[0].mT, beta=decays[0])
    features.grad = torch.baddbmm(features, gradient.mT, weights[0], beta=objective.feature_decay)
