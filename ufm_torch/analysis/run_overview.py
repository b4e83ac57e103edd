"""The text panel of a run's report: its command line and final metrics as markdown, for TensorBoard's Text tab.

:func:`run_overview` reads the run folder's files only: the command line from ``.hydra/overrides.yaml``, the outcome
from ``status.json``, and the final metrics from ``metrics.jsonl`` (each replica's last evaluation; for each init scale
ε the median over its replicas, the dashboards' line).
"""

from __future__ import annotations

import math
import shlex
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ufm_torch.analysis.comparison import MAX_GROUPS, has_replica_groups
from ufm_torch.analysis.records import (
    as_float,
    final_records,
    group_label,
    records_by_group,
    replica_group,
    spread,
    varying_entries,
)
from ufm_torch.run_folder.jobs import Job, read_override_list
from ufm_torch.run_folder.layout import METRICS_FILE, OVERRIDES_FILE, STATUS_FILE

OVERVIEW_TAG = "report/overview"
"""The text panel's tag in the report's TensorBoard run (``tb/figures``)."""


def command_line(overrides: Sequence[str]) -> str:
    """``ufm-train <overrides>`` quoted for a POSIX shell: the command that trains this run again."""
    return shlex.join(["ufm-train", *overrides])


def format_metric(value: float) -> str:
    """Three significant digits (``1.23e-05``); ``–`` for a missing or non-finite value."""
    return f"{value:.3g}" if math.isfinite(value) else "–"


def final_metrics_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table: one row per metric, one column per init scale ε (``backbone`` without one), or per replica
    group when the replicas differ in their hyperparameters (at most ``MAX_GROUPS``, evenly spread), each cell the
    median over that column's replicas of their final values (finite ones only)."""
    finals = final_records(records)
    columns: dict[Any, list[Mapping[str, Any]]] = {}
    if has_replica_groups(finals):
        groups = records_by_group(finals)
        varying = varying_entries(list(groups))
        columns = {group_label(key, varying): groups[key] for key in spread(list(groups), MAX_GROUPS)}
        header = list(columns)
    else:
        for record in finals:
            columns.setdefault(record.get("init_scale"), []).append(record)
        header = [f"ε = {scale:g}" if scale is not None else "backbone" for scale in columns]
    metrics = [key for key in finals[0] if "/" in key]
    lines = ["| metric | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for metric in metrics:
        cells = []
        for group in columns.values():
            values = [value for value in (as_float(record.get(metric)) for record in group) if math.isfinite(value)]
            cells.append(format_metric(statistics.median(values) if values else math.nan))
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


TIMES = (("command_wall_time_s", "command"), ("wall_time_s", "job"), ("training_time_s", "training"))
"""The wall times ``status.json`` may hold, with their labels: the whole command (single runs, after the report),
the job (set-up, training, final evaluation) and ``trainer.fit`` alone."""


def run_overview(job: Job) -> str:
    """The run's text panel (markdown): command line, outcome, and :func:`final_metrics_table`."""
    status = job.status
    outcome = f"**{status.get('status', 'unknown')}**"
    times = [f"{label} {float(status[key]):.1f} s" for key, label in TIMES if status.get(key) is not None]
    if times:
        outcome += f" ({', '.join(times)})"
    if status.get("error"):
        outcome += f": {status['error']}"
    parts = [
        f"### Run `{job.path}`",
        f"Command line (`{OVERRIDES_FILE}`):",
        f"```\n{command_line(read_override_list(job.path))}\n```",
        f"Outcome (`{STATUS_FILE}`): {outcome}",
    ]
    if job.records:
        finals = final_records(job.records)
        steps = "/".join(str(step) for step in sorted({int(record["step"]) for record in finals}))
        counts = sorted(set(Counter(replica_group(record) for record in finals).values()))
        each = f"{counts[0]} each" if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
        column = "replica group" if has_replica_groups(finals) else "ε"
        median = "" if counts == [1] else f": median over the replicas of each {column} ({each})"
        parts += [f"Final metrics (`{METRICS_FILE}`) at step {steps}{median}", final_metrics_table(job.records)]
    return "\n\n".join(parts)
