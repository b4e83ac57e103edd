"""Every collapse metric of a network in training, for the collapse monitor: the UFM's parameters or a backbone's
pass over its training set.

The UFM's features are a parameter, so :func:`measure_free_features` reads them directly. A backbone's features
h(x_i) must be computed: :func:`measure_backbone` runs the network once over the training set (in eval
mode, without augmentation), feeds the streaming accumulators of :mod:`ufm_torch.metrics` (which reduce
across processes), and reuses the cached features for NC4, which needs the final class means.
Both return a :class:`NetworkMeasurement`, so the monitor chooses between them once.

Unbalanced classes (an imbalanced UFM): NC1–NC4 are defined for any class sizes n_k (class means, μ_G the mean of the
class means, Σ_W pooled over all n samples, NC4 a fraction of all samples), but SNC1–SNC3 and dist_S (Mixon et al.)
need a single N, the size of every class. There they are NaN for every replica (:func:`strong_collapse_values`), which
means "undefined": ``metrics.jsonl`` writes it as ``null`` (:class:`ufm_torch.run_folder.metrics_log.MetricsLog`).
"""

from __future__ import annotations

from typing import NamedTuple

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.utilities.distributed import gather_all_tensors

from ufm_torch.metrics.accumulators import ClassStatisticsAccumulator, NearestCenterMismatch
from ufm_torch.metrics.neural_collapse import nc_metrics_from_statistics, nc_metrics_with_statistics
from ufm_torch.metrics.statistics import ClassStatistics, class_statistics
from ufm_torch.metrics.strong_collapse import SNC_METRIC_NAMES, snc_metrics_from_statistics
from ufm_torch.metrics.tags import HELDOUT_ACCURACY_TAG, LOSS_TAG, TRAIN_ACCURACY_TAG, metric_tag


class NetworkMeasurement(NamedTuple):
    """One evaluation: ``values`` maps each tag to float64 per-replica values ``(R,)``; ``class_means`` ``(R, C, p)``
    are the class means it used (for the Gram images)."""

    values: dict[str, Tensor]
    class_means: Tensor


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


def has_balanced_classes(counts: Tensor) -> bool:
    """Whether the class counts ``(C,)`` are all the same N ≥ 1 (the setting of SNC1–SNC3 and dist_S)."""
    return int(counts.min()) == int(counts.max()) > 0


def strong_collapse_values(statistics: ClassStatistics, weight: Tensor, bias: Tensor) -> dict[str, Tensor]:
    """SNC1–SNC3 and dist_S (:func:`ufm_torch.metrics.snc_metrics_from_statistics`) when every class has the same
    N ≥ 1 samples; otherwise NaN (undefined: ``‖WWᵀ − √N(I − 11ᵀ/C)‖_F`` and ``(1/√N)(W ⊗ 1_N)ᵀ`` need one N) for every
    replica, float64 of the replica shape, with no warning (an imbalanced UFM is a setting, not a degenerate input).
    """
    if has_balanced_classes(statistics.counts):
        return snc_metrics_from_statistics(statistics, weight, bias)
    shape = torch.broadcast_shapes(statistics.scale.shape, weight.shape[:-2])
    return {name: weight.new_full(shape, torch.nan, dtype=torch.float64) for name in SNC_METRIC_NAMES}


def training_set_features(network: nn.Module, loader: DataLoader) -> tuple[Tensor, Tensor]:
    """Features ``(n_local, p)`` and labels of this process's shard, one forward pass per batch."""
    parameter = next(network.parameters())
    features, labels = [], []
    for inputs, batch_labels in process_shard(loader):
        features.append(network.forward_features(inputs.to(parameter.device, parameter.dtype)))
        labels.append(batch_labels.to(parameter.device))
    return torch.cat(features), torch.cat(labels)


