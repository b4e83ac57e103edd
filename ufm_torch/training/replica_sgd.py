"""SGD with one step size per replica: ``optimizer.lr`` given as a list on a network of replicas.

Every parameter of a network with replicas is replica-major, ``(R, …)``. :class:`ReplicaSGD` takes the steps of
``torch.optim.SGD`` (heavy ball with momentum μ, dampening, Nesterov, weight decay), except that replica r moves by
its own step size η_r::

    d = ∇ + wd·x,    m ← μm + (1 − dampening)d  (m = d at the first step),    x_r ← x_r − η_r (d + μm  or  m)_r

(Polyak 1964; Sutskever et al. 2013 for Nesterov's form, as torch writes it). The fused plain-descent path of
:mod:`ufm_torch.training.fused_descent` reads the step sizes from the optimiser and takes its steps itself; with
momentum or weight decay the closed-form gradients reach :meth:`ReplicaSGD.step` in ``.grad``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import torch
from omegaconf import ListConfig
from torch import Tensor, nn

from ufm_torch.hyperparameters import HyperparameterSetting, per_replica_value

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class ReplicaSGD(torch.optim.Optimizer):
    """``torch.optim.SGD`` with a step size per replica (module docstring): ``lr`` holds R numbers, and every
    parameter's first dimension is R. Its one parameter group keeps ``lr`` as that tuple."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: Sequence[float],
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        step_sizes = tuple(float(value) for value in lr)
        if not step_sizes or min(step_sizes) <= 0:
            raise ValueError(f"optimizer.lr={list(step_sizes)} must hold step sizes > 0")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and no dampening")
        defaults = {
            "lr": step_sizes, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
            "nesterov": nesterov, "maximize": maximize,
        }  # fmt: skip
        super().__init__(params, defaults)
        self._step_size_tensors: dict[tuple[object, ...], Tensor] = {}
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.dim() == 0 or parameter.shape[0] != len(step_sizes):
                    raise ValueError(
                        f"optimizer.lr holds {len(step_sizes)} step sizes, one per replica, but a parameter has shape "
                        f"{tuple(parameter.shape)} (its first dimension must be the replicas)"
                    )

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One step of every replica (module docstring); ``closure`` re-evaluates the loss, as for any optimiser."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            momentum, dampening = group["momentum"], group["dampening"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                direction = -parameter.grad if group["maximize"] else parameter.grad
                if group["weight_decay"]:
                    direction = direction.add(parameter, alpha=group["weight_decay"])
                if momentum:
                    state = self.state[parameter]
                    buffer = state.get("momentum_buffer")
                    if buffer is None:
                        buffer = state["momentum_buffer"] = direction.clone().detach()
                    else:
                        buffer.mul_(momentum).add_(direction, alpha=1.0 - dampening)
                    direction = direction.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                parameter.addcmul_(direction, self._step_sizes(group["lr"], parameter), value=-1.0)
        return loss

    def _step_sizes(self, step_sizes: tuple[float, ...], parameter: Tensor) -> Tensor:
        """η_r as a tensor ``(R, 1, …)`` broadcasting against ``parameter``, made once per dtype, device and shape."""
        key = (step_sizes, parameter.dtype, parameter.device, parameter.dim())
        if key not in self._step_size_tensors:
            tensor = torch.tensor(step_sizes, dtype=parameter.dtype, device=parameter.device)
            self._step_size_tensors[key] = tensor.view(-1, *([1] * (parameter.dim() - 1)))
        return self._step_size_tensors[key]


def per_replica_optimizer(factory: OptimizerFactory, settings: Sequence[HyperparameterSetting]) -> OptimizerFactory:
    """The optimiser of replicas with ``settings`` (one per replica): ``factory`` itself unless its ``lr`` is a list
    (a partial's keyword, as Hydra's ``_partial_: true`` builds it); then each replica's own step size, through
    :class:`ReplicaSGD` when they differ (``torch.optim.SGD`` only: ``ValueError`` for another optimiser)."""
    keywords = getattr(factory, "keywords", {})
    step_size = keywords.get("lr")
    if not isinstance(step_size, list | tuple | ListConfig):
        return factory
    step_sizes = per_replica_value(step_size, "optimizer.lr", settings)
    if isinstance(step_sizes, float):
        return functools.partial(factory.func, *factory.args, **(keywords | {"lr": step_sizes}))
    if factory.func is not torch.optim.SGD:
        raise ValueError(
            f"optimizer.lr={list(step_size)} gives each replica its own step size, which needs torch.optim.SGD "
            f"(optimizer=sgd or optimizer=momentum), not {factory.func.__module__}.{factory.func.__name__}"
        )
    return functools.partial(ReplicaSGD, *factory.args, **(keywords | {"lr": step_sizes}))
