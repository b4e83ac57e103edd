"""Full-batch gradient steps on the UFM with the closed-form gradient, many per Lightning batch.

These are the steps of a :class:`~ufm_torch.models.contract.ClosedFormNetwork` (the single-layer UFM), on its
:meth:`~ufm_torch.models.contract.ClosedFormNetwork.closed_form_features` F and its head's W and b; the trainer
takes them for such a network only. The objective is :class:`ufm_torch.objectives.ufm.Objective`, per replica
``f = D + λ_W/2‖W‖²_F + λ_H/2‖H‖²_F + λ_b/2‖b‖²`` with D the summed or mean squared error or the (label-smoothed)
cross-entropy. With the residual ``R = ∂D/∂logits`` (rows are samples: ``Z − Y``, ``(Z − Y)/n`` or
``(softmax(Z) − Y_s)/n``) the gradient is ``∇_features = R·W + λ_H F``, ``∇_W = RᵀF + λ_W W``,
``∇_b = Rᵀ1 + λ_b b`` (for the paper's ``½‖WH + b1ᵀ − Y‖²_F``: ``∇_H = WᵀA``, ``∇_W = AHᵀ``, ``∇_b = A1``, Mixon
et al., Section 3). No autograd graph is built. A bias-free head (``head.has_bias`` False: ``head.bias`` is a zero
buffer) keeps b = 0: nothing here writes it.

Plain gradient descent (SGD without momentum or weight decay, the paper's method) updates the parameters in place.
The factor 1/n of the mean-reduced losses goes into the step size (``ηc``, c = 1/n, 1 for ``sum_squared``) and each
decay into a multiplicative factor ``1 − ηλ``: λ_H is the β of the features' GEMM (free), λ_W and λ_b one scaling
of the weights, so the paper's case (``sum_squared``, no decay, a bias) runs the very operations it always ran. On
small problems, where each tensor operation costs its launch rather than its arithmetic, it runs on copies with the
bias folded into the weights: ``F̂ = [F, 1]``, ``Ŵ = [W, b]``, so that a step is three batched products and two
cheap updates (``A = F̂Ŵᵀ − Y``, ``[∇_W, ∇_b] = AᵀF̂``, ``F̂ ← (1 − ηλ_H)F̂ − ηc·AŴ`` with the ones column reset,
``Ŵ ← k ⊙ Ŵ − ηc[∇_W, ∇_b]`` with k = 1 − ηλ_W on W's columns and 1 − ηλ_b on the bias column) instead of
seven operations; the parameters receive the copies at the end of the block (without a bias nothing is folded).
The cross-entropy takes ``A = softmax(F̂Ŵᵀ) − Y_s`` computed class-major, ``ŴF̂ᵀ`` of shape ``(R, C, n)``: its
softmax over classes then runs along dimension −2, vectorised over samples (over a last dimension of size C = 4
torch's kernel is about 6× slower at 64 replicas).

Any other optimiser (and plain descent when a hook must run at every ``on_before_optimizer_step``) receives the
closed-form gradients in ``.grad`` (the bias buffer of a bias-free head none) and takes its step through the public
``LightningOptimizer.step``, so the precision plugin and every hook see it and its state stays the one a checkpoint
expects. The steps of plain descent are counted by :func:`ufm_torch.training.lightning_steps.count_fused_steps`, the
package's one adapter to Lightning's step counting.
"""

