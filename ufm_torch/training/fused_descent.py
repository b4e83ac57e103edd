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

**Per replica.** The step size η (:class:`~ufm_torch.training.replica_sgd.ReplicaSGD`) and the decays (a tuple
per replica in the :class:`~ufm_torch.objectives.ufm.Objective`) may differ between replicas. The factors are then
tensors ``(R, 1, 1)`` (:class:`StepFactors`): a per-replica rate ``ηc`` scales the residual once per step (both
gradients are products of it), a per-replica ``1 − ηλ_H`` scales F̂ before the GEMM and the column factors of Ŵ
become ``(R, 1, p + 1)``. A factor that every replica shares stays a number, so a run without variation takes
exactly the operations above.

**The spherical UFM** (``network.normalize``: rows of F and W on the unit sphere, no bias) takes Riemannian plain
descent instead (:func:`spherical_steps`): the same closed-form gradient with ``R = ∂D(Z/τ)/∂Z``, projected per row
onto the sphere's tangent space and followed by the retraction ``x ← (x − ηg)/‖x − ηg‖`` (Yaras et al. 2022),
batched over replicas; SGD with momentum goes through ``optimizer.step()`` with the heavy-ball buffer transported by
projection (:func:`transport_momentum`), and the config checks refuse the other optimisers. Both gradients are
computed over chunks of samples (:mod:`ufm_torch.objectives.sample_chunks`), so the ``(R, n, C)`` logits are never
held when they exceed one chunk.

Any other optimiser (and plain descent when a hook must run at every ``on_before_optimizer_step``) receives the
closed-form gradients in ``.grad`` (the bias buffer of a bias-free head none) and takes its step through the public
``LightningOptimizer.step``, so the precision plugin and every hook see it and its state stays the one a checkpoint
expects. The steps of plain descent are counted by :func:`ufm_torch.training.lightning_steps.count_fused_steps`, the
package's one adapter to Lightning's step counting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from torch import Tensor

from ufm_torch.models import ClosedFormNetwork
from ufm_torch.objectives.losses import Link
from ufm_torch.objectives.sample_chunks import chunked_data_gradients, fits_one_chunk
from ufm_torch.objectives.ufm import PAPER_OBJECTIVE, Objective, PerReplica, replica_tensor
from ufm_torch.training.lightning_steps import count_fused_steps
from ufm_torch.training.replica_sgd import ReplicaSGD

FOLDED_BIAS_LIMIT = 2**20
"""Largest number of entries of ``[F, 1]`` (all replicas) for which plain descent folds the bias into copies of the
weights: above it the arithmetic dominates and the copies would only add memory traffic."""


def undecayed_sgd_group(optimizer: torch.optim.Optimizer) -> dict | None:
    """The one parameter group of ``optimizer`` if it is SGD (``torch.optim.SGD`` or :class:`ReplicaSGD`, one group)
    without weight decay and not maximising, else None: plain descent or heavy ball on the gradient alone."""
    if type(optimizer) not in (torch.optim.SGD, ReplicaSGD) or len(optimizer.param_groups) != 1:
        return None
    group = optimizer.param_groups[0]
    return group if group["weight_decay"] == 0 and not group["maximize"] else None


def plain_gradient_descent_rate(optimizer: torch.optim.Optimizer) -> PerReplica | None:
    """The step size η if ``optimizer`` is plain gradient descent (``x ← x − η∇R``), else None: a number, or a
    tuple of one per replica for :class:`~ufm_torch.training.replica_sgd.ReplicaSGD`."""
    group = undecayed_sgd_group(optimizer)
    if group is None or group["momentum"] != 0:
        return None
    return group["lr"] if isinstance(group["lr"], tuple) else float(group["lr"])


def _times(step_size: PerReplica, value: PerReplica, offset: float = 0.0, sign: float = 1.0) -> PerReplica:
    """``offset + sign·η·v`` for a number or per replica (a tuple when either is one), in Python floats."""
    if isinstance(step_size, float) and isinstance(value, float | int):
        return offset + sign * step_size * value
    steps = step_size if isinstance(step_size, tuple) else None
    values = value if isinstance(value, tuple) else None
    count = len(steps or values)
    return tuple(
        offset + sign * (steps[r] if steps else step_size) * (values[r] if values else value) for r in range(count)
    )


