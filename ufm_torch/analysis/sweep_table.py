"""The summary table of a sweep (or a single run): one row per job and replica with its swept values, its own
values of the per-replica hyperparameters, its TensorBoard run, outcome and final metrics, written deterministically
as ``sweep_summary.csv`` (the same folder always gives the same bytes)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ufm_torch.analysis.records import HYPERPARAMETER_FIELDS, RECORD_FIELDS, final_records, replica_setting
from ufm_torch.run_folder.jobs import Job, expected_replicas, natural_key
from ufm_torch.run_folder.names import replica_run_names

REPLICA_COLUMNS = ("replica", "copy", "init_scale", "replica_seed", "run", "status", "wall_time_s", "step")
FLOAT_FORMAT = ".10g"


def swept_keys(jobs: list[Job]) -> list[str]:
    """Override keys whose value differs between jobs (or is missing in some), in order of first appearance; the
    per-replica hyperparameters that some replica records are not among them (:func:`replica_keys`)."""
    keys: list[str] = []
    for job in jobs:
        keys.extend(key for key in job.overrides if key not in keys)
    per_replica = replica_keys(jobs)
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1 and key not in per_replica]


def replica_keys(jobs: list[Job]) -> list[str]:
    """The per-replica hyperparameters (:mod:`ufm_torch.hyperparameters`) that the records of some job carry."""
    present = {key for job in jobs for record in job.records[:1] for key in replica_setting(record)}
    return [key for key in HYPERPARAMETER_FIELDS if key in present]


def config_value(job: Job, key: str) -> Any:
    """The value of ``key`` in the job's saved config, interpolations resolved (None when absent)."""
    try:
        value = OmegaConf.select(OmegaConf.create(job.config), key, default=None)
    except OmegaConfBaseException:
        return None
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, ListConfig) else value


def metric_names(jobs: list[Job]) -> list[str]:
    """Metric keys of the records (``train/…``, ``collapse/…``, ``strong_collapse/…``), in order of first appearance."""
    names: list[str] = []
    for job in jobs:
        for record in job.records:
            names.extend(key for key in record if key not in RECORD_FIELDS and key not in names)
    return names


@dataclass(frozen=True)
class SummaryTable:
    """One row per job and replica: ``columns`` in order; ``rows`` map column → value (None when absent);
    ``hyperparameters`` the per-replica keys some replica records (:func:`replica_keys`)."""

    swept: list[str]
    metrics: list[str]
    rows: list[dict[str, Any]]
    hyperparameters: list[str] = field(default_factory=list)

    @property
    def columns(self) -> list[str]:
        """``job``, the swept keys, the per-replica hyperparameters, the replica columns, the metrics, ``error``."""
        return ["job", *self.swept, *self.hyperparameters, *REPLICA_COLUMNS, *self.metrics, "error"]


def summary_table(jobs: list[Job]) -> SummaryTable:
    """Rows sorted by job (natural order) then replica, with the final record of each replica.

    A per-replica hyperparameter column holds each replica's own value, or the job's (its config's) where the job
    gives every replica the same. ``run`` is the replica's TensorBoard run in the job's ``tb/``
    (:func:`~ufm_torch.run_folder.names.replica_run_names`). A job without metrics gets one row per replica its
    config asks for (one row if that is unknown), with its status and error line and no metric values.
    """
    swept = swept_keys(jobs)
    per_replica = replica_keys(jobs)
    metrics = metric_names(jobs)
    rows = []
    for job in sorted(jobs, key=lambda job: natural_key(job.name)):
        shared = {"job": job.name} | {key: job.overrides.get(key) for key in swept}
        shared |= {key: config_value(job, key) for key in per_replica}
        shared |= {
            "status": job.status.get("status"),
            "wall_time_s": job.status.get("wall_time_s"),
            "error": _one_line(job.status.get("error")),
        }
        finals = final_records(job.records)
        if finals:
            runs = replica_run_names(
                [record.get("init_scale") for record in finals], [record.get("copy", 0) for record in finals],
                [replica_setting(record) for record in finals],
            )  # fmt: skip
            for record, run in zip(finals, runs, strict=True):
                rows.append(
                    shared
                    | replica_setting(record)
                    | {key: record.get(key) for key in ("replica", "copy", "init_scale", "step")}
                    | {"replica_seed": record.get("seed"), "run": run}
                    | {name: record.get(name) for name in metrics}
                )
        else:
            rows.extend(shared | replica for replica in expected_replicas(job.config) or [{}])
    columns = SummaryTable(swept, metrics, [], per_replica).columns
    return SummaryTable(swept, metrics, [{column: row.get(column) for column in columns} for row in rows], per_replica)


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
