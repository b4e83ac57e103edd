"""Collapse metrics of a real backbone: one pass over the balanced training set, reduced over DDP processes.

The UFM's features are a parameter, so the collapse monitor reads them directly. A backbone's features
h(x_i) must be computed: :func:`measure_backbone` runs the network once over the training set (in eval
mode, without augmentation), feeds the streaming accumulators of :mod:`ufm_torch.metrics` (which reduce
across processes), and reuses the cached features for NC4, which needs the final class means.
"""

from __future__ import annotations

import os

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.utilities.distributed import gather_all_tensors

from ufm_torch.metrics import (
    SNC_METRIC_NAMES,
    ClassStatisticsAccumulator,
    NearestCenterMismatch,
    nc_metrics_from_statistics,
    snc_metrics_from_statistics,
)
from ufm_torch.models import UnconstrainedFeatures


def is_distributed() -> bool:
    """Whether a default process group is running (DDP)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def process_shard(loader: DataLoader) -> DataLoader:
    """This process's share of ``loader``'s samples: every ``world_size``-th sample from its rank, in order.

    Unlike ``DistributedSampler`` nothing is padded or repeated, so each sample is counted exactly once.
    """
    if not is_distributed():
        return loader
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    shard = Subset(loader.dataset, range(rank, len(loader.dataset), world_size))
    return DataLoader(shard, batch_size=loader.batch_size, shuffle=False)


def sum_over_processes(value: Tensor) -> Tensor:
    """``value`` summed over all DDP processes (itself when not distributed)."""
    if is_distributed():
        value = value.clone()
        torch.distributed.all_reduce(value)
    return value


def concatenate_over_processes(value: Tensor) -> Tensor:
    """The rows of ``value`` from every DDP process, concatenated (sizes may differ between processes)."""
    return torch.cat(gather_all_tensors(value)) if is_distributed() else value


def synchronise_buffers(network: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process, as DDP does before a forward."""
    if is_distributed():
        for buffer in network.buffers():
            torch.distributed.broadcast(buffer, src=0)


def training_set_features(network: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """Features ``(n_local, p)`` and labels of this process's shard, one forward pass per batch."""
    parameter = next(network.parameters())
    features, labels = [], []
    for inputs, batch_labels in process_shard(loader):
        features.append(network.forward_features(inputs.to(parameter.device, parameter.dtype)))
        labels.append(batch_labels.to(parameter.device))
    return torch.cat(features), torch.cat(labels)


def collapse_values(network: nn.Module, features: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """NC1–NC4 (``collapse/…``), SNC1–SNC3 and dist_S (``strong_collapse/…``) of all processes' features.

    Class counts, means and the pooled within-class scatter are accumulated per process and merged
    across processes; NC4 counts nearest-class-centre mismatches with the merged means (Papyan, Han &
    Donoho 2020, NC1–NC4; Mixon et al., SNC1–SNC3 and Figure 2).
    """
    weight, bias = network.head.weight, network.head.bias
    accumulator = ClassStatisticsAccumulator(network.num_classes, network.feature_dim).to(features.device)
    accumulator.update(features, labels)
    statistics = accumulator.compute()
    values = nc_metrics_from_statistics(statistics, weight, bias) | snc_metrics_from_statistics(
        statistics, weight, bias
    )
    mismatch = NearestCenterMismatch().to(features.device)
    mismatch.update(features, weight, bias, statistics.means)
    values["nc4"] = mismatch.compute()
    return {
        f"{'strong_collapse' if name in SNC_METRIC_NAMES else 'collapse'}/{name}": value
        for name, value in values.items()
    }


def heldout_accuracy(network: nn.Module, loader: DataLoader) -> Tensor:
    """Fraction of held-out samples (all processes) whose largest logit is their label; NaN without samples."""
    parameter = next(network.parameters())
    correct = torch.zeros((), dtype=torch.float64, device=parameter.device)
    total = torch.zeros((), dtype=torch.float64, device=parameter.device)
    for inputs, labels in process_shard(loader):
        logits = network(inputs.to(parameter.device, parameter.dtype))
        correct += (logits.argmax(dim=-1) == labels.to(parameter.device)).sum()
        total += labels.numel()
    return sum_over_processes(correct) / sum_over_processes(total)


@torch.no_grad()
def measure_backbone(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
    """Every collapse metric of a backbone on its whole balanced training set, float64 tensors of shape ``(1,)``.

    Keys as for the UFM (``collapse/<nc name>``, ``strong_collapse/<snc name>``, ``train/loss``,
    ``train/accuracy``) plus ``heldout/accuracy``. The network runs in eval mode (BatchNorm uses rank 0's
    running statistics) with inputs cast to its parameters' dtype, once over
    ``trainer.datamodule.train_eval_dataloader()`` and once over ``heldout_dataloader()``, each process on
    its own shard; train mode is restored afterwards. ``train/loss`` is the module's loss of the whole
    training set. Every DDP process must call this (the reductions are collective).
    """
    network = pl_module.network
    datamodule = trainer.datamodule
    was_training = network.training
    network.eval()
    try:
        synchronise_buffers(network)
        features, labels = training_set_features(network, datamodule.train_eval_dataloader())
        values = collapse_values(network, features, labels)
        logits = concatenate_over_processes(network.head(features))
        all_labels = concatenate_over_processes(labels)
        values["train/loss"] = pl_module.loss_fn(logits, all_labels)
        values["train/accuracy"] = (logits.argmax(dim=-1) == all_labels).to(torch.float64).mean()
        values["heldout/accuracy"] = heldout_accuracy(network, datamodule.heldout_dataloader())
    finally:
        network.train(was_training)
    return {name: value.to(torch.float64).reshape(1) for name, value in values.items()}


def replica_identities(network: nn.Module) -> list[tuple[float | None, int, int | None]]:
    """``(init_scale, copy, seed)`` of every replica; a backbone is one copy, seeded by the global seed.

    The global seed is the one ``lightning.seed_everything`` recorded in ``PL_GLOBAL_SEED`` (None if unset).
    """
    if isinstance(network, UnconstrainedFeatures):
        return list(zip(network.init_scales, network.copy_indices, network.seeds, strict=True))
    seed = os.environ.get("PL_GLOBAL_SEED")
    return [(None, 0, int(seed) if seed is not None else None)]
