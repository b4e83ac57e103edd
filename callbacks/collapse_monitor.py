"""The collapse monitor: every collapse metric of any LightningModule, at every named layer, on the training and
held-out data, on a geometric step schedule, written to every logger and to ``metrics.jsonl``."""

from __future__ import annotations

import bisect
import math
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ufm_torch.errors import ConfigError
from ufm_torch.hyperparameters import STEP_SIZE_KEY
from ufm_torch.metrics import CollapseMetricWarning, centred_mean_directions
from ufm_torch.metrics.layers import BATCH_KEYS, FeatureMap, default_classifier, find_module, is_linear_classifier
from ufm_torch.metrics.network import (
    HELDOUT,
    TRAIN,
    MeasurementPlan,
    NetworkMeasurement,
    free_layer_names,
    measure_free_features,
    measure_free_layers,
    measure_layers,
)
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.metrics.statistics import ClassLabels, class_labels
from ufm_torch.metrics.tags import GRAM_IMAGE_TAG
from ufm_torch.models import ClosedFormNetwork, ReplicaIdentity, has_closed_form, has_free_layers
from ufm_torch.run_folder.event_files import truncate_tree
from ufm_torch.run_folder.layout import METRICS_FILE
from ufm_torch.run_folder.metrics_log import MetricsLog
from ufm_torch.run_folder.names import measurement_run_name, replica_run_names
from ufm_torch.run_folder.tensorboard import (
    add_image,
    add_scalar_rows,
    binned_gram,
    binned_simplex_etf_gram,
    gram_comparison_image,
    open_replica_writers,
    write_hparams,
)
from ufm_torch.theory.deep_oracle import deep_ufm_oracle
from ufm_torch.theory.deep_problem import DeepUFMOptimum, OracleAssumptionError
from ufm_torch.theory.optimum import OptimumBatch, UFMProblem, optimum_metrics, solve_optima
from ufm_torch.training.module import CollapseModule

TENSORBOARD_FLUSH_SECONDS = 2.0
"""The replica runs reach TensorBoard at most this long after an evaluation (and all of them at the end)."""
GRAM_IMAGE_GROUPS = 8
"""The most replica groups whose first copy gets Gram-matrix images."""


