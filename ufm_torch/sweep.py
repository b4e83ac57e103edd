"""Read a Hydra sweep (or a single run) back from its files: jobs, swept values, outcomes and final metrics.

Every function here reads files or transforms plain values; nothing trains. A *job* is a folder holding
``.hydra/config.yaml`` (a run folder, or ``<sweep>/<job num>``). Its swept values come from
``.hydra/overrides.yaml``, its outcome from ``status.json`` (:mod:`ufm_torch.run_status`) and its metrics
from ``metrics.jsonl`` (written by :class:`callbacks.collapse_monitor.CollapseMonitor`).
:func:`summary_table` turns the jobs into one row per job and replica, and :func:`format_summary_csv` writes
it deterministically, so the same folder always gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ufm_torch.run_status import read_status

SUMMARY_FILE = "sweep_summary.csv"
REPLICA_COLUMNS = ("replica", "copy", "init_scale", "replica_seed", "status", "wall_time_s", "step")
RECORD_BOOKKEEPING = ("step", "replica", "init_scale", "copy", "seed")
FLOAT_FORMAT = ".10g"


@dataclass(frozen=True)
class Job:
    """One run folder: its name relative to the aggregated folder, overrides, config, outcome and metrics."""

    name: str
    path: Path
    overrides: dict[str, str]
    config: dict[str, Any]
    status: dict[str, Any]
    records: list[dict[str, Any]]


def natural_key(text: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``2`` before ``10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def find_job_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` (``root`` included) holding ``.hydra/config.yaml``; nested runs are not searched."""
    root = Path(root)
    if (root / ".hydra" / "config.yaml").is_file():
        return [root]
    found: list[Path] = []
    for child in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        found.extend(find_job_dirs(child))
    return sorted(found, key=lambda path: natural_key(path.relative_to(root).as_posix()))


def read_overrides(job_dir: Path) -> dict[str, str]:
    """The job's command-line and sweeper overrides as ``{key: value as written}`` (``+``/``~`` dropped)."""
    path = Path(job_dir) / ".hydra" / "overrides.yaml"
    entries = yaml.safe_load(path.read_text()) if path.exists() else None
    overrides: dict[str, str] = {}
    for entry in entries or []:
        key, _, value = str(entry).partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def final_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last evaluation of each replica (largest step), ordered by replica index."""
    last: dict[int, dict[str, Any]] = {}
    for record in records:
        replica = int(record["replica"])
        if replica not in last or record["step"] >= last[replica]["step"]:
            last[replica] = record
    return [last[replica] for replica in sorted(last)]


def expected_replicas(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Replica index, copy index and ε of every replica a UFM config asks for (scale-major, as the model orders them).

    Used for jobs that wrote no metrics (failed before training); ``[]`` when the config names no init scale.
    """
    model = config.get("model") or {}
    scales = model.get("init_scale")
    replicas = model.get("replicas", 1)
    if scales is None or not isinstance(replicas, int) or replicas < 1:
        return []
    scales = scales if isinstance(scales, list) else [scales]
    try:
        values = [float(scale) for scale in scales for _ in range(replicas)]
    except (TypeError, ValueError):
        return []
    return [{"replica": r, "copy": r % replicas, "init_scale": value} for r, value in enumerate(values)]


def read_job(job_dir: Path, root: Path) -> Job:
    """Everything the summary needs from one run folder.

    A folder without ``status.json`` counts as failed (the job never started, or a config error of a single
    run, which records nothing). A ``metrics.jsonl`` line cut short by a kill is skipped.
    """
    job_dir = Path(job_dir)
    name = job_dir.relative_to(root).as_posix()
    config = yaml.safe_load((job_dir / ".hydra" / "config.yaml").read_text()) or {}
    status = read_status(job_dir) or {"status": "failed", "error": "no status.json: the job did not start"}
    metrics_path = job_dir / "metrics.jsonl"
    records = read_records(metrics_path) if metrics_path.exists() else []
    return Job(name, job_dir, read_overrides(job_dir), config, status, records)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, skipping a line cut short by a kill."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record and "replica" in record:
            records.append(record)
    return records


def read_jobs(root: Path) -> list[Job]:
    """Every job under ``root``, in natural order of their folder names."""
    root = Path(root)
    return [read_job(job_dir, root) for job_dir in find_job_dirs(root)]


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
            names.extend(key for key in record if key not in RECORD_BOOKKEEPING and key not in names)
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
