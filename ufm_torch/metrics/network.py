"""Every collapse metric of a network in training, layer by layer, for the collapse monitor.

One measurement path for every network. A **layer** is read as one row of features per sample
(:mod:`ufm_torch.metrics.layers`); its class statistics give every metric of :mod:`ufm_torch.metrics`
(:func:`ufm_torch.metrics.layer_metrics_from_statistics`), the classifier's weight and bias adding NC3, NC4, UNC3
and the nearest-centre agreement for the features that enter it, and SNC1–SNC3 and dist_S on the training split.
Where the rows come from is the only difference between networks:

- the UFM's only layer is the input of its classifier, the feature matrix H itself, a parameter (a
  :class:`~ufm_torch.models.ClosedFormNetwork`'s ``closed_form_features()``): its statistics are computed from the
  whole tensor, batched over replicas (:func:`measure_free_features`), with no forward pass;
- any other network (a backbone of this package or any ``nn.Module``) is run over a data loader with forward hooks
  (:func:`measure_layers`): a first pass accumulates class means (``ClassMeansAccumulator``), a second the centred
  moments (``CentredMomentsAccumulator``), O(C·p + C²) numbers per layer, never a p×p matrix. The second pass reads
  the activations of the first, kept while they take at most ``cache_bytes``, and otherwise runs the network again.

Held-out data (Hui, Belkin & Nakkiran 2022: features collapse on the training set and much less on held-out data)
gets NC1 and CDNV of its own class statistics and, at the classifier, NC4 and the agreement with the nearest
*training* class centre, plus the held-out accuracy.

Under DDP every process measures its own shard of the loader (each sample once, :func:`process_shard`) and the
accumulators' states are summed across processes, so every process gets the values of the whole data set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset
from torchmetrics.utilities.distributed import gather_all_tensors

from ufm_torch.errors import ConfigError
from ufm_torch.metrics.deep_collapse import class_mean_metrics, dnc1, dnc2_geometry, numerical_rank, stable_rank
from ufm_torch.metrics.hyperspherical import (
    gnc1,
    gnc3,
    hyperspherical_energy,
    log_hyperspherical_energy,
    max_pairwise_cosine,
    softmax_code_margin,
)
from ufm_torch.metrics.layers import FeatureMap, LayerTaps, classifier_parameters, find_module, read_batch
from ufm_torch.metrics.statistics import ClassLabels, ClassStatistics, class_statistics
from ufm_torch.metrics.strong_collapse import SNC_METRIC_NAMES, snc_metrics_from_statistics
from ufm_torch.metrics.tags import (
    HELDOUT_ACCURACY_TAG,
    HYPERSPHERICAL_TAGS,
    LOSS_TAG,
    TRAIN_ACCURACY_TAG,
    metric_tag,
)
from ufm_torch.metrics.two_pass import CentredMomentsAccumulator, ClassMeansAccumulator
from ufm_torch.metrics.variability import layer_metrics_from_statistics, layer_metrics_with_statistics
from ufm_torch.models import ClosedFormNetwork, FreeLayersNetwork

TRAIN = "train"
HELDOUT = "heldout"
HELDOUT_METRICS = ("nc1", "cdnv", "nc4", "ncc_agreement")
"""What a held-out split records: within-class variability (NC1, CDNV) of its own class statistics and, at the
classifier, NC4 and the agreement against the training class centres (Hui, Belkin & Nakkiran 2022)."""

SPLIT_ACCURACY_TAGS = {TRAIN: TRAIN_ACCURACY_TAG, HELDOUT: HELDOUT_ACCURACY_TAG}
"""Where the classifier's accuracy on each split is recorded: in the main layer's training record."""

Objective = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``(logits (n, C), labels (n,), penultimate features (n, p)) -> f``: the training objective of a whole split."""


class LayerValues(NamedTuple):
    """One layer and split of an evaluation: ``values`` maps tags to float64 per-replica values ``(R,)``."""

    layer: str
    split: str
    values: dict[str, Tensor]