@dataclass(frozen=True)
class StepFactors:
    """The numbers of one plain-descent step (module docstring), each a number or a per-replica tensor ``(R, 1, 1)``:
    ``rate`` ηc, ``feature_keep`` 1 − ηλ_H, ``classifier_keep`` 1 − ηλ_W and ``bias_keep`` 1 − ηλ_b."""

    rate: float | Tensor
    feature_keep: float | Tensor
    classifier_keep: float | Tensor
    bias_keep: float | Tensor

    @classmethod
    def of(cls, step_size: PerReplica, objective: Objective, num_samples: int, like: Tensor) -> StepFactors:
        """The factors of ``objective`` at step size η (a number or one per replica) for tensors like ``like``."""
        scale = objective.data_loss.residual_scale(num_samples)
        values = (
            _times(step_size, scale),
            _times(step_size, objective.feature_decay, 1.0, -1.0),
            _times(step_size, objective.classifier_decay, 1.0, -1.0),
            _times(step_size, objective.bias_decay, 1.0, -1.0),
        )
        return cls(*(replica_tensor(value, like, trailing=2) for value in values))

    @property
    def residual_rate(self) -> float:
        """The α of the products: −ηc when the rate is a number, −1 when it scales the residual per replica."""
        return -self.rate if isinstance(self.rate, float) else -1.0

    def scale_residual(self, residual: Tensor) -> Tensor:
        """``residual`` times a per-replica rate in place (unchanged when the rate is a number: it is the α)."""
        return residual if isinstance(self.rate, float) else residual.mul_(self.rate)

    def keep_features(self, features: Tensor) -> float:
        """Apply a per-replica ``1 − ηλ_H`` to ``features`` in place and return the GEMM's β (1), or return the shared
        factor as the β."""
        if isinstance(self.feature_keep, float):
            return self.feature_keep
        features.mul_(self.feature_keep)
        return 1.0


@torch.no_grad()
def closed_form_steps(
    network: ClosedFormNetwork,
    row_labels: Tensor,
    optimizer: LightningOptimizer,
    steps: int,
    logits: Tensor | None = None,
    through_optimizer: bool = False,
    objective: Objective = PAPER_OBJECTIVE,
) -> Tensor | None:
    """Take ``steps ≥ 1`` full-batch steps on ``objective``; return the logits ``Wh_i + b`` of the state they
    leave, ``(R, n, C)``, or None for a spherical UFM whose logits exceed one chunk of
    :mod:`ufm_torch.objectives.sample_chunks` (:func:`spherical_steps`).

    That state is the one the callbacks see at the block's last step (the divergence guard checks its loss, the
    collapse monitor reuses the logits). ``row_labels[i]`` is the label of row ``i`` of the features F.
    ``logits``, if given, must be those of the present state: plain descent on a large problem and the other
    optimisers start from them instead of a product, and may overwrite them. Each step is counted by the trainer
    (``global_step``) exactly as a ``LightningOptimizer.step`` would count it. ``through_optimizer`` sends plain
    descent through ``optimizer.step()`` as well (for hooks that must see every optimiser step).
    """
    if network.normalize:
        return spherical_steps(network, row_labels, optimizer, steps, through_optimizer, objective)
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


def spherical_steps(
    network: ClosedFormNetwork, row_labels: Tensor, optimizer: LightningOptimizer, steps: int, through_optimizer: bool,
    objective: Objective,
) -> Tensor | None:
    """``steps`` Riemannian steps of plain descent on the spherical UFM (``network.normalize``): in place
    (:func:`spherical_descent`), or through ``optimizer.step()`` with the Riemannian gradient in ``.grad`` and the
    retraction after each step when a hook must see every step. SGD with momentum takes the second form with the
    heavy-ball buffer transported to each new tangent space (:func:`transport_momentum`); the config checks refuse
    other optimisers. Returns the final logits when they fit one chunk of :mod:`ufm_torch.objectives.sample_chunks`,
    else None (the caller measures the state chunk by chunk)."""
    step_size = plain_gradient_descent_rate(optimizer.optimizer)
    if undecayed_sgd_group(optimizer.optimizer) is None:
        raise ValueError("model.normalize=true trains with SGD only (plain or with momentum, no weight decay)")
    features, weight = network.closed_form_features(), network.head.weight
    if step_size is not None and not through_optimizer:
        spherical_descent(network, row_labels, steps, step_size, objective)
        count_fused_steps(optimizer, steps)
    else:
        for _ in range(steps):
            transport_momentum(optimizer.optimizer, (features, weight))
            features.grad, weight.grad = riemannian_gradients(features, weight, row_labels, objective)
            optimizer.step()
            retract_rows(features)
            retract_rows(weight)
    return torch.bmm(features, weight.transpose(-1, -2)) if fits_one_chunk(features, weight) else None


def transport_momentum(optimizer: torch.optim.Optimizer, points: tuple[Tensor, ...]) -> None:
    """Move each point's heavy-ball buffer b (``optimizer.state[x]["momentum_buffer"]``, a tangent vector at the
    point before the last retraction) into the tangent space at the present point by projection, ``b ← b − ⟨b, x⟩x``
    per row: the vector transport of a submanifold embedded in Euclidean space (Absil, Mahony and Sepulchre 2008,
    Section 8.1.3; geoopt's ``RiemannianSGD``). The optimiser's own step then takes ``b ← μb + (1 − d)g`` with the
    Riemannian gradient g, and ``x ← x − ηb`` (or Nesterov's ``x ← x − η(g + μb)``), before :func:`retract_rows`."""
    for point in points:
        buffer = optimizer.state.get(point, {}).get("momentum_buffer")
        if buffer is not None:
            tangent_projection(buffer, point)


