"""The TensorBoard HPARAMS view of a sweep: one session per job and replica, swept values and ε against final
metrics (written by :func:`ufm_torch.run_folder.tensorboard.write_hparams_sessions`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ufm_torch.analysis.records import as_float
from ufm_torch.analysis.sweep_figures import is_numeric
from ufm_torch.analysis.sweep_table import SummaryTable, as_number
from ufm_torch.metrics.tags import short_name
from ufm_torch.run_folder.tensorboard import HparamsSession, write_hparams_sessions


def hparam_value(value: Any, numeric: bool) -> float | str:
    """A swept value as TensorBoard accepts it: a float for numeric keys, else text (empty when absent)."""
    if numeric:
        return float(as_number(value))
    return "" if value is None else str(value)


def sweep_sessions(table: SummaryTable, log_dir: Path) -> list[HparamsSession]:
    """The session of every row of ``table``: run ``<log_dir>/<job>/<run>`` (the replica's TensorBoard run,
    ``eps=<ε>/rep=<copy>`` or ``lam_W=0.01/lam_H=0.02/rep=0``), hyperparameters ``job``, each swept key, each
    per-replica hyperparameter, ``init_scale``, ``seed`` and ``status``, metrics ``hp/<metric>`` at the final step."""
    keys = [*table.swept, *table.hyperparameters]
    numeric = {
        key: all(row[key] is not None for row in table.rows) and is_numeric(row[key] for row in table.rows)
        for key in keys
    }
    sessions = []
    for row in table.rows:
        hyper: dict[str, Any] = {"job": row["job"]}
        hyper |= {key: hparam_value(row[key], numeric[key]) for key in keys}
        hyper |= {
            "init_scale": as_float(row["init_scale"]),
            "seed": "" if row["replica_seed"] is None else str(row["replica_seed"]),
            "status": str(row["status"]),
        }
        finals = {f"hp/{short_name(m)}": as_float(row[m]) for m in table.metrics if row[m] is not None}
        run = Path(row["job"]) / (row["run"] or "")
        sessions.append(HparamsSession(Path(log_dir) / run, hyper, finals, row["step"] or 0))
    return sessions


def write_sweep_hparams(table: SummaryTable, log_dir: Path) -> list[Path]:
    """The sweep's HPARAMS in ``log_dir`` (replaced); returns the session runs' folders."""
    return write_hparams_sessions(log_dir, sweep_sessions(table, log_dir))