class NetworkMeasurement(NamedTuple):
    """One evaluation: the main layer's training values first (the classifier's input where there is a classifier),
    then every other layer and split; ``class_means`` ``(R, C, p)`` of the main layer (for the Gram images)."""

    layers: list[LayerValues]
    class_means: Tensor

    @property
    def values(self) -> dict[str, Tensor]:
        """The main layer's training values."""
        return self.layers[0].values


@dataclass(frozen=True)
class MeasurementPlan:
    """What to measure in a network: ``layers`` (module names, the main layer first), ``classifier`` (the name of a
    linear classifier or None), ``num_classes``, how feature maps become rows, the keys of dict batches and how many
    bytes of activations the first pass may keep for the second."""

    layers: tuple[str, ...]
    classifier: str | None
    num_classes: int
    feature_map: FeatureMap = FeatureMap.POOL
    batch_keys: tuple[str, str] = ("inputs", "labels")
    cache_bytes: int = 256 * 2**20


def is_distributed() -> bool:
    """Whether a default process group is running (DDP)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def process_shard(loader: DataLoader) -> DataLoader:
    """This process's share of ``loader``'s samples: every ``world_size``-th sample from its rank, in order, with the
    loader's collate function and workers.

    Unlike ``DistributedSampler`` nothing is padded or repeated, so each sample is counted exactly once.
    """
    if not is_distributed():
        return loader
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    shard = Subset(loader.dataset, range(rank, len(loader.dataset), world_size))
    return DataLoader(
        shard, batch_size=loader.batch_size or 256, shuffle=False, collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
    )  # fmt: skip


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


def strong_collapse_values(
    statistics: ClassStatistics, weight: Tensor, bias: Tensor, labels: ClassLabels | None = None
) -> dict[str, Tensor]:
    """SNC1–SNC3 and dist_S (:func:`ufm_torch.metrics.snc_metrics_from_statistics`) when every class has the same
    N ≥ 1 samples; otherwise NaN (undefined: ``‖WWᵀ − √N(I − 11ᵀ/C)‖_F`` and ``(1/√N)(W ⊗ 1_N)ᵀ`` need one N) for every
    replica, float64 of the replica shape, with no warning (an imbalanced UFM, or real data of unequal class sizes, is
    a setting, not a degenerate input). ``labels``: the checked labels when known, whose balance is then not read
    again."""
    samples = labels.balanced_size if labels is not None else None
    if samples is not None or (labels is None and has_balanced_classes(statistics.counts)):
        return snc_metrics_from_statistics(statistics, weight, bias, samples)
    shape = torch.broadcast_shapes(statistics.scale.shape, weight.shape[:-2])
    return {name: weight.new_full(shape, torch.nan, dtype=torch.float64) for name in SNC_METRIC_NAMES}


def tagged(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Metric names as tags (:func:`ufm_torch.metrics.tags.metric_tag`)."""
    return {metric_tag(name): value for name, value in values.items()}


