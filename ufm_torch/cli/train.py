"""The Hydra entry point ``ufm-train``: validate the config, build data, network, module and trainer, fit."""

from __future__ import annotations

import math
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, OverrideParseException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from ufm_torch import conf
from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
from ufm_torch.cli.overrides import check_group_choices, check_plugins
from ufm_torch.cli.validation import validate_config
from ufm_torch.errors import ConfigError, DivergenceError
from ufm_torch.run_folder.checkpoints import check_resume
from ufm_torch.run_folder.status import RunStatus
from ufm_torch.training.precision import resolve_precision

CONFIG_DIR = Path(conf.__file__).parent


def build_and_fit(cfg: DictConfig, before_fit: Callable[[], None] | None = None) -> dict[str, Any]:
    """Seed, instantiate every object named by ``cfg``, check the data (``prepare_data``: settings, files,
    download) and the checkpoint to resume from, call ``before_fit`` (nothing of the run folder is written before
    it), and train.

    Returns the final metrics: those of the collapse monitor's last evaluation over the whole training set (mean
    over replicas), or the trainer's last logged values when no monitor runs.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    datamodule = instantiate(cfg.data)
    # Here, in the main process, before the Trainer starts any other (DDP spawns them): missing or damaged data
    # files, and a download that fails, are one ConfigError line (exit 2) before the run folder changes.
    datamodule.prepare_data()
    network = instantiate(cfg.model)
    module = instantiate(cfg.module, network=network, optimizer=instantiate(cfg.optimizer))
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    resume = check_resume(cfg.ckpt_path, Path(cfg.run_dir), module)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=resolve_precision(cfg))
    if before_fit is not None:
        before_fit()
    trainer.fit(module, datamodule=datamodule, ckpt_path=None if resume is None else str(resume))
    monitor = next((callback for callback in callbacks if isinstance(callback, CollapseMonitor)), None)
    if monitor is not None and monitor.last_records:
        return final_evaluation(monitor.last_records)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


def final_evaluation(records: list[dict[str, Any]]) -> dict[str, Any]:
    """``step`` and the mean over replicas of every metric of one evaluation's records (NaN-free means of finite
    values; a metric with none is None)."""
    tags = [key for key in records[0] if "/" in key]
    means: dict[str, Any] = {"step": records[0]["step"]}
    for tag in tags:
        values = [float(record[tag]) for record in records if record.get(tag) is not None]
        finite = [value for value in values if math.isfinite(value)]
        means[tag] = sum(finite) / len(finite) if finite else None
    return means


@hydra.main(version_base="1.3", config_path="pkg://ufm_torch.conf", config_name="train")
def train(cfg: DictConfig) -> dict[str, Any] | float:
    """Hydra task: one training run in its own run folder, its outcome recorded in ``status.json``.

    A config or checkpoint mistake found before training ends a single run with exit code 2 and one line on
    stderr, and leaves the run folder as it was; a diverged run exits 3 with the step and value. In a multirun
    every outcome is recorded and the sweep goes on. Returns the final metrics, or with ``objective`` set the final
    value of that metric as a float (NaN for a failed or diverged job), which sampling sweepers optimise.
    """
    return job_value(cfg.get("objective"), run_job(cfg))


def job_value(objective: str | None, metrics: dict[str, Any]) -> dict[str, Any] | float:
    """``metrics``, or ``metrics[objective]`` as a float when an objective is named (NaN when it is missing)."""
    if objective is None:
        return metrics
    value = metrics.get(objective)
    return float("nan") if value is None else float(value)


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Validate, train and record one job (see :func:`train`); returns its final metrics or ``{"status": ...}``."""
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    status = RunStatus(Path(cfg.run_dir))
    try:
        validate_config(cfg)
    except ConfigError as error:
        return _report_failure(status, "failed", error, exit_code=None if in_sweep else 2)
    try:
        metrics = build_and_fit(cfg, before_fit=lambda: status.write("running"))
    except DivergenceError as error:
        return _report_failure(status, "diverged", error, exit_code=None if in_sweep else 3)
    except SIGTERMException:
        hint = f"stopped by SIGTERM; resume with hydra.run.dir={cfg.run_dir} ckpt_path=last"
        status.write("interrupted", error=hint)
        print(f"ufm-train: {hint}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except ConfigError as error:
        if status.written:
            status.write("failed", error=_one_line(error))
        return _report_failure(status, "failed", error, exit_code=None if in_sweep else 2)
    except Exception as error:
        if not in_sweep:
            status.write("failed", error=_one_line(error))
            raise
        return _report_failure(status, "failed", error, exit_code=None)
    status.write("finished", final_metrics=metrics)
    print(f"Run folder: {cfg.run_dir}")
    return metrics


def _one_line(error: BaseException) -> str:
    """``Type: message`` on a single line."""
    message = " ".join(str(error).split())
    return message if isinstance(error, ConfigError | DivergenceError) else f"{type(error).__name__}: {message}"


def _report_failure(status: RunStatus, outcome: str, error: BaseException, exit_code: int | None) -> dict[str, Any]:
    """Print one line, record the outcome (except for config mistakes of a single run) and exit if asked.

    The line starts on a fresh line: a progress bar may have left the cursor mid-line.
    """
    print(f"\rufm-train: error: {_one_line(error)}", file=sys.stderr)
    if exit_code == 2:
        sys.exit(exit_code)
    status.write(outcome, error=_one_line(error))
    if exit_code is not None:
        sys.exit(exit_code)
    return {"status": outcome}


def main() -> None:
    """Console script: every config mistake (unknown group option or key, unparsable override, missing launcher or
    sweeper plugin, a sweep the sweeper cannot run, out-of-range value) ends with exit code 2 and one line on stderr;
    then Hydra runs the task."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    try:
        check_group_choices(sys.argv[1:], CONFIG_DIR)
        check_plugins(sys.argv[1:])
        train()
    except (ConfigError, HydraException) as error:
        print(f"ufm-train: error: {_composition_message(error)}", file=sys.stderr)
        sys.exit(2)


def _composition_message(error: Exception) -> str:
    """Hydra's message about a bad override on one line: its first line, the override, "no such key" if so."""
    text = f"{error} {error.__cause__ or ''}"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, OverrideParseException) and getattr(error, "override", None):
        first_line = f"cannot parse the override {error.override!r}: {first_line}"
    return f"{first_line} (no such key in the config)" if "not in struct" in text else first_line


if __name__ == "__main__":
    main()