def riemannian_gradients(
    features: Tensor, weight: Tensor, row_labels: Tensor, objective: Objective
) -> tuple[Tensor, Tensor]:
    """The Riemannian gradient of f on the product of unit spheres (Absil, Mahony and Sepulchre 2008, eq. 3.37;
    Yaras et al. 2022, "Neural collapse with normalized features: a geometric analysis over the Riemannian
    manifold"): the Euclidean ``∇_F = RW``, ``∇_W = RᵀF`` with ``R = ∂D(Z/τ)/∂Z``, ``Z = FWᵀ``, computed over
    chunks of samples (:func:`~ufm_torch.objectives.sample_chunks.chunked_data_gradients`: the ``(R, n, C)``
    logits are never held whole), each row projected onto its tangent space, ``g − ⟨g, x⟩x``. The decays are
    constant on the sphere (``λ/2‖x‖² = λ/2`` per row): their gradient λx projects to zero and is left out."""
    grad_features, grad_weight = chunked_data_gradients(features, weight, row_labels, objective)
    return tangent_projection(grad_features, features), tangent_projection(grad_weight, weight)


def tangent_projection(gradient: Tensor, point: Tensor) -> Tensor:
    """``g − ⟨g, x⟩x`` for every row x of ``point`` and g of ``gradient`` (in place): the projection onto the
    tangent space of the unit sphere at x."""
    return gradient.sub_((gradient * point).sum(dim=-1, keepdim=True) * point)


def retract_rows(point: Tensor) -> Tensor:
    """``x ← x/‖x‖`` for every row (in place): the retraction of the unit sphere, applied after ``x − ηg``."""
    return point.div_(point.norm(dim=-1, keepdim=True))


def spherical_descent(
    network: ClosedFormNetwork, row_labels: Tensor, steps: int, step_size: PerReplica, objective: Objective
) -> None:
    """Riemannian gradient descent on the product of spheres, batched over replicas: per step both
    :func:`riemannian_gradients` g at the present state, then ``x ← (x − ηg)/‖x − ηg‖`` for every row of F and of
    W (η a number or one per replica), in place."""
    features, weight = network.closed_form_features(), network.head.weight
    rate = replica_tensor(step_size, features, trailing=2)
    for _ in range(steps):
        grad_features, grad_weight = riemannian_gradients(features, weight, row_labels, objective)
        for point, gradient in ((features, grad_features), (weight, grad_weight)):
            if isinstance(rate, float):
                point.add_(gradient, alpha=-rate)
            else:
                point.sub_(gradient.mul_(rate))
            retract_rows(point)


def softmax_residual(logits: Tensor, targets: Tensor) -> Tensor:
    """``softmax(Z) − Y_s`` for row-major ``logits`` ``(..., n, C)``, computed class-major (module docstring)."""
    return torch.softmax(logits.transpose(-1, -2), dim=-2).transpose(-1, -2).sub_(targets)


def folded_bias_descent(
    network: ClosedFormNetwork, targets: Tensor, steps: int, step_size: PerReplica,
    objective: Objective = PAPER_OBJECTIVE,
) -> Tensor:
    """Plain descent on ``F̂ = [F, 1]``, ``Ŵ = [W, b]`` (module docstring; ``F̂ = F``, ``Ŵ = W`` without a bias);
    returns the final logits ``F̂Ŵᵀ``."""
    features, weight, bias = network.closed_form_features(), network.head.weight, network.head.bias
    has_bias, feature_dim = network.head.has_bias, features.shape[-1]
    factors = StepFactors.of(step_size, objective, features.shape[-2], features)
    alpha = factors.residual_rate
    column_keep = folded_column_keep(weight, factors, has_bias)
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
            residual_t = factors.scale_residual(residual_t)
            residual, gradient = residual_t.transpose(-1, -2), torch.bmm(residual_t, folded_features)
        else:
            residual = factors.scale_residual(torch.baddbmm(targets, folded_features, folded_weight_t, beta=-1))
            gradient = torch.bmm(residual.transpose(-1, -2), folded_features)
        folded_features.baddbmm_(residual, folded_weight, beta=factors.keep_features(folded_features), alpha=alpha)
        if ones_column is not None:
            ones_column.fill_(1.0)
        if column_keep is not None:
            folded_weight.mul_(column_keep)
        folded_weight.add_(gradient, alpha=alpha)
    features.copy_(folded_features[..., :feature_dim])
    weight.copy_(folded_weight[..., :feature_dim])
    if has_bias:
        bias.copy_(folded_weight[..., -1])
    return torch.bmm(folded_features, folded_weight_t)