from __future__ import annotations

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from ufm_torch.models import ClosedFormNetwork
from ufm_torch.objectives.losses import Link
from ufm_torch.objectives.ufm import PAPER_OBJECTIVE, Objective
from ufm_torch.training.lightning_steps import count_fused_steps

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
    network: ClosedFormNetwork,
    row_labels: Tensor,
    optimizer: LightningOptimizer,
    steps: int,
    logits: Tensor | None = None,
    through_optimizer: bool = False,
    objective: Objective = PAPER_OBJECTIVE,
) -> Tensor:
    """Take ``steps ≥ 1`` full-batch steps on ``objective``; return the logits ``Wh_i + b`` of the state they
    leave, ``(R, n, C)``.

    That state is the one the callbacks see at the block's last step (the divergence guard checks its loss, the
    collapse monitor reuses the logits). ``row_labels[i]`` is the label of row ``i`` of the features F.
    ``logits``, if given, must be those of the present state: plain descent on a large problem and the other
    optimisers start from them instead of a product, and may overwrite them. Each step is counted by the trainer
    (``global_step``) exactly as a ``LightningOptimizer.step`` would count it. ``through_optimizer`` sends plain
    descent through ``optimizer.step()`` as well (for hooks that must see every optimiser step).
    """
    features = network.closed_form_features()
    targets = objective.targets(row_labels, network.num_classes, features.dtype)
    step_size = None if through_optimizer else plain_gradient_descent_rate(optimizer.optimizer)
    if step_size is None:
        logits = network.head(features) if logits is None else logits
        return optimizer_steps(network, targets, optimizer, steps, logits, objective)
    if features.shape[:-1].numel() * (network.feature_dim + 1) <= FOLDED_BIAS_LIMIT:
        logits = folded_bias_descent(network, targets, steps, step_size, objective)
    else:
        logits = network.head(features) if logits is None else logits
        logits = in_place_descent(network, targets, steps, step_size, logits, objective)
    count_fused_steps(optimizer, steps)
    return logits


def softmax_residual(logits: Tensor, targets: Tensor) -> Tensor:
    """``softmax(Z) − Y_s`` for row-major ``logits`` ``(..., n, C)``, computed class-major (module docstring)."""
    return torch.softmax(logits.transpose(-1, -2), dim=-2).transpose(-1, -2).sub_(targets)


def folded_bias_descent(
    network: ClosedFormNetwork, targets: Tensor, steps: int, step_size: float,
    objective: Objective = PAPER_OBJECTIVE,
) -> Tensor:
    """Plain descent on ``F̂ = [F, 1]``, ``Ŵ = [W, b]`` (module docstring; ``F̂ = F``, ``Ŵ = W`` without a bias);
    returns the final logits ``F̂Ŵᵀ``."""
    features, weight, bias = network.closed_form_features(), network.head.weight, network.head.bias
    has_bias, feature_dim = network.head.has_bias, features.shape[-1]
    rate = step_size * objective.data_loss.residual_scale(features.shape[-2])
    feature_keep = 1.0 - step_size * objective.feature_decay
    column_keep = folded_column_keep(weight, step_size, objective, has_bias)
    if has_bias:
        folded_features = torch.cat([features, features.new_ones(*features.shape[:-1], 1)], dim=-1)
        folded_weight = torch.cat([weight, bias.unsqueeze(-1)], dim=-1)
        ones_column = folded_features[..., -1]
    else:
        folded_features, folded_weight, ones_column = features.clone(), weight.clone(), None
    folded_weight_t = folded_weight.transpose(-1, -2)
    softmax = objective.data_loss.link is Link.SOFTMAX
    targets_t = targets.transpose(-1, -2).contiguous() if softmax else targets
    for _ in range(steps):
        if softmax:
            residual_t = torch.bmm(folded_weight, folded_features.transpose(-1, -2)).softmax(dim=-2).sub_(targets_t)
            residual, gradient = residual_t.transpose(-1, -2), torch.bmm(residual_t, folded_features)
        else:
            residual = torch.baddbmm(targets, folded_features, folded_weight_t, beta=-1)
            gradient = torch.bmm(residual.transpose(-1, -2), folded_features)
        folded_features.baddbmm_(residual, folded_weight, beta=feature_keep, alpha=-rate)
        if ones_column is not None:
            ones_column.fill_(1.0)
        if column_keep is not None:
            folded_weight.mul_(column_keep)
        folded_weight.sub_(gradient, alpha=rate)
    features.copy_(folded_features[..., :feature_dim])
    weight.copy_(folded_weight[..., :feature_dim])
    if has_bias:
        bias.copy_(folded_weight[..., -1])
    return torch.bmm(folded_features, folded_weight_t)


