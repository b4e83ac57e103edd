"""``metrics.jsonl``: one JSON object per evaluation, replica, layer and split, flushed as written, safe to resume.

A record holds ``step``, the replica's identity (``replica``, ``init_scale``, ``copy``, ``seed``, and one field per
per-replica hyperparameter that varies, named by its key: ``module.classifier_decay``), ``layer`` (the
module name whose features were measured) and ``split`` (``train`` or ``heldout``), then its metrics by tag. The
**main records** are those of the main layer (the classifier's input; the first record's layer) on the training
split, one per replica and evaluation: what every report, summary and final metric reads. Files written before layers
and splits were recorded have neither field; all their records are main records.

A metric that is undefined for a replica (NaN: for example SNC1–SNC3 and dist_S on unbalanced classes, or a degenerate
input of ``ufm_torch.metrics``) is written as JSON ``null``, never as a number: Python's ``json`` would write ``NaN``,
which is not JSON. NaN in a record can only mean "undefined": the divergence guard stops a run before a non-finite
loss or parameter is evaluated (with the package's default callbacks), so no record comes from a diverged state. An
infinite value has no such meaning and is refused (``ValueError``) rather than written as a number or as null.
The reader (:func:`read_records`) gives ``null`` back as None, as for a metric a record lacks.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path
from typing import IO, Any

STRICT_JSON = json.JSONEncoder(allow_nan=False)
"""The encoder of every line (``json.dumps(..., allow_nan=False)`` would build a new one per record)."""


class MetricsLog:
    """Appends records to ``path`` line by line; on resume keeps only records up to the resumed step."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None
        self.logged_steps: set[int] = set()

    def open(self, resume_step: int, records_per_evaluation: int) -> None:
        """Open for appending, keeping only whole evaluations (``records_per_evaluation`` records: every replica, layer
        and split) up to ``resume_step``.

        Records written after the checkpoint that training resumes from, or cut short by a kill, are dropped
        (atomically: write a temporary file, then rename), so the resumed run neither repeats nor skips a step.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            records = read_records(self.path, every_layer=True)
            counts = Counter(record["step"] for record in records)
            kept = [r for r in records if r["step"] <= resume_step and counts[r["step"]] == records_per_evaluation]
            temporary = self.path.with_suffix(".jsonl.tmp")
            temporary.write_text("".join(record_line(record) for record in kept))
            os.replace(temporary, self.path)
            self.logged_steps = {record["step"] for record in kept}
        self._file = self.path.open("a")

    def write(self, records: list[dict[str, Any]]) -> None:
        """Append ``records`` (one evaluation, every replica) and flush to disk; NaN (undefined) is written as null
        (:func:`record_line`)."""
        assert self._file is not None, "MetricsLog.open must be called first"
        self._file.write("".join(record_line(record) for record in records))
        self._file.flush()
        self.logged_steps.update(record["step"] for record in records)

    def close(self) -> None:
        """Close the file."""
        if self._file is not None:
            self._file.close()
            self._file = None


def record_line(record: dict[str, Any]) -> str:
    """One line of ``metrics.jsonl``: ``record`` as strict JSON, NaN values (undefined) as ``null``.

    ``ValueError`` naming the key for ±inf (module docstring): nothing non-finite is written as a number. A record
    of finite numbers (every evaluation of a balanced run) is encoded in one pass.
    """
    try:
        return STRICT_JSON.encode(record) + "\n"
    except ValueError:
        pass
    values = {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in record.items()}
    for key, value in values.items():
        if isinstance(value, float) and math.isinf(value):
            raise ValueError(
                f"{key}={value} at step {record.get('step')}, replica {record.get('replica')}: metrics.jsonl holds "
                "finite numbers or null (undefined), never an infinite value"
            )
    return STRICT_JSON.encode(values) + "\n"


def read_records(path: Path, every_layer: bool = False) -> list[dict[str, Any]]:
    """The main records of a ``metrics.jsonl`` file in order (module docstring), or with ``every_layer`` every record
    of every layer and split; a line cut short by a kill is skipped (the one reader)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record and "replica" in record:
            records.append(record)
    return records if every_layer else main_records(records)


def main_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the main layer (the first record's ``layer``) on the training split; all of them for records
    without ``layer`` and ``split`` fields."""
    main_layer = records[0].get("layer") if records else None
    return [r for r in records if r.get("layer") == main_layer and r.get("split", "train") == "train"]
