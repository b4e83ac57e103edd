"""The deep UFM's regularised objective: the UFM's data term and decays, plus a decay on every hidden weight.

Per replica, for the deep UFM ``Z = W_L H_L (+ b1ᵀ)``, ``H_{l+1} = σ(W_l H_l)`` (:mod:`ufm_torch.models.deep_ufm`)::

    f = D(Z) + λ_{H_1}/2 ‖H_1‖²_F + Σ_{l<L} λ_hidden/2 ‖W_l‖²_F + λ_{W_L}/2 ‖W_L‖²_F + λ_b/2 ‖b‖²

with D, λ_{H_1}, λ_{W_L} and λ_b those of :class:`ufm_torch.objectives.ufm.Objective` (``module.loss``,
``module.feature_decay`` on all of H_1, ``module.classifier_decay``, ``module.bias_decay``) and λ_hidden
``module.hidden_decay`` (None: λ_{W_L}). With ``mean_squared``, no bias and λ_hidden, this is the objective of
Súkeník, Mondelli & Lampert 2023 and Dang et al. 2023, :func:`ufm_torch.theory.deep_problem.deep_ufm_objective`; with
L = 1 it is the UFM's f.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from ufm_torch.objectives.ufm import PAPER_OBJECTIVE, Objective


@dataclass(frozen=True)
class DeepObjective:
    """f of the deep UFM (module docstring): ``objective`` gives D and the decays of H_1, W_L and b,
    ``hidden_decay`` λ_hidden ≥ 0 of W_1 … W_{L−1} (None: ``objective.classifier_decay``)."""

    objective: Objective = PAPER_OBJECTIVE
    hidden_decay: float | None = None

    def __post_init__(self) -> None:
        if self.hidden_decay is not None and not (math.isfinite(self.hidden_decay) and self.hidden_decay >= 0):
            raise ValueError(f"module.hidden_decay={self.hidden_decay} must be null or a finite number >= 0")

    @property
    def hidden(self) -> float:
        """λ_hidden: ``hidden_decay``, or λ_{W_L} when it is None."""
        return self.objective.classifier_decay if self.hidden_decay is None else self.hidden_decay

    def layer_decays(self, depth: int) -> tuple[float, ...]:
        """``(λ_{W_1}, …, λ_{W_L})`` of a model of ``depth`` L: λ_hidden L − 1 times, then λ_{W_L}."""
        return (self.hidden,) * (depth - 1) + (self.objective.classifier_decay,)

    def penalty(self, features: Tensor, weights: Sequence[Tensor], bias: Tensor | None) -> Tensor:
        """``λ_{H_1}/2‖H_1‖²_F + Σ_l λ_{W_l}/2‖W_l‖²_F + λ_b/2‖b‖²`` per replica, from ``features`` H_1ᵀ, ``weights``
        ``(W_1, …, W_L)`` and ``bias`` (None without one)."""
        total = self.objective.penalty(features, weights[-1], bias)
        if self.hidden:
            for weight in weights[:-1]:
                total = total + 0.5 * self.hidden * weight.square().sum(dim=(-1, -2))
        return total

    def value(
        self, logits: Tensor, labels: Tensor, features: Tensor, weights: Sequence[Tensor], bias: Tensor | None
    ) -> Tensor:
        """f per replica, shape ``(R,)``, from the network's ``logits`` Z ``(R, n, C)`` of every sample (row i has
        label ``labels[i]``) and its parameters (:meth:`penalty`)."""
        return self.objective.data_term(logits, labels) + self.penalty(features, weights, bias)