def folded_column_keep(
    weight: Tensor, step_size: float, objective: Objective, has_bias: bool
) -> float | Tensor | None:
    """The factor each column of ``Ŵ`` keeps per step: ``1 − ηλ_W`` on W's columns, ``1 − ηλ_b`` on the bias
    column; a number when they agree, None when it is 1 (no decay)."""
    classifier_keep = 1.0 - step_size * objective.classifier_decay
    bias_keep = 1.0 - step_size * objective.bias_decay
    if not has_bias or bias_keep == classifier_keep:
        return None if classifier_keep == 1.0 else classifier_keep
    keep = weight.new_full((weight.shape[-1] + 1,), classifier_keep)
    keep[-1] = bias_keep
    return keep


def in_place_descent(
    network: ClosedFormNetwork, targets: Tensor, steps: int, step_size: float, logits: Tensor,
    objective: Objective = PAPER_OBJECTIVE,
) -> Tensor:
    """Plain descent on the parameters themselves, ``F ← (1 − ηλ_H)F − η·RW`` as one GEMM, from the present
    state's ``logits``; returns the final logits (each step's product gives the next step's residual)."""
    features, weight, bias = network.closed_form_features(), network.head.weight, network.head.bias
    has_bias = network.head.has_bias
    rate = step_size * objective.data_loss.residual_scale(features.shape[-2])
    feature_keep = 1.0 - step_size * objective.feature_decay
    classifier_keep = 1.0 - step_size * objective.classifier_decay
    bias_keep = 1.0 - step_size * objective.bias_decay
    softmax = objective.data_loss.link is Link.SOFTMAX
    bias_row, weight_t = bias.unsqueeze(-2), weight.transpose(-1, -2)
    for _ in range(steps):
        residual = softmax_residual(logits, targets) if softmax else logits.sub_(targets)
        grad_weight = torch.bmm(residual.transpose(-1, -2), features)
        grad_bias = residual.sum(dim=-2) if has_bias else None
        features.baddbmm_(residual, weight, beta=feature_keep, alpha=-rate)
        if classifier_keep != 1.0:
            weight.mul_(classifier_keep)
        weight.sub_(grad_weight, alpha=rate)
        if grad_bias is not None:
            if bias_keep != 1.0:
                bias.mul_(bias_keep)
            bias.sub_(grad_bias, alpha=rate)
        logits = torch.baddbmm(bias_row, features, weight_t)
    return logits


def optimizer_steps(
    network: ClosedFormNetwork, targets: Tensor, optimizer: LightningOptimizer, steps: int, logits: Tensor,
    objective: Objective = PAPER_OBJECTIVE,
) -> Tensor:
    """Closed-form gradients in ``.grad``, then ``optimizer.step()`` (Lightning's public step: the precision plugin,
    the ``on_before_optimizer_step`` hooks, the step count), from the present state's ``logits``; returns the final
    logits. A bias-free head's bias buffer gets no gradient."""
    features, weight, bias = network.closed_form_features(), network.head.weight, network.head.bias
    has_bias = network.head.has_bias
    scale = objective.data_loss.residual_scale(features.shape[-2])
    feature_decay, classifier_decay, bias_decay = (
        objective.feature_decay, objective.classifier_decay, objective.bias_decay
    )
    softmax = objective.data_loss.link is Link.SOFTMAX
    bias_row, weight_t = bias.unsqueeze(-2), weight.transpose(-1, -2)
    for _ in range(steps):
        residual = softmax_residual(logits, targets) if softmax else logits.sub_(targets)
        if scale != 1.0:
            residual.mul_(scale)
        if feature_decay:
            features.grad = torch.baddbmm(features, residual, weight, beta=feature_decay)
        else:
            features.grad = torch.bmm(residual, weight)
        if classifier_decay:
            weight.grad = torch.baddbmm(weight, residual.transpose(-1, -2), features, beta=classifier_decay)
        else:
            weight.grad = torch.bmm(residual.transpose(-1, -2), features)
        if has_bias:
            bias.grad = residual.sum(dim=-2)
            if bias_decay:
                bias.grad.add_(bias, alpha=bias_decay)
        optimizer.step()
        logits = torch.baddbmm(bias_row, features, weight_t)
    return logits
