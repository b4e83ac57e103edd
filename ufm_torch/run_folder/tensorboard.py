"""All TensorBoard writing, through ``torch.utils.tensorboard``: one run per replica, the chart layout, HPARAMS
sessions (per training run and per sweep) and Gram-matrix images.

Each evaluation writes one event per replica run holding every tag (a single ``Summary`` with many values), so
that the number of events, and of records TensorBoard's writer checksums, does not grow with the number of tags.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from ufm_torch.analysis.records import as_float
from ufm_torch.analysis.sweep_figures import is_numeric
from ufm_torch.analysis.sweep_table import SummaryTable, as_number
from ufm_torch.metrics.tags import NC_TAGS, SNC_TAGS, short_name
from ufm_torch.run_folder.names import replica_run_name

CUSTOM_SCALARS_LAYOUT = {
    "Neural collapse": {"NC1–NC4": ["Multiline", list(NC_TAGS)]},
    "Strong neural collapse": {"SNC1–SNC3 and distance to S": ["Multiline", list(SNC_TAGS)]},
}


def open_replica_writers(log_dir: Path, run_names: list[str]) -> list[SummaryWriter]:
    """One writer per replica run ``log_dir/<name>``; each run's first summary is the custom-scalars layout."""
    writers = [SummaryWriter(log_dir=str(Path(log_dir) / name)) for name in run_names]
    for writer in writers:
        writer.add_custom_scalars(CUSTOM_SCALARS_LAYOUT)
    return writers


def scalar_summary(tags: Sequence[str], values: Sequence[float]) -> Summary:
    """One summary holding ``tag: value`` for every tag (TensorBoard reads each as its own scalar series)."""
    return Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in zip(tags, values, strict=True)])


def add_scalar_rows(
    writers: Sequence[SummaryWriter], tags: Sequence[str], rows: Sequence[Sequence[float]], step: int
) -> None:
    """Row ``r`` of ``rows`` (one value per tag) as one event at ``step`` in ``writers[r]``, all at one wall time.

    Rows beyond the last writer are not written.
    """
    wall_time = time.time()
    for writer, row in zip(writers, rows, strict=False):
        writer.file_writer.add_summary(scalar_summary(tags, row), step, wall_time)


def add_scalars_event(writer: SummaryWriter, values: dict[str, float], step: int) -> None:
    """All ``tag: value`` pairs as a single event at ``step`` (one summary with many values)."""
    add_scalar_rows([writer], list(values), [list(values.values())], step)


def add_image(writer: SummaryWriter, tag: str, image_hwc: np.ndarray, step: int) -> None:
    """An RGB image (height × width × 3, uint8) as a PNG image summary at ``step``."""
    writer.add_image(tag, image_hwc, step, dataformats="HWC")


def write_hparams(
    writer: SummaryWriter, hyperparameters: dict[str, Any], final_metrics: dict[str, float], step: int
) -> None:
    """An HPARAMS entry in ``writer``'s own run (not a new sub-run): the experiment, session start and session end
    summaries of ``hyperparameters`` against metrics ``hp/<name>``, and those metrics as one event at ``step``."""
    metric_dict = {f"hp/{short_name(name)}": value for name, value in final_metrics.items()}
    for summary in hparams(hyperparameters, metric_dict):
        writer.file_writer.add_summary(summary)
    add_scalars_event(writer, metric_dict, step)


def hparam_value(value: Any, numeric: bool) -> float | str:
    """A swept value as TensorBoard accepts it: a float for numeric keys, else text (empty when absent)."""
    if numeric:
        return float(as_number(value))
    return "" if value is None else str(value)


def _sweep_sessions(table: SummaryTable, log_dir: Path) -> list[tuple[Path, dict[str, Any], dict[str, float], int]]:
    """(run folder, hyperparameters, final ``hp/…`` metrics, last step) of every row of ``table``."""
    numeric = {
        key: all(row[key] is not None for row in table.rows) and is_numeric(row[key] for row in table.rows)
        for key in table.swept
    }
    sessions = []
    for row in table.rows:
        hyper: dict[str, Any] = {"job": row["job"]}
        hyper |= {key: hparam_value(row[key], numeric[key]) for key in table.swept}
        hyper |= {
            "init_scale": as_float(row["init_scale"]),
            "seed": "" if row["replica_seed"] is None else str(row["replica_seed"]),
            "status": str(row["status"]),
        }
        finals = {f"hp/{short_name(m)}": as_float(row[m]) for m in table.metrics if row[m] is not None}
        run = Path(row["job"]) / ("" if row["copy"] is None else replica_run_name(row["init_scale"], row["copy"]))
        sessions.append((log_dir / run, hyper, finals, row["step"] or 0))
    return sessions