@torch.inference_mode()
def measure_free_features(
    network: ClosedFormNetwork, labels: ClassLabels, layer: str, objective: Objective, logits: Tensor | None = None,
    loss_and_accuracy: tuple[Tensor, Tensor] | None = None,
) -> NetworkMeasurement:
    """Every collapse metric of each UFM replica from its parameters, plus ``train/loss`` (the objective f with its
    decays) and ``train/accuracy``, as the training values of ``layer`` (the name of the classifier, whose input H is).

    ``labels``: the run's labels, checked and counted once (:func:`ufm_torch.metrics.statistics.class_labels`), any
    class sizes n_k. ``logits`` ``(R, n, C)`` are those of the state measured when known (the module's last fused
    block), else one forward pass; ``loss_and_accuracy`` ``((R,), (R,))``, when given, are f and the accuracy of the
    state computed without holding its logits (the module's
    :meth:`~ufm_torch.training.module.CollapseModule.objective_without_logits`, over chunks of samples), and then
    no logits are formed. A spherical UFM (``network.normalize``) adds
    :data:`~ufm_torch.metrics.tags.HYPERSPHERICAL_TAGS` of :mod:`ufm_torch.metrics.hyperspherical`: the
    classifier's max pairwise cosine, softmax-code margin ρ(W), Riesz (s = 1) and logarithmic hyperspherical
    energies, GNC1 of the features and GNC3 of classifier and class means (Jiang et al. 2024; Liu et al. 2023).
    NC1–NC4 and the field's metrics from one pass of class statistics of the whole
    tensor (:func:`ufm_torch.metrics.layer_metrics_with_statistics`); SNC1–SNC3 and dist_S by
    :func:`strong_collapse_values`. A bias-free UFM's ``head.bias`` is its zero buffer, so SNC3 = ‖0 − 1/C‖₂. Runs in
    inference mode: its hundreds of small operations skip autograd's bookkeeping (12–17% faster than ``no_grad`` at
    the paper's size).
    """
    features, weight, bias = network.closed_form_features(), network.head.weight, network.head.bias
    statistics = class_statistics(features, labels, weight.shape[-2])
    values = tagged(layer_metrics_with_statistics(statistics, weight, bias) | strong_collapse_values(
        statistics, weight, bias, labels
    ))  # fmt: skip
    if network.normalize:
        values |= hyperspherical_values(features, weight, labels, statistics.means)
    if loss_and_accuracy is not None:
        values[LOSS_TAG], values[TRAIN_ACCURACY_TAG] = (value.to(torch.float64) for value in loss_and_accuracy)
    else:
        logits = network.head(features) if logits is None else logits
        values[LOSS_TAG] = objective(logits, labels.labels, features).to(torch.float64)
        values[TRAIN_ACCURACY_TAG] = (logits.argmax(-1) == labels.labels).to(torch.float64).mean(-1)
    return NetworkMeasurement([LayerValues(layer, TRAIN, values)], statistics.means)


def hyperspherical_values(features: Tensor, weight: Tensor, labels: ClassLabels, means: Tensor) -> dict[str, Tensor]:
    """:data:`~ufm_torch.metrics.tags.HYPERSPHERICAL_TAGS` of a spherical UFM, in their order: ``max_{j≠k}
    cos(w_j, w_k)``, ρ(W), ``E_1``, ``E_0`` of the classifier's rows, GNC1 of ``features`` and GNC3 of ``weight``
    against the class ``means`` (formulas in :mod:`ufm_torch.metrics.hyperspherical`)."""
    sphere = (
        max_pairwise_cosine(weight), softmax_code_margin(weight), hyperspherical_energy(weight),
        log_hyperspherical_energy(weight), gnc1(features, labels.labels, weight.shape[-2]), gnc3(means, weight),
    )  # fmt: skip
    return dict(zip(HYPERSPHERICAL_TAGS, sphere, strict=True))


FREE_LAYER_NAMES = ("network.features", "network.layers.{index}")
"""Module names under which a deep UFM's layers are recorded: ``H_1`` is the free parameter ``features``, ``H_{l+1}``
the output of hidden layer ``layers.<l − 1>`` (where forward hooks would read it); ``H_L`` is the classifier's input,
recorded under the classifier's name like every network's main layer."""


def free_layer_names(network: FreeLayersNetwork, main: str) -> list[str]:
    """The layers :func:`measure_free_layers` records, in its order: ``main`` (the classifier's input H_L), then
    ``H_1, …, H_{L−1}`` by :data:`FREE_LAYER_NAMES`."""
    hidden = len(network.free_layers().weights) - 1
    return [main, *(FREE_LAYER_NAMES[0] if index == 0 else FREE_LAYER_NAMES[1].format(index=index - 1)
                    for index in range(hidden))]  # fmt: skip