def folded_column_keep(weight: Tensor, factors: StepFactors, has_bias: bool) -> float | Tensor | None:
    """The factor each column of ``Ŵ`` keeps per step: ``1 − ηλ_W`` on W's columns, ``1 − ηλ_b`` on the bias
    column; a number when they agree for every replica, None when it is 1 (no decay), else a tensor ``(p + 1,)`` or,
    per replica, ``(R, 1, p + 1)``."""
    classifier_keep, bias_keep = factors.classifier_keep, factors.bias_keep
    if isinstance(classifier_keep, float) and isinstance(bias_keep, float):
        if not has_bias or bias_keep == classifier_keep:
            return None if classifier_keep == 1.0 else classifier_keep
        keep = weight.new_full((weight.shape[-1] + 1,), classifier_keep)
        keep[-1] = bias_keep
        return keep
    columns = weight.shape[-1] + (1 if has_bias else 0)
    keep = weight.new_ones(weight.shape[0], 1, columns) * classifier_keep
    if has_bias:
        keep[..., -1:] = bias_keep
    return keep


def in_place_descent(
    network: ClosedFormNetwork, targets: Tensor, steps: int, step_size: PerReplica, logits: Tensor,
    objective: Objective = PAPER_OBJECTIVE,
) -> Tensor:
    """Plain descent on the parameters themselves, ``F ← (1 − ηλ_H)F − η·RW`` as one GEMM, from the present
    state's ``logits``; returns the final logits (each step's product gives the next step's residual)."""
    features, weight, bias = network.closed_form_features(), network.head.weight, network.head.bias
    has_bias = network.head.has_bias
    factors = StepFactors.of(step_size, objective, features.shape[-2], features)
    alpha = factors.residual_rate
    bias_keep = factors.bias_keep if isinstance(factors.bias_keep, float) else factors.bias_keep.squeeze(-1)
    softmax = objective.data_loss.link is Link.SOFTMAX
    bias_row, weight_t = bias.unsqueeze(-2), weight.transpose(-1, -2)
    for _ in range(steps):
        residual = softmax_residual(logits, targets) if softmax else logits.sub_(targets)
        residual = factors.scale_residual(residual)
        grad_weight = torch.bmm(residual.transpose(-1, -2), features)
        grad_bias = residual.sum(dim=-2) if has_bias else None
        features.baddbmm_(residual, weight, beta=factors.keep_features(features), alpha=alpha)
        if not isinstance(factors.classifier_keep, float) or factors.classifier_keep != 1.0:
            weight.mul_(factors.classifier_keep)
        weight.add_(grad_weight, alpha=alpha)
        if grad_bias is not None:
            if not isinstance(bias_keep, float) or bias_keep != 1.0:
                bias.mul_(bias_keep)
            bias.add_(grad_bias, alpha=alpha)
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
    feature_decay, classifier_decay = (
        replica_tensor(objective.feature_decay, features, 2), replica_tensor(objective.classifier_decay, weight, 2)
    )
    bias_decay = replica_tensor(objective.bias_decay, bias, 1)
    softmax = objective.data_loss.link is Link.SOFTMAX
    bias_row, weight_t = bias.unsqueeze(-2), weight.transpose(-1, -2)
    for _ in range(steps):
        residual = softmax_residual(logits, targets) if softmax else logits.sub_(targets)
        if scale != 1.0:
            residual.mul_(scale)
        features.grad = decayed_product(residual, weight, features, feature_decay)
        weight.grad = decayed_product(residual.transpose(-1, -2), features, weight, classifier_decay)
        if has_bias:
            bias.grad = residual.sum(dim=-2)
            if not isinstance(bias_decay, float):
                bias.grad.addcmul_(bias, bias_decay)
            elif bias_decay:
                bias.grad.add_(bias, alpha=bias_decay)
        optimizer.step()
        logits = torch.baddbmm(bias_row, features, weight_t)
    return logits


def decayed_product(left: Tensor, right: Tensor, parameter: Tensor, decay: float | Tensor) -> Tensor:
    """``left @ right + λ·parameter`` (a gradient with its decay): one GEMM with β = λ for a number λ, and for a
    per-replica λ ``(R, 1, 1)`` one with β = 1 on ``λ ⊙ parameter`` (the GEMM scales by β first, so each replica
    gets the numbers of its own run)."""
    if not isinstance(decay, float):
        return torch.baddbmm(parameter * decay, left, right)
    if decay:
        return torch.baddbmm(parameter, left, right, beta=decay)
    return torch.bmm(left, right)
