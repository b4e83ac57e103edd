"""Plain operations on the records of ``metrics.jsonl`` (one dict per evaluation and replica), shared by every
table and figure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ufm_torch.hyperparameters import HYPERPARAMETERS

HYPERPARAMETER_FIELDS = tuple(HYPERPARAMETERS)
"""The per-replica hyperparameters a record may carry, by key (:mod:`ufm_torch.hyperparameters`)."""
RECORD_FIELDS = ("step", "replica", "init_scale", "copy", "seed", *HYPERPARAMETER_FIELDS, "layer", "split")
"""What a record of ``metrics.jsonl`` says about where it was measured (not a metric)."""


def replica_setting(record: Mapping[str, Any]) -> dict[str, float]:
    """The per-replica hyperparameters of a record (key → value; empty for a run that varies none)."""
    return {key: record[key] for key in HYPERPARAMETER_FIELDS if key in record}


def replica_group(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """The replica group of a record: its per-replica hyperparameters' values and its init scale ε (copies of one
    group differ only in their random start)."""
    return (*(record.get(key) for key in HYPERPARAMETER_FIELDS), record.get("init_scale"))


def group_label(group: tuple[Any, ...], varying: Sequence[bool]) -> str:
    """``λ_W = 0.01, λ_H = 0.02, ε = 0.1``: the values of a :func:`replica_group` where ``varying`` (one flag per
    entry) says they differ between groups."""
    symbols = [HYPERPARAMETERS[key].symbol for key in HYPERPARAMETER_FIELDS] + ["ε"]
    parts = [f"{symbol} = {value:g}" for symbol, value, shown in zip(symbols, group, varying, strict=True) if shown]
    return ", ".join(parts)


def final_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The last evaluation of each replica (largest step), ordered by replica index."""
    last: dict[int, Mapping[str, Any]] = {}
    for record in records:
        replica = int(record["replica"])
        if replica not in last or record["step"] >= last[replica]["step"]:
            last[replica] = record
    return [last[replica] for replica in sorted(last)]


def as_float(value: Any) -> float:
    """``value`` as a float; None (a missing metric) and non-numbers become NaN."""
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def spread(items: Sequence[Any], count: int) -> list[Any]:
    """At most ``count`` of ``items``, evenly spread over them (first and last included)."""
    if len(items) <= count:
        return list(items)
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def records_by_group(records: Iterable[Mapping[str, Any]]) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    """The records of each replica group (:func:`replica_group`), groups in the order of their first record."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault(replica_group(record), []).append(record)
    return groups


def varying_entries(groups: Sequence[tuple[Any, ...]]) -> list[bool]:
    """For each entry of a :func:`replica_group`, whether it differs between ``groups``."""
    return [len({group[i] for group in groups}) > 1 for i in range(len(groups[0]))] if groups else []