@torch.inference_mode()
def measure_free_layers(
    network: FreeLayersNetwork, labels: ClassLabels, layer: str, objective: Objective, logits: Tensor | None = None
) -> NetworkMeasurement:
    """Every collapse metric of every layer of each deep-UFM replica from its parameters (no data loader, no hooks),
    plus ``train/loss`` and ``train/accuracy``.

    The rows of ``H_1`` are the free features, ``H_{l+1} = σ(W_l H_l)`` (Súkeník, Mondelli & Lampert 2023). Each layer
    gets the metrics of :func:`~ufm_torch.metrics.layer_metrics_with_statistics` of its class statistics (NC1 is
    DNC1), and :data:`~ufm_torch.metrics.tags.DEEP_COLLAPSE_TAGS`: DNC1 of the pre-activations ``W_l H_l``, DNC2
    against the geometry of :func:`~ufm_torch.metrics.deep_collapse.dnc2_geometry`, DNC3 of the weight that reads the
    layer, and the ranks. ``H_L``, the classifier's input, is the main layer (recorded as ``layer``, the classifier's
    name): it also gets the classifier metrics and SNC1–SNC3, so that a depth-1 deep UFM records what the UFM records;
    the others are recorded under :data:`FREE_LAYER_NAMES`.
    """
    parameters = network.free_layers()
    head, num_classes = network.head, network.num_classes
    rows, entries = parameters.features, []
    for index, weight in enumerate(parameters.weights, start=1):
        statistics = class_statistics(rows, labels, num_classes)
        preactivation = rows @ weight.transpose(-1, -2)
        is_classifier = index == len(parameters.weights)
        values = tagged(
            layer_metrics_with_statistics(statistics, weight, head.bias) if is_classifier
            else layer_metrics_with_statistics(statistics)
        )  # fmt: skip
        values |= tagged({
            "dnc1_preactivation": dnc1(class_statistics(preactivation, labels, num_classes)),
            **class_mean_metrics(statistics.means, dnc2_geometry(parameters.activation, index), weight, is_classifier),
            "rank": numerical_rank(rows),
            "stable_rank": stable_rank(rows),
        })  # fmt: skip
        if is_classifier:
            values |= tagged(strong_collapse_values(statistics, weight, head.bias, labels))
            logits = head(rows) if logits is None else logits
            values[LOSS_TAG] = objective(logits, labels.labels, rows).to(torch.float64)
            values[TRAIN_ACCURACY_TAG] = (logits.argmax(-1) == labels.labels).to(torch.float64).mean(-1)
            entries.insert(0, LayerValues(layer, TRAIN, values))
            main_means = statistics.means
        else:
            name = FREE_LAYER_NAMES[0] if index == 1 else FREE_LAYER_NAMES[1].format(index=index - 2)
            entries.append(LayerValues(name, TRAIN, values))
            rows = parameters.activation.apply(preactivation)
    return NetworkMeasurement(entries, main_means)


def float64_logits(head: nn.Module, features: Tensor) -> Tensor:
    """The logits ``head(features)`` computed in float64 (the head's parameters and ``features`` cast), so that the
    monitor's loss is float64 whatever the training precision (a bf16 network gives bf16 features)."""
    parameters = {name: parameter.to(torch.float64) for name, parameter in head.named_parameters()}
    return torch.func.functional_call(head, parameters, (features.to(torch.float64),))


def first_floating_parameter(model: nn.Module) -> Tensor | None:
    """The first floating-point parameter (device and dtype of the network's inputs), None if it has none."""
    return next((parameter for parameter in model.parameters() if parameter.is_floating_point()), None)


