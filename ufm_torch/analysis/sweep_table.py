"""The summary table of a sweep (or a single run): one row per job and replica with its swept values, outcome and
final metrics, written deterministically as ``sweep_summary.csv`` (the same folder always gives the same bytes)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

from ufm_torch.analysis.records import RECORD_FIELDS, final_records
from ufm_torch.run_folder.jobs import Job, expected_replicas, natural_key

REPLICA_COLUMNS = ("replica", "copy", "init_scale", "replica_seed", "status", "wall_time_s", "step")
FLOAT_FORMAT = ".10g"


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (or is missing in some), in order of first appearance."""
    keys: list[str] = []
    for job in jobs:
        keys.extend(key for key in job.overrides if key not in keys)
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


def metric_names(jobs: list[Job]) -> list[str]:
    """Metric keys of the records (``train/…``, ``collapse/…``, ``strong_collapse/…``), in order of first appearance."""
    names: list[str] = []
    for job in jobs:
        for record in job.records:
            names.extend(key for key in record if key not in RECORD_FIELDS and key not in names)
    return names


@dataclass(frozen=True)
class SummaryTable:
    """One row per job and replica: ``columns`` in order; ``rows`` map column → value (None when absent)."""

    swept: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]]

    @property
    def columns(self) -> list[str]:
        """``job``, the swept keys, the replica columns, the metrics, ``error``."""
        return ["job", *self.swept, *REPLICA_COLUMNS, *self.metrics, "error"]


def summary_table(jobs: list[Job]) -> SummaryTable:
    """Rows sorted by job (natural order) then replica, with the final record of each replica.

    A job without metrics gets one row per replica its config asks for (one row if that is unknown), with its
    status and error line and no metric values.
    """
    swept = swept_keys(jobs)
    metrics = metric_names(jobs)
    rows = []
    for job in sorted(jobs, key=lambda job: natural_key(job.name)):
        shared = {"job": job.name} | {key: job.overrides.get(key) for key in swept}
        shared |= {
            "status": job.status.get("status"),
            "wall_time_s": job.status.get("wall_time_s"),
            "error": _one_line(job.status.get("error")),
        }
        finals = final_records(job.records)
        if finals:
            for record in finals:
                rows.append(
                    shared
                    | {key: record.get(key) for key in ("replica", "copy", "init_scale", "step")}
                    | {"replica_seed": record.get("seed")}
                    | {name: record.get(name) for name in metrics}
                )
        else:
            rows.extend(shared | replica for replica in expected_replicas(job.config) or [{}])
    columns = SummaryTable(swept, metrics, []).columns
    return SummaryTable(swept, metrics, [{column: row.get(column) for column in columns} for row in rows])


def _one_line(error: Any) -> str | None:
    """``error`` on a single line (None stays None)."""
    return None if error is None else " ".join(str(error).split())


def format_value(value: Any) -> str:
    """Fixed CSV text of a value: floats with 10 significant digits (``nan``, ``inf``), None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "nan" if math.isnan(value) else format(value, FLOAT_FORMAT)
    return str(value)


def format_summary_csv(table: SummaryTable) -> str:
    """The summary as CSV text (``\\n`` line ends, minimal quoting): identical for identical inputs."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.columns)
    for row in table.rows:
        writer.writerow([format_value(row[column]) for column in table.columns])
    return buffer.getvalue()


def as_number(value: Any) -> float | None:
    """A swept value as a float when it is one (``"1e-3"`` → 0.001), else None (``"adam"``, lists, booleans)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
