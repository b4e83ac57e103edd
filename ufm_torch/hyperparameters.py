"""Per-replica hyperparameters: the config keys that give every replica group its own value, and the grid they form.

A key of :data:`HYPERPARAMETERS` (``module.classifier_decay``, ``module.feature_decay``, ``module.bias_decay``,
``module.hidden_decay``, ``module.label_smoothing``, ``module.temperature``, ``optimizer.lr``) takes a number, shared
by every replica, or a list, each value of which becomes a replica group, exactly as ``model.init_scale`` does. Lists
on several keys form their grid, the Cartesian product (:class:`HyperparameterGrid`, the first key of
:data:`HYPERPARAMETERS` outermost), times the init scales, times ``model.replicas`` copies: replica ``r`` of a grid of
G settings, E init scales and K copies has setting ``r // (E·K)``, init scale ``(r // K) % E`` and copy ``r % K``.
Keys whose values are the same interpolation (``module.feature_decay: ${decay}`` and ``module.classifier_decay:
${decay}``), or one of which interpolates the other, vary together: they form one axis of the grid
(:func:`hyperparameter_grid`).

Each replica carries its :class:`HyperparameterSetting` in its identity
(:class:`ufm_torch.models.ReplicaIdentity`): ``metrics.jsonl`` writes one field per varied key, named by the key, and
its TensorBoard run is named by :meth:`HyperparameterSetting.run_name_parts` (``lam_W=0.01/lam_H=0.02/rep=0``).

The keys that change the shapes of the tensors (:data:`SHAPE_KEYS`: C, p, the depth and width) stay numbers: a grid
over them is a sweep of jobs (``ufm-train -m``).

A shared leaf of the package (like :mod:`ufm_torch.errors`): every unit may import it, and it imports neither torch
nor any other unit, so the config checks use it before torch is loaded.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


@dataclass(frozen=True)
class Hyperparameter:
    """A config key that may vary between replicas: ``key`` (``module.classifier_decay``), ``label`` (its part of a
    TensorBoard run name, ``lam_W``) and ``symbol`` (its name in figures, ``λ_W``)."""

    key: str
    label: str
    symbol: str

    @property
    def argument(self) -> str:
        """The argument the key sets (``classifier_decay``): the last part of the key."""
        return self.key.rpartition(".")[2]


STEP_SIZE_KEY = "optimizer.lr"
"""The step size η: per replica, it needs ``torch.optim.SGD`` (:class:`~ufm_torch.training.replica_sgd.ReplicaSGD`)."""

HYPERPARAMETERS: dict[str, Hyperparameter] = {
    parameter.key: parameter
    for parameter in (
        Hyperparameter("module.classifier_decay", "lam_W", "λ_W"),
        Hyperparameter("module.feature_decay", "lam_H", "λ_H"),
        Hyperparameter("module.bias_decay", "lam_b", "λ_b"),
        Hyperparameter("module.hidden_decay", "lam_hidden", "λ_hidden"),
        Hyperparameter("module.label_smoothing", "smoothing", "s"),
        Hyperparameter("module.temperature", "tau", "τ"),
        Hyperparameter(STEP_SIZE_KEY, "lr", "η"),
    )
}
"""Every key that takes a list of per-replica values, in grid order (the first one outermost)."""

INIT_SCALE_LABEL = "eps"
"""The run-name label of the init scale ε (``eps=<ε>``), the per-replica value every UFM had before the grid."""

SHAPE_KEYS = ("data.num_classes", "model.feature_dim", "model.depth", "model.width")
"""Keys that set the shapes of the tensors (C, p, the depth and width of a network): one value per run."""


@dataclass(frozen=True)
class HyperparameterSetting(Mapping[str, float]):
    """The values one replica group takes for the varied keys: key → value, keys in the order of
    :data:`HYPERPARAMETERS`. Empty when nothing varies."""

    pairs: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, values: Mapping[str, float]) -> HyperparameterSetting:
        """The setting of ``values`` (key → value; keys of :data:`HYPERPARAMETERS`, any order)."""
        return cls(tuple((key, float(values[key])) for key in HYPERPARAMETERS if key in values))

    def __getitem__(self, key: str) -> float:
        for name, value in self.pairs:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def run_name_parts(self) -> list[str]:
        """``<label>=<value>`` per key (``lam_W=0.01``), the value in ``:g`` format: the group's part of its
        TensorBoard run names."""
        return [f"{HYPERPARAMETERS[name].label}={value:g}" for name, value in self.pairs]


@dataclass(frozen=True)
class GridAxis:
    """One axis of a :class:`HyperparameterGrid`: the keys that vary together (one, or several tied by an
    interpolation) and their values."""

    keys: tuple[str, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class HyperparameterGrid:
    """The Cartesian product of its axes: every combination of one value per axis is a replica group.

    An empty grid has one setting, the empty one (nothing varies).
    """

    axes: tuple[GridAxis, ...] = ()

    @classmethod
    def of(cls, lists: Mapping[str, Sequence[float]], tied: Sequence[Sequence[str]] = ()) -> HyperparameterGrid:
        """The grid of ``lists`` (key → values; keys of :data:`HYPERPARAMETERS`), where each group of ``tied`` keys
        forms one axis (their lists must be equal) and every other key its own. Axes are ordered by their first key
        in :data:`HYPERPARAMETERS`."""
        unknown = sorted(set(lists) - set(HYPERPARAMETERS))
        if unknown:
            raise ValueError(
                f"{unknown[0]} cannot vary between replicas; the keys that can: {', '.join(HYPERPARAMETERS)}"
            )
        groups = [tuple(key for key in HYPERPARAMETERS if key in group) for group in tied]
        groups += [(key,) for key in HYPERPARAMETERS if key in lists and not any(key in group for group in groups)]
        axes = []
        for keys in sorted(
            (group for group in groups if group), key=lambda group: list(HYPERPARAMETERS).index(group[0])
        ):
            values = [tuple(float(value) for value in lists[key]) for key in keys]
            if any(other != values[0] for other in values[1:]) or not values[0]:
                raise ValueError(f"the tied keys {', '.join(keys)} need one non-empty list of values, got {values}")
            axes.append(GridAxis(keys, values[0]))
        return cls(tuple(axes))

    @property
    def keys(self) -> tuple[str, ...]:
        """Every varied key, in the order of :data:`HYPERPARAMETERS`."""
        varied = {key for axis in self.axes for key in axis.keys}
        return tuple(key for key in HYPERPARAMETERS if key in varied)

    def settings(self) -> list[HyperparameterSetting]:
        """Every setting, the first axis outermost (its value changes slowest)."""
        order = self.keys
        settings = []
        for combination in itertools.product(*(axis.values for axis in self.axes)):
            values = {key: value for axis, value in zip(self.axes, combination, strict=True) for key in axis.keys}
            settings.append(HyperparameterSetting(tuple((key, values[key]) for key in order)))
        return settings

    def __len__(self) -> int:
        """G, the number of settings (1 for the empty grid)."""
        size = 1
        for axis in self.axes:
            size *= len(axis.values)
        return size


def per_replica_value(
    value: float | Sequence[float], key: str, settings: Sequence[HyperparameterSetting]
) -> float | tuple[float, ...]:
    """The value of ``key`` for each replica of ``settings`` (one per replica): ``value`` itself when it is a number,
    else each replica's own value, which must be one of the list's; a number again when every replica has the same
    one (so that a run without variation takes its scalar paths).

    ``ValueError`` naming the key when a replica's setting has no value of it (the network was built without the
    grid) or one that is not in the list.
    """
    if not isinstance(value, Sequence | ListConfig) or isinstance(value, str):
        return float(value)
    allowed = {float(item) for item in value}
    values = []
    for setting in settings:
        if key not in setting or setting[key] not in allowed:
            raise ValueError(
                f"{key}={list(value)} gives every replica its own value, but a replica of the network has "
                f"{setting.get(key, 'none')}: build the network with the hyperparameter grid of the config"
            )
        values.append(setting[key])
    return values[0] if len(set(values)) == 1 else tuple(values)


# ------------------------------------------------------------------------------------------------- from the config

_INTERPOLATION = re.compile(r"^\$\{(\.*)([\w.]+)\}$")
"""A value that is exactly one interpolation of another key, ``${decay}`` or ``${.classifier_decay}``."""


def interpolation_source(cfg: DictConfig, key: str) -> str:
    """The key whose value ``key`` ends up holding: itself, or, following interpolations that are exactly one other
    key (``${decay}``; relative ones such as ``${.classifier_decay}`` too), the last key of the chain."""
    seen = {key}
    while True:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent or not OmegaConf.is_interpolation(parent, leaf):
            return key
        match = _INTERPOLATION.match(str(OmegaConf.to_container(parent, resolve=False)[leaf]))
        if match is None:
            return key
        dots, target = match.groups()
        if dots:
            base = parent_key.split(".") if parent_key else []
            base = base[: len(base) - (len(dots) - 1)]
            target = ".".join([*base, target])
        if target in seen:
            return key
        seen.add(target)
        key = target


def hyperparameter_grid(cfg: DictConfig | Mapping[str, Any]) -> HyperparameterGrid:
    """The grid of a composed (or saved) config: every key of :data:`HYPERPARAMETERS` whose value is a list is an
    axis; keys whose values are one interpolation source (module docstring) share an axis."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    lists: dict[str, list[float]] = {}
    sources: dict[str, list[str]] = {}
    for key in HYPERPARAMETERS:
        value = OmegaConf.select(cfg, key, default=None)
        if isinstance(value, ListConfig):
            lists[key] = list(OmegaConf.to_container(value, resolve=True))
            sources.setdefault(interpolation_source(cfg, key), []).append(key)
    return HyperparameterGrid.of(lists, tied=[keys for keys in sources.values() if len(keys) > 1])
