"""Read run folders back from their files: a single run, or every job of a sweep, with overrides, outcome and records.

Nothing here trains. A *job* is a folder holding ``.hydra/config.yaml`` (a run folder, or ``<sweep>/<job num>``).
Its swept values come from ``.hydra/overrides.yaml``, its outcome from ``status.json``
(:mod:`ufm_torch.run_folder.status`) and its metrics from ``metrics.jsonl`` (:mod:`ufm_torch.run_folder.metrics_log`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from omegaconf.errors import OmegaConfBaseException

from ufm_torch.hyperparameters import hyperparameter_grid
from ufm_torch.run_folder.layout import CONFIG_FILE, METRICS_FILE, OVERRIDES_FILE, is_run_folder
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.run_folder.names import replica_run_names
from ufm_torch.run_folder.status import read_status


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
    if is_run_folder(root):
        return [root]
    found: list[Path] = []
    for child in sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        found.extend(find_job_dirs(child))
    return sorted(found, key=lambda path: natural_key(path.relative_to(root).as_posix()))


def read_override_list(job_dir: Path) -> list[str]:
    """The job's command-line and sweeper overrides as written (``+``/``~`` kept), in order; [] without the file."""
    path = Path(job_dir) / OVERRIDES_FILE
    entries = yaml.safe_load(path.read_text()) if path.exists() else None
    return [str(entry) for entry in entries or []]


def read_overrides(job_dir: Path) -> dict[str, str]:
    """The job's command-line and sweeper overrides as ``{key: value as written}`` (``+``/``~`` dropped)."""
    overrides: dict[str, str] = {}
    for entry in read_override_list(job_dir):
        key, _, value = entry.partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def expected_replicas(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Replica index, copy index, ε, the per-replica hyperparameters and the TensorBoard run of every replica a UFM
    config asks for (setting-major, then scale-major, as the model orders them; :mod:`ufm_torch.hyperparameters`).

    Used for jobs that wrote no metrics (failed before training); ``[]`` when the config names no init scale or its
    lists cannot be read.
    """
    model = config.get("model") or {}
    scales = model.get("init_scale")
    replicas = model.get("replicas", 1)
    if scales is None or not isinstance(replicas, int) or replicas < 1:
        return []
    scales = scales if isinstance(scales, list) else [scales]
    try:
        values = [float(scale) for scale in scales for _ in range(replicas)]
        settings = [setting for setting in hyperparameter_grid(config).settings() for _ in values]
    except (TypeError, ValueError, OmegaConfBaseException):
        return []
    scales_of, copies = values * (len(settings) // len(values)), [r % replicas for r in range(len(settings))]
    runs = replica_run_names(scales_of, copies, settings)
    return [
        {"replica": r, "copy": copy, "init_scale": scale, **setting, "run": run}
        for r, (copy, scale, setting, run) in enumerate(zip(copies, scales_of, settings, runs, strict=True))
    ]


def read_job(job_dir: Path, root: Path) -> Job:
    """Everything the summary needs from one run folder.

    A folder without ``status.json`` counts as failed (the job never started, or a config error of a single
    run, which records nothing). A ``metrics.jsonl`` line cut short by a kill is skipped.
    """
    job_dir = Path(job_dir)
    name = job_dir.relative_to(root).as_posix()
    config = yaml.safe_load((job_dir / CONFIG_FILE).read_text()) or {}
    status = read_status(job_dir) or {"status": "failed", "error": "no status.json: the job did not start"}
    metrics_path = job_dir / METRICS_FILE
    records = read_records(metrics_path) if metrics_path.exists() else []
    return Job(name, job_dir, read_overrides(job_dir), config, status, records)


def read_jobs(root: Path) -> list[Job]:
    """Every job under ``root``, in natural order of their folder names."""
    root = Path(root)
    return [read_job(job_dir, root) for job_dir in find_job_dirs(root)]