class CollapseMonitor(L.Callback):
    """Measures neural collapse in any LightningModule at scheduled steps and writes it everywhere.

    **What.** ``layers`` are module names of the LightningModule (as in ``named_modules()``), each read at its output
    through a forward hook; ``classifier`` names its linear classifier (an ``nn.Linear``; default: the last one), whose
    *input* is always measured and is the main layer. A 4-D activation becomes rows by ``feature_map``: ``"pool"``
    (global average pooling, the default) or ``"flatten"``. Every layer gets NC1, ``nc1_quotient``, the NC2 variants,
    CDNV and GNC2; the classifier's input also NC3, NC4, UNC3, the nearest-centre agreement and SNC1–SNC3
    (definitions in :mod:`ufm_torch.metrics`). C is the classifier's number of outputs, or ``num_classes``.

    **Data.** The training set is ``train_dataloader``, else the datamodule's ``train_eval_dataloader()`` when it has
    one, else the trainer's training loader; held-out data is ``heldout_dataloader``, else the datamodule's
    ``heldout_dataloader()`` when it has one (NC1, CDNV, NC4 and the agreement with the training class centres, and
    ``heldout/accuracy``). Batches are ``(inputs, labels)`` or dicts with the keys ``batch_keys``. The loaders should
    not augment: the second pass must see the data of the first. Measurement runs in eval mode under
    ``torch.inference_mode`` and restores every module's mode; under DDP each sample counts once.

    **When.** :func:`ufm_torch.metrics.schedule.evaluation_steps`: step 0, ``points_per_decade`` geometric points per
    decade, every ``every_n_steps`` steps if set, and the last step (with ``in_epochs`` the geometric points are
    epochs of the training loader). Fused UFM steps stop at each (:meth:`next_due_step`).

    **Where.** Each evaluation goes to ``metrics.jsonl`` in ``output_dir`` (default: the trainer's ``log_dir``):
    one record per replica, layer and split, with ``layer`` (the module name) and ``split`` (``train`` or
    ``heldout``) next to ``step``; to one TensorBoard run per replica, layer and split under the TensorBoard logger's
    folder (``backbone``, ``backbone/layer=<name>``, ``backbone/heldout``; a UFM's ``eps=<ε>/rep=<k>``, or
    ``lam_W=0.01/lam_H=0.02/rep=<k>`` for replicas with their own hyperparameters), each holding
    the same tags, so one Custom Scalars chart per metric has one line per layer and split; and to any other logger
    as ``<tag>/<run>``, always at the true ``global_step`` whatever ``log_every_n_steps`` is. Gram-matrix images (first
    copy of each init scale) are added at ``gram_images`` evaluations spread over the schedule. The runs are flushed
    at least every ``TENSORBOARD_FLUSH_SECONDS`` and before each checkpoint; on resume, the events that a killed run
    wrote after the checkpoint are dropped (:mod:`ufm_torch.run_folder.event_files`).

    Metrics that are undefined at an evaluation (NaN, ``null`` in ``metrics.jsonl``: W = 0 past a regularised UFM's
    threshold, say) are not a warning per evaluation: one line at the end of training names them, their reason and
    at how many evaluations.

    Bad input is a one-line :class:`ufm_torch.errors.ConfigError` before training: a layer or classifier name that is
    not a module (with the closest names), a classifier that is not linear, labels outside ``[0, C)``, a batch or an
    activation that cannot be read.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike | None = None,
        points_per_decade: int = 10,
        every_n_steps: int | None = None,
        gram_images: int = 4,
        in_epochs: bool = False,
        layers: Sequence[str] | None = None,
        classifier: str | None = None,
        train_dataloader: DataLoader | None = None,
        heldout_dataloader: DataLoader | None = None,
        feature_map: str = "pool",
        num_classes: int | None = None,
        batch_keys: Sequence[str] = BATCH_KEYS,
    ) -> None:
        super().__init__()
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.points_per_decade = points_per_decade
        self.every_n_steps = every_n_steps
        self.in_epochs = in_epochs
        self.gram_images = gram_images
        self.layers = tuple(layers or ())
        self.classifier = classifier
        self.train_dataloader = train_dataloader
        self.heldout_dataloader = heldout_dataloader
        try:
            self.feature_map = FeatureMap(feature_map)
        except ValueError:
            allowed = [option.value for option in FeatureMap]
            raise ConfigError(f"feature_map={feature_map!r} is not allowed; it must be one of {allowed}") from None
        self.num_classes = num_classes
        self.batch_keys = tuple(batch_keys)
        self.plan: MeasurementPlan | None = None
        self.closed_form = False
        self.metrics_log: MetricsLog | None = None
        self.steps: list[int] = []
        self.schedule: set[int] = set()
        self.image_steps: set[int] = set()
        self.writers: list[Any] = []
        self.run_names: list[str] = []
        self.identities: list[ReplicaIdentity] = []
        self.identity_fields: list[dict[str, Any]] = []
        self.last_records: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.class_means: Tensor | None = None
        self.optimum: ReplicaOptima | None = None
        self.deep_optimum: DeepUFMOptimum | None = None
        self.free_layers = False
        self.labels: ClassLabels | None = None
        self.undefined: dict[str, int] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Resolve and check what to measure (:meth:`check`) and where ``metrics.jsonl`` goes."""
        self.check(pl_module)
        self.metrics_log = MetricsLog(self.metrics_path(trainer))

    def metrics_path(self, trainer: L.Trainer) -> Path:
        """Where ``metrics.jsonl`` is written: in ``output_dir``, else the trainer's log folder. The same path in every
        process, so that the main process reads what rank 0 wrote under DDP (whose workers hold the records)."""
        return Path(self.output_dir or trainer.log_dir or trainer.default_root_dir) / METRICS_FILE

    def check(self, pl_module: L.LightningModule) -> MeasurementPlan:
        """Resolve the classifier, the layers and C for ``pl_module``; a mistake is a one-line :class:`ConfigError`
        (``ufm-train`` calls this before the run folder changes)."""
        network = measured_network(pl_module)
        self.closed_form = has_closed_form(network)
        self.free_layers = has_free_layers(network)
        classifier = self.classifier or default_classifier(pl_module)
        head = None if classifier is None else find_module(pl_module, classifier, "classifier")
        if head is not None and not is_linear_classifier(head):
            kind = type(head).__name__
            raise ConfigError(f"classifier {classifier!r} is a {kind}, not an nn.Linear: name the linear classifier")
        for name in self.layers:
            find_module(pl_module, name, "layer")
        layers = tuple(dict.fromkeys(([classifier] if classifier else []) + list(self.layers)))
        if not layers:
            raise ConfigError(
                f"{type(pl_module).__name__} has no nn.Linear classifier: name one with classifier=... or list the "
                "layers to measure with layers=[...]"
            )
        if self.closed_form and layers != (classifier,):
            raise ConfigError(
                f"the UFM has one layer, the input of its classifier {classifier!r} (its features H); layers "
                f"{[name for name in layers if name != classifier]} cannot be measured"
            )
        num_classes = self.num_classes
        if head is not None:
            num_classes = head.weight.shape[-2]
            if self.num_classes is not None and self.num_classes != num_classes:
                raise ConfigError(
                    f"num_classes={self.num_classes} but classifier {classifier!r} has {num_classes} outputs"
                )
        if num_classes is None or num_classes < 2:
            raise ConfigError(
                f"the collapse monitor needs num_classes ≥ 2 when no classifier is named, got {num_classes}"
            )
        self.plan = MeasurementPlan(layers, classifier, num_classes, self.feature_map, self.batch_keys)
        return self.plan

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Build the schedule, open the log (dropping records past a resumed checkpoint) and evaluate the start."""
        steps_per_epoch = optimiser_steps_per_epoch(trainer) if self.in_epochs else None
        steps = evaluation_steps(trainer.max_steps, self.points_per_decade, self.every_n_steps, steps_per_epoch)
        self.steps = steps
        self.schedule = set(steps)
        picks = torch.linspace(0, len(steps) - 1, max(self.gram_images, 1)).round().long().unique()
        self.image_steps = {steps[i] for i in picks.tolist()} if self.gram_images else set()
        network = measured_network(pl_module)
        self.identities = replica_identities(network)
        self.identity_fields = [identity_fields(identity) for identity in self.identities]
        if self.closed_form:
            labels = trainer.datamodule.labels.to(network.closed_form_features().device)
            self.labels = class_labels(labels, labels.shape[0], self.plan.num_classes)
            self.optimum = global_optimum(pl_module, trainer.datamodule)
        elif self.free_layers:
            labels = trainer.datamodule.labels.to(network.free_layers().features.device)
            self.labels = class_labels(labels, labels.shape[0], self.plan.num_classes)
            self.deep_optimum = deep_optimum(pl_module, trainer.datamodule)
        entries = self.measured_entries(trainer)
        replica_runs = replica_run_names(
            [identity.init_scale for identity in self.identities], [identity.copy for identity in self.identities],
            [identity.hyperparameters for identity in self.identities],
        )  # fmt: skip
        main = self.plan.layers[0]
        self.run_names = [
            measurement_run_name(run, layer, split, main) for layer, split in entries for run in replica_runs
        ]
        if trainer.is_global_zero:
            self.metrics_log.open(trainer.global_step, records_per_evaluation=len(self.run_names))
            tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            if tensorboard is not None:
                if trainer.global_step > 0:
                    truncate_tree(Path(tensorboard.log_dir), trainer.global_step)
                self.writers = open_replica_writers(Path(tensorboard.log_dir), self.run_names)
        self._evaluate_if_due(trainer, pl_module, trainer.global_step, force=trainer.global_step == 0)

    def measured_entries(self, trainer: L.Trainer) -> list[tuple[str, str]]:
        """``(layer, split)`` of every measurement of an evaluation, in the order of :class:`NetworkMeasurement`."""
        if self.free_layers:
            network = measured_network(trainer.lightning_module)
            return [(layer, TRAIN) for layer in free_layer_names(network, self.plan.layers[0])]
        splits = [TRAIN] if self.closed_form or self.heldout_loader(trainer) is None else [TRAIN, HELDOUT]
        return [(layer, split) for split in splits for layer in self.plan.layers]

    def training_loader(self, trainer: L.Trainer) -> DataLoader:
        """The data the metrics are measured on (class docstring)."""
        if self.train_dataloader is not None:
            return self.train_dataloader
        datamodule = getattr(trainer, "datamodule", None)
        if hasattr(datamodule, "train_eval_dataloader"):
            return datamodule.train_eval_dataloader()
        loader = trainer.train_dataloader
        if loader is None:
            raise ConfigError("the collapse monitor found no training data: pass train_dataloader=... to it")
        return loader

    def heldout_loader(self, trainer: L.Trainer) -> DataLoader | None:
        """Held-out data, if any (class docstring)."""
        if self.heldout_dataloader is not None:
            return self.heldout_dataloader
        datamodule = getattr(trainer, "datamodule", None)
        return datamodule.heldout_dataloader() if hasattr(datamodule, "heldout_dataloader") else None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Evaluate when the step just taken is on the schedule."""
        self._evaluate_if_due(trainer, pl_module, trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """Flush the replica runs before a checkpoint is written: every evaluation in ``metrics.jsonl`` (flushed
        as written) is then in TensorBoard too, even if the process is killed right after the checkpoint."""
        self._flush()

    def _flush(self) -> None:
        for writer in self.writers:
            writer.flush()
        self.last_flush = time.monotonic()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Close the log and the TensorBoard runs; what was written stays valid (no evaluation of a bad state)."""
        self._close()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate the last step (also when stopped early), write HPARAMS and close every file."""
        self._evaluate_if_due(trainer, pl_module, trainer.global_step, force=True)
        if trainer.is_global_zero:
            self._write_hparams(trainer, pl_module)
            self._close()
            self._report_undefined()

    def _close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []
        if self.metrics_log is not None:
            self.metrics_log.close()

    def is_evaluation_step(self, step: int) -> bool:
        """Whether ``step`` is on the evaluation schedule."""
        return step in self.schedule

    def next_due_step(self, step: int) -> int | None:
        """The first scheduled evaluation after ``step`` (fused gradient steps stop there)."""
        index = bisect.bisect_right(self.steps, step)
        return self.steps[index] if index < len(self.steps) else None

    def _evaluate_if_due(
        self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, force: bool = False
    ) -> None:
        # Only rank 0 keeps the log: its answer decides, so that every DDP process measures together.
        if (step in self.schedule or force) and trainer.strategy.broadcast(step not in self.metrics_log.logged_steps):
            self.evaluate(trainer, pl_module, step)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> NetworkMeasurement:
        """Every metric of the present state (:mod:`ufm_torch.metrics.network`), with the UFM's distances to its
        global optimum when it has one."""
        if self.closed_form:
            network = pl_module.network
            logits = pl_module.current_logits()
            without_logits = pl_module.objective_without_logits() if logits is None else None
            measurement = measure_free_features(
                network, self.labels, self.plan.layers[0], pl_module.objective_value, logits, without_logits
            )
            if self.optimum is not None:
                measurement.values.update(distances_to_optimum(network, trainer.datamodule.labels, self.optimum))
            return measurement
        if self.free_layers:
            network = pl_module.network
            measurement = measure_free_layers(network, self.labels, self.plan.layers[0], pl_module.objective_value)
            if self.deep_optimum is not None:
                features, weights, _ = network.free_layers()
                distances = self.deep_optimum.metrics(features, weights, self.labels.labels)
                measurement.values.update({tag: value.to(torch.float64) for tag, value in distances.items()})
            return measurement
        objective = pl_module.objective_value if isinstance(pl_module, CollapseModule) else None
        return measure_layers(
            pl_module, self.plan, self.training_loader(trainer), self.heldout_loader(trainer), objective
        )

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Measure at ``step`` and write one record per replica, layer and split to the log, the loggers and
        TensorBoard."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CollapseMetricWarning)
            measurement = self.measure(trainer, pl_module)
        self._note_undefined(caught)
        self.class_means = measurement.class_means
        if not trainer.is_global_zero:
            return
        tags = list(dict.fromkeys(tag for entry in measurement.layers for tag in entry.values))
        records, table = [], []
        for entry in measurement.layers:
            nan = torch.full_like(next(iter(entry.values.values())), torch.nan)
            rows = torch.stack([entry.values.get(tag, nan) for tag in tags], dim=-1).cpu().tolist()
            measured = [column for column, tag in enumerate(tags) if tag in entry.values]
            for r, (fields, row) in enumerate(zip(self.identity_fields, rows, strict=True)):
                record = {"step": step, "replica": r} | fields | {"layer": entry.layer, "split": entry.split}
                records.append(record | {tags[column]: row[column] for column in measured})
                table.append(row)
        self.metrics_log.write(records)
        self.last_records = records[: len(self.identities)]
        add_scalar_rows(self.writers, tags, table, step)
        if time.monotonic() - self.last_flush > TENSORBOARD_FLUSH_SECONDS:
            self._flush()
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_metrics(
                    {
                        f"{tag}/{run}": value
                        for run, record in zip(self.run_names, records, strict=True)
                        for tag, value in record.items()
                        if "/" in tag and math.isfinite(value)
                    },
                    step,
                )
        if step in self.image_steps and self.writers:
            self._add_gram_images(self.last_records, step)

    def _note_undefined(self, caught: list[warnings.WarningMessage]) -> None:
        """Count the evaluations at which metrics were undefined (by names and reason, whatever the number of
        replicas); any other warning is passed on as it came. A regularised UFM past its threshold is meant to reach
        W = 0, where NC3 is undefined at every evaluation: one line at the end says so, not one warning each."""
        for caught_warning in caught:
            if issubclass(caught_warning.category, CollapseMetricWarning):
                names, _, reason = str(caught_warning.message).partition(" set to NaN")
                key = f"{names}: {reason.partition(': ')[2]}"
                self.undefined[key] = self.undefined.get(key, 0) + 1
            else:
                warnings.warn_explicit(
                    caught_warning.message, caught_warning.category, caught_warning.filename, caught_warning.lineno
                )

    def _report_undefined(self) -> None:
        """One line for all the metrics that were undefined at some evaluation (recorded as null)."""
        if self.undefined:
            parts = "; ".join(f"{key} ({count} evaluations)" for key, count in self.undefined.items())
            rank_zero_info(f"Collapse metrics undefined (null in metrics.jsonl): {parts}")
        self.undefined = {}

    def _add_gram_images(self, records: list[dict], step: int) -> None:
        """M̃ᵀM̃ (from the class means of this evaluation) next to the simplex ETF, in the run of the first copy of
        each replica group (ε and hyperparameters), at most :data:`GRAM_IMAGE_GROUPS` groups spread over them; past
        ``GRAM_IMAGE_PIXELS`` classes both averaged over blocks of classes (``binned_gram``: no C × C matrix)."""
        first_copies = [r for r, record in enumerate(records) if record["copy"] == 0]
        if len(first_copies) > GRAM_IMAGE_GROUPS:
            picks = torch.linspace(0, len(first_copies) - 1, GRAM_IMAGE_GROUPS).round().long().tolist()
            first_copies = [first_copies[pick] for pick in picks]
        directions = centred_mean_directions(self.class_means[first_copies]).cpu().numpy()
        reference = binned_simplex_etf_gram(directions.shape[-2])
        for replica, rows in zip(first_copies, directions, strict=True):
            image = gram_comparison_image(binned_gram(rows), reference=reference)
            add_image(self.writers[replica], GRAM_IMAGE_TAG, image, step)

    def _write_hparams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Per replica run: hyperparameters (ε, seed, C, N, p, lr, optimiser, command-line overrides, and the
        replica's own values of the per-replica keys) against its final metrics, so that the HPARAMS tab of a sweep
        folder compares the swept values."""
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        classifier = find_module(pl_module, self.plan.classifier, "classifier") if self.plan.classifier else None
        shared = {
            "num_classes": self.plan.num_classes,
            "samples_per_class": hparam_value(getattr(trainer.datamodule, "samples_per_class", "unknown")),
            "bias": bool(getattr(classifier, "has_bias", getattr(classifier, "bias", None) is not None)),
            "feature_dim": int(self.class_means.shape[-1]) if self.class_means is not None else 0,
            "optimizer": type(optimizer).__name__ if optimizer else "none",
            "lr": hparam_value(optimizer.param_groups[0]["lr"]) if optimizer else 0.0,
        } | command_line_overrides()
        for writer, record, identity in zip(self.writers, self.last_records, self.identities, strict=False):
            final = {k: v for k, v in record.items() if "/" in k and v is not None}
            own = dict(identity.hyperparameters)
            hyper = shared | own | {
                "lr": own.get(STEP_SIZE_KEY, shared["lr"]),
                "init_scale": record["init_scale"] if record["init_scale"] is not None else "none",
                "seed": str(record["seed"]),
                "replica": record["replica"],
            }
            write_hparams(writer, hyper, final, record["step"])


def measured_network(pl_module: L.LightningModule) -> nn.Module:
    """The network a ufm-torch ``CollapseModule`` trains (``pl_module.network``), or the LightningModule itself."""
    return pl_module.network if isinstance(pl_module, CollapseModule) else pl_module


def identity_fields(identity: ReplicaIdentity) -> dict[str, Any]:
    """What a record of ``metrics.jsonl`` says of its replica: ``init_scale``, ``copy``, ``seed`` and one field per
    per-replica hyperparameter that varies, named by its key (``module.classifier_decay``)."""
    fields = {"init_scale": identity.init_scale, "copy": identity.copy, "seed": identity.seed}
    return fields | dict(identity.hyperparameters)


def replica_identities(network: nn.Module) -> list[ReplicaIdentity]:
    """The network's replicas (``replica_identities()`` of the package's networks); one replica, seeded by the
    global seed Lightning recorded (``PL_GLOBAL_SEED``), for any other network."""
    if hasattr(network, "replica_identities"):
        return list(network.replica_identities())
    seed = os.environ.get("PL_GLOBAL_SEED")
    return [ReplicaIdentity(None, 0, int(seed) if seed is not None else None)]


def optimiser_steps_per_epoch(trainer: L.Trainer) -> int:
    """Optimiser steps in one epoch of this process's training loader (Lightning steps at the end of an epoch also
    when gradient accumulation is incomplete)."""
    batches = trainer.num_training_batches
    if not math.isfinite(batches) or batches < 1:
        raise ValueError(f"callbacks.collapse_monitor.in_epochs needs a training loader of known length, not {batches}")
    return math.ceil(int(batches) / trainer.accumulate_grad_batches)


def hparam_value(value: Any) -> int | float | str | bool:
    """``value`` as HPARAMS takes it: a number, string or bool as it is, a list as ``a,b,c``."""
    return ",".join(map(str, value)) if isinstance(value, list | tuple) else value


def command_line_overrides() -> dict[str, str]:
    """``key: value`` of the Hydra task overrides of this run (the swept values in a multirun); empty outside Hydra."""
    if not HydraConfig.initialized():
        return {}
    overrides = (override.lstrip("+~").partition("=") for override in HydraConfig.get().overrides.task)
    return {key: value for key, _, value in overrides if key not in ("hydra.run.dir", "hydra.sweep.dir")}


class ReplicaOptima(NamedTuple):
    """The global optima of the replicas that have one (λ_W > 0 and λ_H > 0): their indices ``(R',)`` and their
    optima, one per replica (:class:`~ufm_torch.theory.optimum.OptimumBatch`)."""

    replicas: Tensor
    optimum: OptimumBatch


def deep_optimum(pl_module: CollapseModule, datamodule: L.LightningDataModule) -> DeepUFMOptimum | None:
    """The deep oracle of a deep UFM (:func:`~ufm_torch.theory.deep_oracle.deep_ufm_oracle`: the closed form, the
    two-class ReLU optimum or the DNC reference) when every decay is > 0, else None. Where its assumptions fail
    (another loss, a bias, imbalanced ReLU classes, …) it says so in one line, once, and no ``optimum/*`` metric is
    logged."""
    network, deep = pl_module.network, pl_module.deep_objective
    objective = deep.objective
    if min(objective.feature_decay, *deep.layer_decays(network.depth)) <= 0:
        return None
    counts = torch.bincount(datamodule.labels.reshape(-1).cpu(), minlength=network.num_classes)
    try:
        return deep_ufm_oracle(
            tuple(int(count) for count in counts), network.free_feature_dim, network.width, network.depth,
            objective.feature_decay, deep.hidden, objective.classifier_decay, network.activation, objective.data_loss,
            network.head.has_bias,
        )  # fmt: skip
    except OracleAssumptionError as error:
        rank_zero_info(f"ufm-train: no optimum/* metrics: {error}")
        return None


def global_optimum(pl_module: CollapseModule, datamodule: L.LightningDataModule) -> ReplicaOptima | None:
    """The global optimum of the UFM objective each replica of ``pl_module`` trains (:mod:`ufm_torch.theory.optimum`):
    its loss, its own decays and label smoothing, the bias, and the class sizes of ``datamodule.labels``; each
    distinct setting solved once (:func:`~ufm_torch.theory.optimum.solve_optima`: closed forms where they apply, the
    batched solver otherwise). The replicas with λ_W > 0 and λ_H > 0 have one; None when none has, or p < C (the
    config checks warn about p < C)."""
    network, objective = pl_module.network, pl_module.objective
    if network.feature_dim < network.num_classes:
        return None
    settings = {
        name: values_of_replicas(getattr(objective, name), network.num_replicas)
        for name in ("classifier_decay", "feature_decay", "bias_decay", "label_smoothing")
    }
    replicas = [r for r in range(network.num_replicas)
                if settings["classifier_decay"][r] > 0 and settings["feature_decay"][r] > 0]  # fmt: skip
    if not replicas:
        return None
    counts = torch.bincount(datamodule.labels.reshape(-1).cpu(), minlength=network.num_classes)
    problems = [
        UFMProblem(
            loss=pl_module.loss_name, class_counts=tuple(int(count) for count in counts),
            feature_dim=network.feature_dim, lambda_weight=settings["classifier_decay"][r],
            lambda_features=settings["feature_decay"][r], lambda_bias=settings["bias_decay"][r],
            bias=network.head.has_bias, label_smoothing=settings["label_smoothing"][r],
        )
        for r in replicas
    ]
    return ReplicaOptima(torch.tensor(replicas), solve_optima(problems))


def values_of_replicas(value: float | tuple[float, ...], count: int) -> list[float]:
    """A per-replica value of the objective (a number, or a tuple of one per replica) as ``count`` numbers."""
    return list(value) if isinstance(value, tuple) else [float(value)] * count


def distances_to_optimum(network: ClosedFormNetwork, labels: Tensor, optima: ReplicaOptima) -> dict[str, Tensor]:
    """``optimum/loss_gap``, ``optimum/classifier_gram``, ``optimum/feature_gram`` and ``optimum/bias`` of every
    replica (float64, computed on the CPU from the parameters); NaN (undefined) for a replica without an optimum."""
    parameter = network.closed_form_features()
    index = optima.replicas
    features = parameter.detach()[index.to(parameter.device)].cpu().double()
    weight = network.head.weight.detach()[index.to(parameter.device)].cpu().double()
    bias = network.head.bias.detach()[index.to(parameter.device)].cpu().double() if network.head.has_bias else None
    values = optimum_metrics(features, weight, bias, labels.cpu(), optima.optimum)
    if index.numel() == network.num_replicas:
        return {tag: value.to(parameter.device) for tag, value in values.items()}
    full = {tag: torch.full((network.num_replicas,), torch.nan, dtype=torch.float64) for tag in values}
    for tag, value in values.items():
        full[tag][index] = value
    return {tag: value.to(parameter.device) for tag, value in full.items()}
