"""Plain operations on the records of ``metrics.jsonl`` (one dict per evaluation and replica), shared by every
table and figure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

RECORD_FIELDS = ("step", "replica", "init_scale", "copy", "seed", "layer", "split")
"""What a record of ``metrics.jsonl`` says about where it was measured (not a metric)."""


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