class ForwardPasses:
    """Runs ``model`` over a loader with its layers tapped; yields ``(rows by layer, labels)`` per batch.

    Inputs go to the device of the model's parameters, floating-point ones in their dtype (a float64 network on
    float32 data). Labels outside ``[0, C)`` are a :class:`ConfigError`.
    """

    def __init__(self, model: nn.Module, taps: LayerTaps, plan: MeasurementPlan) -> None:
        self.model = model
        self.taps = taps
        self.plan = plan
        parameter = first_floating_parameter(model)
        self.device = parameter.device if parameter is not None else torch.device("cpu")
        self.dtype = parameter.dtype if parameter is not None else None

    def __call__(self, loader: DataLoader) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
        """One pass over this process's shard of ``loader``."""
        for batch in process_shard(loader):
            inputs, labels = read_batch(batch, self.plan.batch_keys)
            inputs = move_data_to_device(inputs, self.device)
            if isinstance(inputs, Tensor) and inputs.is_floating_point() and self.dtype is not None:
                inputs = inputs.to(self.dtype)
            labels = labels.to(self.device)
            self.check_labels(labels)
            self.taps.clear()
            self.model(inputs)
            missing = [name for name in self.plan.layers if name not in self.taps.rows]
            if missing:
                raise ConfigError(f"layers {missing} did not run in the network's forward pass, so they cannot be read")
            yield dict(self.taps.rows), labels

    def check_labels(self, labels: Tensor) -> None:
        """A :class:`ConfigError` unless every label lies in ``[0, C)`` (one read of the device per batch)."""
        if not labels.numel():
            return
        low, high = torch.stack(torch.aminmax(labels)).tolist()
        if low < 0 or high >= self.plan.num_classes:
            raise ConfigError(
                f"labels must lie in [0, {self.plan.num_classes}) (C = {self.plan.num_classes} classes, from the "
                f"classifier's outputs or num_classes), got a batch with labels in [{low}, {high}]"
            )


class SplitPass(NamedTuple):
    """The class statistics of every layer over one split, and the classifier's input rows with the split's labels
    (None when not kept: only the objective needs them)."""

    statistics: dict[str, ClassStatistics]
    labels: Tensor | None
    penultimate: Tensor | None


def two_passes(
    passes: ForwardPasses, loader: DataLoader, weight: Tensor | None, bias: Tensor | None,
    centres: dict[str, Tensor] | None, keep_penultimate: bool,
) -> SplitPass:  # fmt: skip
    """Class means in a first pass, centred moments in a second (module docstring), for every layer of the plan.

    The classifier's layer gets its weight and bias (NC4 against the nearest class centre: ``centres[layer]`` when
    given, the split's own means otherwise). Activations of the first pass are kept for the second while they fit in
    ``plan.cache_bytes``; past that the network runs again.
    """
    plan = passes.plan
    means: dict[str, ClassMeansAccumulator] = {}
    cache: list[tuple[dict[str, Tensor], Tensor]] | None = []
    cached_bytes = 0
    labels, penultimate, batches = [], [], 0
    for rows, batch_labels in passes(loader):
        batches += 1
        for name, layer_rows in rows.items():
            if name not in means:
                means[name] = ClassMeansAccumulator(plan.num_classes, layer_rows.shape[-1]).to(passes.device)
            means[name].update(layer_rows, batch_labels)
        if keep_penultimate:
            penultimate.append(rows[plan.classifier])
            labels.append(batch_labels)
        if cache is not None:
            cached_bytes += sum(value.numel() * value.element_size() for value in rows.values())
            if cached_bytes > plan.cache_bytes:
                cache = None
            else:
                cache.append((rows, batch_labels))
    if not batches:
        raise ConfigError("the collapse monitor's data loader gave no batches")
    moments = {}
    for name, accumulator in means.items():
        reference = accumulator.compute()
        classifier = {"weight": weight, "bias": bias} if name == plan.classifier and weight is not None else {}
        centre = {"centres": centres[name]} if centres and name in centres and classifier else {}
        moments[name] = CentredMomentsAccumulator(reference, **classifier, **centre).to(passes.device)
    second = cache if cache is not None else passes(loader)
    for rows, batch_labels in second:
        for name, accumulator in moments.items():
            accumulator.update(rows[name], batch_labels)
    return SplitPass(
        {name: accumulator.compute() for name, accumulator in moments.items()},
        concatenate_over_processes(torch.cat(labels)) if keep_penultimate else None,
        concatenate_over_processes(torch.cat(penultimate)) if keep_penultimate else None,
    )


