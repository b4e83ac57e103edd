"""The LightningModule: training steps of a network (UFM or backbone) with a linear head against one-hot labels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import lightning as L
import torch
from torch import Tensor, nn

from ufm_torch.hyperparameters import per_replica_value
from ufm_torch.metrics.tags import LOSS_TAG, TRAIN_ACCURACY_TAG
from ufm_torch.models import Network, default_loss_name, has_free_layers, has_fused_steps
from ufm_torch.objectives.deep_ufm import DeepObjective
from ufm_torch.objectives.sample_chunks import chunked_data_term, fits_one_chunk
from ufm_torch.objectives.ufm import Objective, PerReplica
from ufm_torch.training.deep_steps import free_layer_steps
from ufm_torch.training.fused_descent import closed_form_steps
from ufm_torch.training.lightning_steps import sees_every_optimizer_step
from ufm_torch.training.replica_sgd import per_replica_optimizer
from ufm_torch.training.step_boundaries import steps_until_boundary

StepOutput = dict[str, Tensor]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]

SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


class CollapseModule(L.LightningModule):
    """Trains ``network`` (a :class:`ufm_torch.models.Network`) against one-hot labels.

    Objective (:class:`ufm_torch.objectives.ufm.Objective`), per replica::

        f(W, H, b) = D(W, H, b) + λ_W/2 ‖W‖²_F + λ_H/2 ‖H‖²_F + λ_b/2 ‖b‖²

    ``loss`` names the data term D, one of :data:`ufm_torch.objectives.losses.LOSSES` (None:
    :func:`default_loss_name`); ``label_smoothing`` is s for ``cross_entropy``; ``temperature`` τ (None: 1) divides
    the logits before the cross-entropy (the spherical UFM, ``model.normalize``); ``feature_decay`` λ_H,
    ``classifier_decay`` λ_W and ``bias_decay`` λ_b default to 0 (f = D). On the UFM the feature penalty covers all
    of H (every row of ``network.closed_form_features()``); on a backbone it covers the batch's penultimate features
    ``network.forward_features(inputs)`` (Zhu et al. 2021's feature decay), which the head then maps to the logits
    (a minibatch of B of n samples thus carries ``λ_H/2‖H_B‖²_F``, in expectation ``(B/n)·λ_H/2‖H‖²_F``).
    A bias-free head (``head.has_bias`` False) has b ≡ 0 and no λ_b term. On the deep UFM (a
    :class:`~ufm_torch.models.FreeLayersNetwork`) f is :class:`~ufm_torch.objectives.deep_ufm.DeepObjective`'s: λ_H
    on all of H_1, λ_W on the classifier W_L and ``hidden_decay`` (None: λ_W) on W_1 … W_{L−1}. The optimiser's own
    ``weight_decay`` still applies to whatever it optimises (backbone bodies, and on the UFM every parameter).
    Per replica: s, λ_H, λ_W, λ_b and the optimiser's ``lr`` may each be a list, on a network built with the
    hyperparameter grid of :mod:`ufm_torch.hyperparameters`; each replica then takes its own value from its identity
    (a tuple per replica in the objective, :class:`~ufm_torch.training.replica_sgd.ReplicaSGD` for the step sizes).

    The loss of a step is the sum over replicas of the per-replica f, so every replica receives exactly the
    gradient it would get alone. ``optimizer`` is a partial (Hydra ``_partial_: true``) that receives the
    parameters; ``scheduler`` (None: a constant learning rate) is a partial that receives the optimiser and returns a
    ``torch.optim.lr_scheduler`` scheduler, stepped after every optimiser step (Lightning's ``interval: step``), so
    its milestones count steps, e.g. ``MultiStepLR`` with ``milestones=[T/3, 2T/3]`` (Papyan et al. 2020). Backbones
    only: the UFM's fused steps do not go through Lightning's scheduler stepping (the config checks refuse it).
    ``training_step`` returns ``{"loss": Σ_r f_r, "train/loss": mean_r f_r, "train/accuracy": mean_r
    acc_r}`` for the state at ``global_step`` (after a fused block, the state it leaves): ``train/loss`` is the whole
    objective f, penalties included, so that the divergence guard and the optimum gap see what is minimised
    (:meth:`objective_value`; :attr:`loss_fn` is D alone). The loggers receive these at true optimiser steps from
    :class:`ufm_torch.callbacks.training_curves.TrainingCurves`, which also feeds ``callback_metrics`` (at the
    steps its docstring names) and the progress bar. ``training_step`` itself calls no ``self.log``: no logger sees
    Lightning's batch counter as a step, and a block does not pay Lightning's per-call cost of ``self.log`` (about
    0.65 ms a call on this project's CPU machine, Lightning issue #20388: the two calls took 1.3 ms, against 1.9 ms
    for the rest of a 30-replica fused block of 20 steps).

    A network without fused steps of its own (a backbone, any network that is neither a
    :class:`~ufm_torch.models.ClosedFormNetwork` nor a :class:`~ufm_torch.models.FreeLayersNetwork`) trains with
    Lightning's automatic optimisation. The UFM on full batches (every loss, decay and bias setting) takes up to
    ``fused_steps`` closed-form gradient steps per batch (:mod:`ufm_torch.training.fused_descent`), the deep UFM as
    many steps of hand-written backpropagation (:mod:`ufm_torch.training.deep_steps`), stopping at every step a
    callback must see (:mod:`ufm_torch.training.step_boundaries`); ``global_step`` counts each. The logits of the
    state a closed-form block leaves are kept: :meth:`current_logits` hands them to the collapse monitor (no forward
    pass at an evaluation) and the next block starts from them (no product to start it). Either UFM on minibatches
    takes autograd steps of f.
    """

    def __init__(
        self,
        network: Network,
        optimizer: OptimizerFactory,
        loss: str | None = None,
        fused_steps: int = 1000,
        label_smoothing: float | Sequence[float] = 0.0,
        feature_decay: float | Sequence[float] = 0.0,
        classifier_decay: float | Sequence[float] = 0.0,
        bias_decay: float | Sequence[float] = 0.0,
        scheduler: SchedulerFactory | None = None,
        hidden_decay: float | None = None,
        temperature: float | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        loss = loss or default_loss_name(network)
        settings = [identity.hyperparameters for identity in network.replica_identities()]
        given = {"label_smoothing": label_smoothing, "feature_decay": feature_decay,
                 "classifier_decay": classifier_decay, "bias_decay": bias_decay}  # fmt: skip
        if temperature is not None:
            given["temperature"] = temperature
        values = {name: per_replica_value(value, f"module.{name}", settings) for name, value in given.items()}
        self.objective = Objective(loss, **values)
        self.deep_objective = DeepObjective(self.objective, hidden_decay)
        self.network = network
        self.optimizer_factory = per_replica_optimizer(optimizer, settings)
        self.scheduler_factory = scheduler
        self.loss_name = loss
        self.loss_fn: Callable[[Tensor, Tensor], Tensor] = self.objective.data_term
        self.fused_steps = fused_steps
        self.automatic_optimization = not has_fused_steps(network)
        self.trains_free_layers = has_free_layers(network)
        self.block_logits: tuple[tuple[int, ...], Tensor] | None = None

    @property
    def label_smoothing(self) -> PerReplica:
        """s of the cross-entropy (``module.label_smoothing``)."""
        return self.objective.label_smoothing

    @property
    def feature_decay(self) -> PerReplica:
        """λ_H (``module.feature_decay``)."""
        return self.objective.feature_decay

    @property
    def classifier_decay(self) -> PerReplica:
        """λ_W (``module.classifier_decay``)."""
        return self.objective.classifier_decay

    @property
    def bias_decay(self) -> PerReplica:
        """λ_b (``module.bias_decay``)."""
        return self.objective.bias_decay

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits of the network for a batch of inputs."""
        return self.network(inputs)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> StepOutput:
        """One optimiser step (or a fused block of full-batch steps for either UFM); returns the summed objective and
        the means over replicas of objective and accuracy (class docstring)."""
        inputs, labels = batch
        if self.automatic_optimization:
            features = self.network.forward_features(inputs)
            logits = self.network.head(features)
            return self._step_output(self.objective_value(logits, labels, features), logits, labels)
        optimizer = self.optimizers()
        if self.trains_free_layers:
            features = self.network.free_layers().features
        else:
            features = self.network.closed_form_features()
        if inputs.shape[0] == features.shape[-2]:
            row_labels = torch.empty_like(labels).index_copy_(0, inputs, labels)
            steps = steps_until_boundary(self.trainer, self.fused_steps)
            through_optimizer = sees_every_optimizer_step(self.trainer)
            if self.trains_free_layers:
                logits = free_layer_steps(
                    self.network, row_labels, optimizer, steps, self.deep_objective, through_optimizer
                )
            else:
                logits = closed_form_steps(
                    self.network, row_labels, optimizer, steps, logits=self.current_logits(),
                    through_optimizer=through_optimizer, objective=self.objective,
                )
                if logits is None:
                    return self._chunked_step_output(features, row_labels)
                self.block_logits = (self._state_stamp(), logits)
            return self._step_output(self.objective_value(logits, row_labels, features), logits, row_labels)
        optimizer.zero_grad()
        logits = self.network(inputs)
        output = self._step_output(self.objective_value(logits, labels, features), logits, labels)
        self.manual_backward(output["loss"])
        optimizer.step()
        return output | {"loss": output["loss"].detach()}

    def objective_value(self, logits: Tensor, labels: Tensor, features: Tensor) -> Tensor:
        """f per replica: the data term of ``logits`` against ``labels`` plus the decays of the head's W and b and of
        ``features`` (all of H for the UFM, the batch's penultimate features for a backbone); for a deep UFM the
        decays of all of H_1 and of every W_l instead (``features`` unused)."""
        value = self.objective.data_term(logits, labels)
        head = self.network.head
        bias = head.bias if getattr(head, "has_bias", True) else None
        if self.trains_free_layers:
            free_features, weights, _ = self.network.free_layers()
            return value + self.deep_objective.penalty(free_features, weights, bias)
        if not self.objective.is_regularised:
            return value
        return value + self.objective.penalty(features, head.weight, bias)

    def current_logits(self) -> Tensor | None:
        """Logits ``(R, n, C)`` of every training sample in the network's present state if the last fused block left
        it (same step, parameters untouched since), else None. A later block takes them over and overwrites them."""
        if self.block_logits is None or self.block_logits[0] != self._state_stamp():
            return None
        return self.block_logits[1]

    def _state_stamp(self) -> tuple[int, ...]:
        """``global_step`` and, per parameter, its storage and in-place version counter: equal stamps, equal state."""
        stamp = [self.trainer.global_step]
        for parameter in self.network.parameters():
            stamp += [parameter.data_ptr(), parameter._version]
        return tuple(stamp)

    def _step_output(self, loss_per_replica: Tensor, logits: Tensor, labels: Tensor) -> StepOutput:
        """The objective summed over replicas (what is optimised) with the detached means over replicas of the
        objective and the accuracy (left on the device: ``TrainingCurves`` reads them at its steps only)."""
        accuracy = (logits.detach().argmax(dim=-1) == labels).to(logits.dtype).mean()
        mean_loss = loss_per_replica.detach().mean()
        return {"loss": loss_per_replica.sum(), LOSS_TAG: mean_loss, TRAIN_ACCURACY_TAG: accuracy}

    def objective_without_logits(self) -> tuple[Tensor, Tensor] | None:
        """f and the training accuracy per replica, ``((R,), (R,))``, of a spherical UFM (``network.normalize``,
        whose steps work over chunks of samples) whose logits exceed one chunk of
        :mod:`ufm_torch.objectives.sample_chunks`, computed over chunks without holding the logits; None for every
        other network (the caller takes the logits)."""
        if self.trains_free_layers or not has_fused_steps(self.network) or not self.network.normalize:
            return None
        features = self.network.closed_form_features()
        if fits_one_chunk(features, self.network.head.weight):
            return None
        return self._objective_in_chunks(features, self.trainer.datamodule.labels.to(features.device))

    def _objective_in_chunks(self, features: Tensor, row_labels: Tensor) -> tuple[Tensor, Tensor]:
        """f (the data term over chunks of samples, :func:`chunked_data_term`, plus the penalty) and the accuracy per
        replica of the UFM's present state, its rows labelled by ``row_labels``."""
        head = self.network.head
        term = chunked_data_term(features, head.weight, row_labels, self.objective)
        penalty = self.objective.penalty(features, head.weight, head.bias if head.has_bias else None)
        return term.value + penalty, term.accuracy

    def _chunked_step_output(self, features: Tensor, row_labels: Tensor) -> StepOutput:
        """:meth:`_step_output` of a state whose logits are too many to hold (the spherical UFM past
        :data:`~ufm_torch.objectives.sample_chunks.CHUNK_ENTRIES`), from :meth:`_objective_in_chunks`."""
        value, accuracy = self._objective_in_chunks(features, row_labels)
        return {"loss": value.sum(), LOSS_TAG: value.mean(), TRAIN_ACCURACY_TAG: accuracy.mean()}

    def configure_optimizers(self) -> torch.optim.Optimizer | dict:
        """The configured optimiser over all parameters of the network, with its scheduler (stepped every step) if
        one is configured."""
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = {"scheduler": self.scheduler_factory(optimizer), "interval": "step", "frequency": 1}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