def collapse_values(network: nn.Module, features: Tensor, labels: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """NC1–NC4 (``collapse/…``), SNC1–SNC3 and dist_S (``strong_collapse/…``) of all processes' features.

    Class counts, means and the pooled within-class scatter are accumulated per process and merged
    across processes; NC4 counts nearest-class-centre mismatches with the merged means (Papyan, Han &
    Donoho 2020, NC1–NC4; Mixon et al., SNC1–SNC3 and Figure 2; NaN on unbalanced classes,
    :func:`strong_collapse_values`). Returns the values by tag and the class means.
    """
    weight, bias = network.head.weight, network.head.bias
    accumulator = ClassStatisticsAccumulator(network.num_classes, network.feature_dim).to(features.device)
    accumulator.update(features, labels)
    statistics = accumulator.compute()
    values = nc_metrics_from_statistics(statistics, weight, bias) | strong_collapse_values(statistics, weight, bias)
    mismatch = NearestCenterMismatch().to(features.device)
    mismatch.update(features, weight, bias, statistics.means)
    values["nc4"] = mismatch.compute()
    return {metric_tag(name): value for name, value in values.items()}, statistics.means


def float64_logits(head: nn.Module, features: Tensor) -> Tensor:
    """The logits ``head(features)`` computed in float64 (the head's parameters and ``features`` cast), so that the
    monitor's loss and accuracy are float64 whatever the training precision (a bf16 network gives bf16 features)."""
    parameters = {name: parameter.to(torch.float64) for name, parameter in head.named_parameters()}
    return torch.func.functional_call(head, parameters, (features.to(torch.float64),))


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
def measure_backbone(pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> NetworkMeasurement:
    """Every collapse metric of a backbone on its whole balanced training set, float64 tensors of shape ``(1,)``.

    Keys as for the UFM (``collapse/<nc name>``, ``strong_collapse/<snc name>``, ``train/loss``,
    ``train/accuracy``) plus ``heldout/accuracy``. The network runs in eval mode (BatchNorm uses rank 0's
    running statistics) with inputs cast to its parameters' dtype; the metrics, loss and accuracy are computed in
    float64 from its features. It runs once over
    ``trainer.datamodule.train_eval_dataloader()`` and once over ``heldout_dataloader()``, each process on
    its own shard; train mode is restored afterwards. ``train/loss`` is the module's objective f over the whole
    training set (``pl_module.objective_value``: data term plus the decays, λ_H on all its features). Every DDP
    process must call this (the reductions are collective).
    """
    network = pl_module.network
    was_training = network.training
    network.eval()
    try:
        synchronise_buffers(network)
        features, labels = training_set_features(network, datamodule.train_eval_dataloader())
        values, class_means = collapse_values(network, features, labels)
        logits = concatenate_over_processes(float64_logits(network.head, features))
        all_labels = concatenate_over_processes(labels)
        penalised = concatenate_over_processes(features) if pl_module.feature_decay else features[:0]
        values[LOSS_TAG] = pl_module.objective_value(logits, all_labels, penalised.to(torch.float64))
        values[TRAIN_ACCURACY_TAG] = (logits.argmax(dim=-1) == all_labels).to(torch.float64).mean()
        values[HELDOUT_ACCURACY_TAG] = heldout_accuracy(network, datamodule.heldout_dataloader())
    finally:
        network.train(was_training)
    values = {name: value.to(torch.float64).reshape(1) for name, value in values.items()}
    return NetworkMeasurement(values, class_means.unsqueeze(0))


@torch.inference_mode()
def measure_free_features(pl_module: L.LightningModule, datamodule: L.LightningDataModule) -> NetworkMeasurement:
    """Every collapse metric of each UFM replica from its parameters, plus ``train/loss`` (the objective f with its
    decays, ``pl_module.objective_value``) and ``train/accuracy``.

    The logits are those of the module's last fused block when it ended at this state
    (``pl_module.current_logits()``), else one forward pass; the labels are ``datamodule.labels`` (any class sizes
    n_k). NC1–NC4 from one pass of class statistics; SNC1–SNC3 and dist_S by :func:`strong_collapse_values` (NaN,
    undefined, on unbalanced classes). A bias-free UFM's ``head.bias`` is its zero buffer, so SNC3 = ‖0 − 1/C‖₂.
    Runs in inference mode: its hundreds of small operations skip autograd's bookkeeping (12–17% faster than
    ``no_grad`` at the paper's size); the values are read, never trained on.
    """
    network = pl_module.network
    features, weight, bias = network.features, network.head.weight, network.head.bias
    labels = datamodule.labels.to(features.device)
    logits = pl_module.current_logits()
    if logits is None:
        logits = network.head(features)
    statistics = class_statistics(features, labels, weight.shape[-2])
    metrics = nc_metrics_with_statistics(statistics, weight, bias) | strong_collapse_values(statistics, weight, bias)
    values = {metric_tag(name): value for name, value in metrics.items()}
    values[LOSS_TAG] = pl_module.objective_value(logits, labels, features).to(torch.float64)
    values[TRAIN_ACCURACY_TAG] = (logits.argmax(-1) == labels).to(torch.float64).mean(-1)
    return NetworkMeasurement(values, statistics.means)