def split_values(
    split: SplitPass, plan: MeasurementPlan, weight: Tensor | None, bias: Tensor | None, split_name: str,
    measured_accuracy: dict[str, Tensor],
) -> list[LayerValues]:  # fmt: skip
    """The metrics of every layer of one split (training: all of them; held-out: :data:`HELDOUT_METRICS`); the
    classifier's accuracy on the split goes to ``measured_accuracy[split_name]``."""
    measured = []
    for name in plan.layers:
        statistics = split.statistics[name]
        at_classifier = name == plan.classifier and weight is not None
        values = layer_metrics_from_statistics(statistics, *((weight, bias) if at_classifier else ()))
        accuracy = values.pop("accuracy", None)
        if accuracy is not None:
            measured_accuracy[split_name] = accuracy
        if split_name == TRAIN and at_classifier:
            values |= strong_collapse_values(statistics, weight.to(torch.float64), bias.to(torch.float64))
        if split_name == HELDOUT:
            values = {key: value for key, value in values.items() if key in HELDOUT_METRICS}
        measured.append(LayerValues(name, split_name, tagged(values)))
    return measured


@torch.inference_mode()
def measure_layers(
    model: nn.Module, plan: MeasurementPlan, train_loader: DataLoader, heldout_loader: DataLoader | None = None,
    objective: Objective | None = None,
) -> NetworkMeasurement:  # fmt: skip
    """Every metric of every layer of ``plan`` over ``train_loader`` (and ``heldout_loader``), in eval mode.

    The main layer's training values also hold ``train/accuracy`` (argmax of the classifier, in float64, against the
    labels), ``train/loss`` when an ``objective`` is given, and ``heldout/accuracy`` with held-out data. Every module's
    train/eval mode is restored afterwards; BatchNorm uses rank 0's running statistics. Every DDP process must call
    this (the reductions are collective). Values are float64 tensors of shape ``(1,)``.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        synchronise_buffers(model)
        weight, bias = (None, None)
        if plan.classifier is not None:
            weight, bias = classifier_parameters(find_module(model, plan.classifier, "classifier"))
        taps = LayerTaps(model, plan.layers, plan.classifier, plan.feature_map)
        with taps.attached():
            passes = ForwardPasses(model, taps, plan)
            train = two_passes(passes, train_loader, weight, bias, None, keep_penultimate=objective is not None)
            accuracy: dict[str, Tensor] = {}
            layers = split_values(train, plan, weight, bias, TRAIN, accuracy)
            main = layers[0].values
            if objective is not None:
                penultimate = train.penultimate.to(torch.float64)
                logits = float64_logits(find_module(model, plan.classifier, "classifier"), penultimate)
                main[LOSS_TAG] = objective(logits, train.labels, penultimate)
            if heldout_loader is not None:
                centres = {name: train.statistics[name].means for name in plan.layers}
                heldout = two_passes(passes, heldout_loader, weight, bias, centres, keep_penultimate=False)
                layers += split_values(heldout, plan, weight, bias, HELDOUT, accuracy)
            main |= {tag: accuracy[split] for split, tag in SPLIT_ACCURACY_TAGS.items() if split in accuracy}
    finally:
        for module, training in modes.items():
            module.training = training
    measured = [
        LayerValues(entry.layer, entry.split, {k: v.to(torch.float64).reshape(1) for k, v in entry.values.items()})
        for entry in layers
    ]
    return NetworkMeasurement(measured, train.statistics[plan.layers[0]].means.unsqueeze(0))
