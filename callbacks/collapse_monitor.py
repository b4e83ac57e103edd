"""The collapse monitor: NC1–NC4, SNC1–SNC3 and dist_S on a geometric step schedule, for every replica."""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from ufm_torch.metrics import centred_mean_directions
from ufm_torch.metrics.network import NetworkMeasurement, measure_backbone, measure_free_features
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.metrics.tags import GRAM_IMAGE_TAG
from ufm_torch.models import has_free_features
from ufm_torch.run_folder.event_files import truncate_tree
from ufm_torch.run_folder.layout import METRICS_FILE
from ufm_torch.run_folder.metrics_log import MetricsLog
from ufm_torch.run_folder.names import replica_run_name
from ufm_torch.run_folder.tensorboard import (
    add_image,
    add_scalar_rows,
    gram_comparison_image,
    open_replica_writers,
    write_hparams,
)
from ufm_torch.theory.optimum import UFMOptimum, UFMProblem, optimum_metrics, solve_optimum

TENSORBOARD_FLUSH_SECONDS = 2.0
"""The replica runs reach TensorBoard at most this long after an evaluation (and all of them at the end)."""


class CollapseMonitor(L.Callback):
    """Evaluates every collapse metric on the whole training set at scheduled steps and writes it everywhere.

    Schedule: :func:`ufm_torch.metrics.schedule.evaluation_steps` (step 0, ``points_per_decade`` geometric points per
    decade, every ``every_n_steps`` steps if set, and the last step); with ``in_epochs`` (minibatch backbones) the
    geometric points are epochs of the training loader (its batches per epoch, one optimiser step each), each
    evaluated at its last step. Each evaluation goes to ``metrics.jsonl``
    in ``output_dir`` (float64, one line per replica), to each TensorBoard replica run ``eps=<ε>/rep=<k>``
    under the TensorBoard logger's folder, and to any other logger with a ``/eps=<ε>/rep=<k>`` suffix.
    Gram-matrix images (first copy of each init scale) are added at ``gram_images`` evaluations spread over the
    schedule. The replica runs are flushed at least every ``TENSORBOARD_FLUSH_SECONDS`` and before each checkpoint;
    on resume, the events that a killed run wrote after the checkpoint are dropped
    (:mod:`ufm_torch.run_folder.event_files`), so TensorBoard holds the steps of ``metrics.jsonl``, each once.
    """

    def __init__(
        self,
        output_dir: str,
        points_per_decade: int = 10,
        every_n_steps: int | None = None,
        gram_images: int = 4,
        in_epochs: bool = False,
    ) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.points_per_decade = points_per_decade
        self.every_n_steps = every_n_steps
        self.in_epochs = in_epochs
        self.gram_images = gram_images
        self.metrics_log = MetricsLog(self.output_dir / METRICS_FILE)
        self.steps: list[int] = []
        self.schedule: set[int] = set()
        self.image_steps: set[int] = set()
        self.writers: list[Any] = []
        self.last_records: list[dict[str, Any]] = []
        self.last_flush = time.monotonic()
        self.class_means: Tensor | None = None
        self.measure: Callable[[L.LightningModule, L.LightningDataModule], NetworkMeasurement] = measure_backbone
        self.optimum: UFMOptimum | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Build the schedule, open the log (dropping records past a resumed checkpoint) and evaluate the start."""
        steps_per_epoch = optimiser_steps_per_epoch(trainer) if self.in_epochs else None
        steps = evaluation_steps(trainer.max_steps, self.points_per_decade, self.every_n_steps, steps_per_epoch)
        self.steps = steps
        self.schedule = set(steps)
        picks = torch.linspace(0, len(steps) - 1, max(self.gram_images, 1)).round().long().unique()
        self.image_steps = {steps[i] for i in picks.tolist()} if self.gram_images else set()
        network = pl_module.network
        self.measure = measure_free_features if has_free_features(network) else measure_backbone
        self.optimum = global_optimum(pl_module, trainer.datamodule)
        if trainer.is_global_zero:
            self.metrics_log.open(trainer.global_step, replicas=network.num_replicas)
            names = [replica_run_name(replica.init_scale, replica.copy) for replica in network.replica_identities()]
            tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            if tensorboard is not None:
                if trainer.global_step > 0:
                    truncate_tree(Path(tensorboard.log_dir), trainer.global_step)
                self.writers = open_replica_writers(Path(tensorboard.log_dir), names)
        self._evaluate_if_due(trainer, pl_module, trainer.global_step, force=trainer.global_step == 0)

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

    def _close(self) -> None:
        for writer in self.writers:
            writer.close()
        self.writers = []
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

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Measure at ``step`` and write one record per replica to the log, the loggers and TensorBoard."""
        values, self.class_means = self.measure(pl_module, trainer.datamodule)
        if self.optimum is not None:
            values |= distances_to_optimum(pl_module, trainer.datamodule, self.optimum)
        if not trainer.is_global_zero:
            return
        names = list(values)
        table = torch.stack([values[name] for name in names], dim=-1).cpu().tolist()
        network = pl_module.network
        records = [
            {"step": step, "replica": r, "init_scale": scale, "copy": copy, "seed": seed}
            | dict(zip(names, row, strict=True))
            for r, ((scale, copy, seed), row) in enumerate(zip(network.replica_identities(), table, strict=True))
        ]
        self.metrics_log.write(records)
        self.last_records = records
        add_scalar_rows(self.writers, names, table, step)
        if time.monotonic() - self.last_flush > TENSORBOARD_FLUSH_SECONDS:
            self._flush()
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_metrics(
                    {
                        f"{name}/{replica_run_name(rec['init_scale'], rec['copy'])}": rec[name]
                        for rec in records
                        for name in names
                        if math.isfinite(rec[name])
                    },
                    step,
                )
        if step in self.image_steps and self.writers:
            self._add_gram_images(records, step)

    def _add_gram_images(self, records: list[dict], step: int) -> None:
        """M̃ᵀM̃ (from the class means of this evaluation) next to the simplex ETF, in the run of the first copy of
        each init scale."""
        first_copies = [r for r, record in enumerate(records) if record["copy"] == 0]
        directions = centred_mean_directions(self.class_means[first_copies])
        grams = directions @ directions.transpose(-1, -2)
        for replica, gram in zip(first_copies, grams.cpu().numpy(), strict=True):
            image = gram_comparison_image(gram)
            add_image(self.writers[replica], GRAM_IMAGE_TAG, image, step)

    def _write_hparams(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Per replica run: hyperparameters (ε, seed, C, N, p, lr, optimiser, command-line overrides) against its
        final metrics, so that the HPARAMS tab of a sweep folder compares the swept values."""
        network = pl_module.network
        optimizer = trainer.optimizers[0] if trainer.optimizers else None
        shared = {
            "num_classes": network.num_classes,
            "samples_per_class": hparam_value(trainer.datamodule.samples_per_class),
            "bias": bool(network.head.has_bias),
            "feature_dim": network.feature_dim,
            "optimizer": type(optimizer).__name__ if optimizer else "none",
            "lr": float(optimizer.param_groups[0]["lr"]) if optimizer else 0.0,
        } | command_line_overrides()
        for writer, record in zip(self.writers, self.last_records, strict=False):
            final = {k: v for k, v in record.items() if "/" in k}
            hyper = shared | {
                "init_scale": record["init_scale"],
                "seed": str(record["seed"]),
                "replica": record["replica"],
            }
            write_hparams(writer, hyper, final, record["step"])


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


def global_optimum(pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> UFMOptimum | None:
    """The global optimum of the UFM objective ``pl_module`` trains (:mod:`ufm_torch.theory.optimum`): its loss,
    decays, label smoothing and bias, and the class sizes of ``datamodule.labels``. None for a backbone, or unless
    λ_W > 0 and λ_H > 0 and p ≥ C (the config checks warn about p < C)."""
    network = pl_module.network
    decays = (pl_module.classifier_decay, pl_module.feature_decay)
    if not has_free_features(network) or min(decays) <= 0 or network.feature_dim < network.num_classes:
        return None
    problem = UFMProblem.from_labels(
        datamodule.labels, network.num_classes, loss=pl_module.loss_name, feature_dim=network.feature_dim,
        lambda_weight=pl_module.classifier_decay, lambda_features=pl_module.feature_decay,
        lambda_bias=pl_module.bias_decay, bias=network.head.has_bias, label_smoothing=pl_module.label_smoothing,
    )  # fmt: skip
    return solve_optimum(problem)


def distances_to_optimum(
    pl_module: L.LightningModule, datamodule: L.LightningDataModule, optimum: UFMOptimum
) -> dict[str, Tensor]:
    """``optimum/loss_gap``, ``optimum/classifier_gram``, ``optimum/feature_gram`` and ``optimum/bias`` of every
    replica (float64, computed on the CPU from the parameters)."""
    network = pl_module.network
    features, weight = network.features.detach().cpu().double(), network.head.weight.detach().cpu().double()
    bias = network.head.bias.detach().cpu().double() if network.head.has_bias else None
    labels = datamodule.labels.cpu()
    device = network.features.device
    return {tag: value.to(device) for tag, value in optimum_metrics(features, weight, bias, labels, optimum).items()}
