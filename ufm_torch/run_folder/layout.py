"""The files of a run folder and of a sweep folder, by name: the only place these names are spelled out.

A run folder (``outputs/runs/<date>/<time>/`` or a sweep's ``<job num>/``) holds ``.hydra/`` (composed config and
overrides), ``metrics.jsonl``, ``status.json``, ``tb/`` (TensorBoard), ``checkpoints/``, and after the run's report
``figures/`` and ``summary.csv``. A sweep folder holds its job folders and ``sweep_summary.csv``, ``figures/`` and
``hparams/``.
"""

from __future__ import annotations

from pathlib import Path

HYDRA_DIR = ".hydra"
CONFIG_FILE = f"{HYDRA_DIR}/config.yaml"
OVERRIDES_FILE = f"{HYDRA_DIR}/overrides.yaml"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
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
