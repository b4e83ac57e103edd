"""Which deep-UFM oracle applies to a run, asked once: the closed form, the two-class optimum or the DNC reference.

- σ = identity: the deep linear UFM's global optimum (Dang et al. 2023), any class sizes
  (:func:`~ufm_torch.theory.deep_linear.deep_linear_optimum`);
- σ = ReLU, K = 2 balanced classes: the DNC optimum, global by Súkeník et al. 2023
  (:func:`~ufm_torch.theory.deep_relu.relu_two_class_optimum`);
- σ = ReLU, K > 2 balanced classes: the best point of the DNC family, a reference that lower-rank solutions can
  beat (Súkeník et al. 2024; :func:`~ufm_torch.theory.deep_relu.relu_dnc_reference`), reported as
  ``optimum/loss_vs_dnc``.

All of them are stated for the objective of those papers, ``(1/2n)‖W_L H_L − Y‖²_F`` plus the decays, without a
bias and with every decay > 0. Anything else raises :class:`~ufm_torch.theory.deep_problem.OracleAssumptionError`
with one line saying which assumption fails; the monitor prints it once and logs no ``optimum/*`` metric.
"""

from __future__ import annotations

from ufm_torch.models import Activation
from ufm_torch.objectives.losses import Loss, MeanSquaredError
from ufm_torch.theory.deep_linear import deep_linear_optimum
from ufm_torch.theory.deep_problem import DeepUFMOptimum, OracleAssumptionError
from ufm_torch.theory.deep_relu import relu_dnc_reference, relu_two_class_optimum


def deep_ufm_oracle(
    class_sizes: tuple[int, ...],
    feature_dim: int,
    width: int,
    depth: int,
    feature_decay: float,
    hidden_decay: float,
    classifier_decay: float,
    activation: Activation,
    loss: Loss,
    bias: bool,
) -> DeepUFMOptimum:
    """The oracle of the module docstring for one deep UFM with hidden activation ``activation``."""
    if not isinstance(loss, MeanSquaredError):
        raise OracleAssumptionError(
            f"the deep-UFM oracles are stated for module.loss=mean_squared, (1/2n)‖W_L H_L − Y‖², not {loss.name}"
        )
    arguments = (class_sizes, feature_dim, width, depth, feature_decay, hidden_decay, classifier_decay, bias)
    if activation is Activation.LINEAR:
        return deep_linear_optimum(*arguments)
    if len(class_sizes) == 2:
        return relu_two_class_optimum(*arguments)
    return relu_dnc_reference(*arguments)
