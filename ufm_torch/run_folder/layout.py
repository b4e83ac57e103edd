"""The files of a run folder and of a sweep folder, by name: the only place these names are spelled out.

A run folder (``outputs/runs/<date>/<time>/`` or a sweep's ``<job num>/``) holds ``.hydra/`` (composed config and
overrides, as the run was started: a resume never rewrites them), ``metrics.jsonl``, ``status.json``,
``resumes.jsonl`` (one record per resume), ``tb/`` (TensorBoard), ``checkpoints/``, and after the run's report
``figures/`` and ``summary.csv``. A file being replaced is first written as ``<name>.tmp`` beside it. A sweep folder
holds its job folders and ``sweep_summary.csv``, ``figures/`` and ``hparams/``.
"""

from __future__ import annotations

from pathlib import Path

HYDRA_DIR = ".hydra"
CONFIG_FILE = f"{HYDRA_DIR}/config.yaml"
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"
HYDRA_FILE = f"{HYDRA_DIR}/hydra.yaml"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
RESUMES_FILE = "resumes.jsonl"
TEMPORARY_SUFFIX = ".tmp"
"""The suffix of a file being written before it is renamed over the file it replaces."""
TENSORBOARD_DIR = "tb"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
FIGURES_DIR = "figures"
RUN_SUMMARY_FILE = "summary.csv"
SWEEP_SUMMARY_FILE = "sweep_summary.csv"
HPARAMS_DIR = "hparams"
TENSORBOARD_FIGURES_RUN = "figures"
"""The TensorBoard run (under ``tb/``) that holds a run's report figures as images."""


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` is a run folder: it holds Hydra's composed config."""
    return (Path(path) / CONFIG_FILE).is_file()


def temporary_files(run_dir: Path) -> list[Path]:
    """The files a replacement left half-written (``*.tmp``) in ``run_dir`` and below (``checkpoints/``, ``tb/``)."""
    run_dir = Path(run_dir)
    return sorted(path for path in run_dir.rglob(f"*{TEMPORARY_SUFFIX}") if path.is_file()) if run_dir.is_dir() else []
