"""Full-batch gradient steps on the UFM with the closed-form gradient, many per Lightning batch.

The gradient of R = ½‖WH + b1ᵀ − Y‖²_F is ∇_H = WᵀA, ∇_W = AHᵀ, ∇_b = A1 with A = WH + b1ᵀ − Y (Mixon et al.,
Section 3); in the row convention ``residual = Aᵀ`` and ``∇_features = residual · W``. No autograd graph is built.
Plain gradient descent (SGD without momentum or weight decay, the paper's method) updates the parameters in place,
the features inside the matrix product (``F ← F − η·AᵀW`` as one GEMM with β = 1); any other optimiser receives the
closed-form gradients in ``.grad`` and takes its own step, so its state stays the one a checkpoint expects.
"""

from __future__ import annotations

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from ufm_torch.models import UnconstrainedFeatures


def plain_gradient_descent_rate(optimizer: torch.optim.Optimizer) -> float | None:
    """The step size η if ``optimizer`` is plain gradient descent (``x ← x − η∇R``), else None."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    plain = group["momentum"] == 0 and group["weight_decay"] == 0 and not group["maximize"]
    return float(group["lr"]) if plain else None


@torch.no_grad()
def closed_form_steps(
    network: UnconstrainedFeatures, row_labels: Tensor, optimizer: LightningOptimizer, steps: int
) -> Tensor:
    """Take ``steps`` full-batch steps; return the logits ``Wh_i + b`` of the resulting state, shape ``(R, n, C)``.

    ``row_labels[i]`` is the label of row ``i`` of ``network.features``. Each step is counted by the trainer
    (``global_step``) exactly as a ``LightningOptimizer.step`` would count it.
    """
    features, weight, bias = network.features, network.head.weight, network.head.bias
    targets = torch.nn.functional.one_hot(row_labels, network.num_classes).to(features.dtype)
    step_size = plain_gradient_descent_rate(optimizer.optimizer)
    bias_row, weight_t = bias.unsqueeze(-2), weight.transpose(-1, -2)
    for _ in range(steps):
        residual = torch.baddbmm(bias_row, features, weight_t).sub_(targets)
        grad_weight = torch.bmm(residual.transpose(-1, -2), features)
        grad_bias = residual.sum(dim=-2)
        optimizer._on_before_step()
        if step_size is not None:
            features.baddbmm_(residual, weight, alpha=-step_size)
            weight.sub_(grad_weight, alpha=step_size)
            bias.sub_(grad_bias, alpha=step_size)
        else:
            features.grad = torch.bmm(residual, weight)
            weight.grad, bias.grad = grad_weight, grad_bias
            optimizer.optimizer.step()
        optimizer._on_after_step()
    return torch.baddbmm(bias_row, features, weight_t)