def _write_session(run_dir: Path, hyperparameters: dict[str, Any], finals: dict[str, float], step: int) -> None:
    """In ``run_dir``: the HPARAMS session start and end of ``hyperparameters`` and ``finals`` as one event at
    ``step`` (the experiment summary is written once, at the top)."""
    with SummaryWriter(log_dir=str(run_dir)) as writer:
        _, session_start, session_end = hparams(hyperparameters, finals)
        writer.file_writer.add_summary(session_start)
        writer.file_writer.add_summary(session_end)
        add_scalars_event(writer, finals, step)


def _write_experiment(log_dir: Path, sessions: list[tuple[Path, dict[str, Any], dict[str, float], int]]) -> None:
    """In ``log_dir``: the HPARAMS experiment summary, every hyperparameter of the first session as a column (text
    ones with every value seen as their domain) and every metric of any session."""
    first = sessions[0][1]
    domains = {key: sorted({str(hyper[key]) for _, hyper, _, _ in sessions}) for key in first if isinstance(first[key], str)}
    metric_keys = {name: 0.0 for _, _, finals, _ in sessions for name in finals}
    experiment, _, _ = hparams(first, metric_keys, hparam_domain_discrete=domains)
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        writer.file_writer.add_summary(experiment)


def write_sweep_hparams(table: SummaryTable, log_dir: Path) -> list[Path]:
    """TensorBoard HPARAMS of the sweep in ``log_dir`` (replaced): swept values and ε against final metrics.

    One session run per job and replica, ``<job>/eps=<ε>/rep=<copy>``, with hyperparameters ``job``, each
    swept key, ``init_scale``, ``seed`` and ``status`` and metrics ``hp/<metric>`` at the final step, plus one
    experiment summary at the top so that ``tensorboard --logdir <log_dir>`` lists every swept key as a column.
    Returns the session runs' folders.
    """
    log_dir = Path(log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)
    sessions = _sweep_sessions(table, log_dir)
    for run_dir, hyper, finals, step in sessions:
        _write_session(run_dir, hyper, finals, step)
    if sessions:
        _write_experiment(log_dir, sessions)
    return [run_dir for run_dir, _, _, _ in sessions]


def simplex_etf_gram(num_classes: int) -> np.ndarray:
    """Gram matrix of the simplex ETF: ``C/(C−1) I − 1/(C−1) 11ᵀ`` (Papyan et al., NC2)."""
    return (num_classes * np.eye(num_classes) - np.ones((num_classes, num_classes))) / (num_classes - 1)


GRAM_IMAGE_PIXELS = 256
"""Height of a Gram-matrix image when every class gets at least one pixel: cells shrink as C grows (16 pixels at
most), so that encoding the image stays cheap for many classes."""


def gram_comparison_image(gram: np.ndarray, cell_pixels: int | None = None) -> np.ndarray:
    """HWC uint8 image: ``gram`` (M̃ᵀM̃) and the simplex ETF side by side, colours on [−1, 1] (coolwarm).

    ``cell_pixels`` per matrix entry; by default ``min(16, max(1, GRAM_IMAGE_PIXELS // C))``.
    """
    num_classes = gram.shape[0]
    cell_pixels = cell_pixels or min(16, max(1, GRAM_IMAGE_PIXELS // num_classes))
    separator = np.full((num_classes, 1), np.nan)
    panel = np.concatenate([gram, separator, simplex_etf_gram(num_classes)], axis=1)
    colours = colormaps["coolwarm"]((np.nan_to_num(panel, nan=0.0) + 1.0) / 2.0)[..., :3]
    colours[np.isnan(panel)] = 1.0
    image = np.kron(colours, np.ones((cell_pixels, cell_pixels, 1)))
    return (255 * image).astype(np.uint8)
