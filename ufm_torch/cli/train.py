"""The Hydra entry point ``ufm-train``: check the command and the config, build data, network, module and trainer,
fit, and record the outcome.

torch and Lightning are imported only once the config has passed its checks (:func:`build_and_fit`), so that a
rejected config answers fast; the process's exit codes, signals and file-system errors are
:mod:`ufm_torch.cli.process`'s, a resume's rules :mod:`ufm_torch.cli.resume`'s.
"""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, InstantiationException, OverrideParseException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ufm_torch import conf
from ufm_torch.cli.overrides import check_group_choices, check_plugins
from ufm_torch.cli.process import (
    EX_IOERR,
    PROCESS,
    StopSignal,
    filesystem_error,
    lightning_logs_to_stderr,
    one_line,
    quiet_library_warnings,
    refuse,
    remove_new_run_folder,
    remove_temporary_files,
    resume_command,
)
from ufm_torch.cli.resume import plan_resume
from ufm_torch.cli.validation import validate_config
from ufm_torch.errors import ConfigError, DivergenceError
from ufm_torch.hyperparameters import hyperparameter_grid
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.run_folder.status import RunStatus, record_resume, record_resume_end, update_status

CONFIG_DIR = Path(conf.__file__).parent


@dataclass(frozen=True)
class FitResult:
    """What one fit gives its command: the final metrics (:func:`final_metrics`, as ``status.json`` records them) and
    the wall time of ``trainer.fit`` alone (set-up, data checks and reports excluded)."""

    final_metrics: dict[str, Any]
    training_time_s: float


def build_and_fit(cfg: DictConfig, before_fit: Callable[[], None] | None = None) -> FitResult:
    """Seed, instantiate every object named by ``cfg``, check the data (``prepare_data``: settings, files,
    download) and the checkpoint to resume from, call ``before_fit`` (nothing of the run folder is written before
    it), and train.

    Returns the final metrics (:func:`final_metrics`) and the training time. Checkpoints are written atomically
    beside their final name (:class:`ufm_torch.run_folder.checkpoints.AtomicCheckpointIO`).
    """
    import lightning as L
    import torch

    from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
    from ufm_torch.run_folder.checkpoints import AtomicCheckpointIO, check_resume
    from ufm_torch.training.precision import resolve_precision

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("threads"):
        torch.set_num_threads(cfg.threads)
    datamodule = instantiate(cfg.data)
    # Here, in the main process, before the Trainer starts any other (DDP spawns them): missing or damaged data
    # files, and a download that fails, are one ConfigError line (exit 2) before the run folder changes.
    datamodule.prepare_data()
    grid = hyperparameter_grid(cfg)  # per-replica lists: one replica group per setting (ufm_torch.hyperparameters)
    network = instantiate(cfg.model, _partial_=True)(hyperparameters=grid) if grid.axes else instantiate(cfg.model)
    module = instantiate(cfg.module, network=network, optimizer=instantiate(cfg.optimizer))
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    for callback in callbacks:
        if isinstance(callback, CollapseMonitor):
            callback.check(module)  # layer and classifier names: one line, exit 2, before the run folder changes
    resume = check_resume(cfg.ckpt_path, Path(cfg.run_dir), module)
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        precision=resolve_precision(cfg),
        plugins=[AtomicCheckpointIO()],
    )
    if before_fit is not None:
        before_fit()
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=None if resume is None else str(resume))
    training_time = time.perf_counter() - started
    monitor = next((callback for callback in callbacks if isinstance(callback, CollapseMonitor)), None)
    records = read_records(path) if monitor is not None and (path := monitor.metrics_path(trainer)).is_file() else []
    if records:
        return FitResult(final_metrics(records), training_time)
    trained = {key: float(value) for key, value in trainer.callback_metrics.items()}
    return FitResult({"step": trainer.global_step, "trainer": trained}, training_time)


def final_metrics(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The last evaluation of ``metrics.jsonl``'s main records (:func:`~ufm_torch.run_folder.metrics_log.read_records`):
    ``{"step": s, "replicas": [...]}`` with one entry per replica, its identity (``replica``, ``init_scale``,
    ``copy``, ``seed``) and its metrics by tag; an undefined metric is None. Read from the file rank 0 wrote, so a
    run gives the same record with or without DDP, and replicas of different ε are never averaged together."""
    step = records[-1]["step"]
    dropped = ("step", "layer", "split")
    last = [
        {key: value for key, value in record.items() if key not in dropped}
        for record in records
        if record["step"] == step
    ]
    return {"step": step, "replicas": last}


def objective_value(metrics: dict[str, Any], objective: str) -> float:
    """The value a sampling sweeper optimises: ``objective``'s mean over the replicas of :func:`final_metrics` (finite
    values only), or the trainer's last logged value without a monitor; NaN when it is missing."""
    if "replicas" in metrics:
        values = [replica.get(objective) for replica in metrics["replicas"]]
        finite = [float(value) for value in values if value is not None and math.isfinite(float(value))]
        return sum(finite) / len(finite) if finite else float("nan")
    value = metrics.get("trainer", {}).get(objective)
    return float("nan") if value is None else float(value)


@hydra.main(version_base="1.3", config_path="pkg://ufm_torch.conf", config_name="train")
def train(cfg: DictConfig) -> dict[str, Any] | float:
    """Hydra task: one training run in its own run folder, its outcome recorded in ``status.json``.

    A mistake found before training ends a single run with exit code 2 and one line on stderr; a new run folder is
    removed again, a resumed one left as it was. A diverged run exits 3 with the step and value, a file-system error
    during training 74 (:mod:`ufm_torch.cli.process`). In a multirun every outcome is recorded and the sweep goes
    on. Returns the final metrics, or with ``objective`` set the final value of that metric as a float (NaN for a
    failed or diverged job), which sampling sweepers optimise.
    """
    return job_value(cfg.get("objective"), run_job(cfg))


def job_value(objective: str | None, metrics: dict[str, Any]) -> dict[str, Any] | float:
    """``metrics``, or with an objective named its :func:`objective_value`."""
    if objective is None:
        return metrics
    return objective_value(metrics, objective)


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Validate, train and record one job (see :func:`train`); returns its final metrics or ``{"status": ...}``.

    A resume appends what it was given and how it ended to ``resumes.jsonl``. SIGTERM or Ctrl-C during training
    writes ``last.ckpt`` and ``status.json`` "interrupted"; a single run then returns, so that Hydra draws its
    report, and ``main()`` prints the resume command and exits 143 or 130.
    """
    in_sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    run_dir = Path(cfg.run_dir)
    status = RunStatus(run_dir)
    resume = None if in_sweep else PROCESS.resume
    try:
        validate_config(cfg)
    except ConfigError as error:
        return _report_failure(status, "failed", error, exit_code=None if in_sweep else 2)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    def start() -> None:
        status.write("running")
        PROCESS.created = None  # the folder holds a run now: it is never removed
        if resume is not None:
            record_resume(run_dir, resume.given, resume.changed)

    def end(outcome: str, error: str | None = None, **extra: Any) -> None:
        status.write(outcome, error=error, **extra)
        if resume is not None:
            record_resume_end(run_dir, outcome, error)

    try:
        with StopSignal() as stop:
            fit = build_and_fit(cfg, before_fit=start)
        metrics = fit.final_metrics
        end("finished", training_time_s=fit.training_time_s, final_metrics=metrics)
    except DivergenceError as error:
        end("diverged", one_line(error))
        return _report_failure(status, "diverged", error, exit_code=None if in_sweep else 3, recorded=True)
    except SIGTERMException:
        hint = f"stopped by {stop.received.name}; resume with {resume_command(run_dir, resume)}"
        end("interrupted", hint)
        if in_sweep:
            print(f"ufm-train: {hint}", file=sys.stderr)
            sys.exit(128 + stop.received)
        PROCESS.exit_code, PROCESS.last_line = 128 + stop.received, f"\rufm-train: {hint}"
        return {"status": "interrupted"}
    except (ConfigError, InstantiationException) as error:
        if status.written:
            end("failed", one_line(error))
        error = _instantiation_error(error, cfg)
        return _report_failure(status, "failed", error, None if in_sweep else 2, recorded=status.written)
    except OSError as error:
        return _filesystem_failure(error, status, end, in_sweep)
    except (KeyboardInterrupt, SystemExit):  # a Ctrl-C outside fit's batches: Lightning ends one with sys.exit(1)
        if status.written:
            end("interrupted", "stopped by SIGINT before the first batch or after the last")
        print("\rufm-train: interrupted (SIGINT)", file=sys.stderr)
        remove_new_run_folder()
        sys.exit(130)
    except Exception as error:
        if not in_sweep:
            end("failed", one_line(error))
            raise
        return _report_failure(status, "failed", error, exit_code=None)
    print(f"Run folder: {cfg.run_dir}")
    return metrics


def _report_failure(
    status: RunStatus, outcome: str, error: BaseException, exit_code: int | None, recorded: bool = False
) -> dict[str, Any]:
    """Print one line, record the outcome unless ``recorded`` already, and exit if asked. A single run's mistake
    found before training is recorded nowhere: its new run folder is removed (:func:`~ufm_torch.cli.process.refuse`).

    The line starts on a fresh line: a progress bar may have left the cursor mid-line.
    """
    if exit_code == 2 and not status.written:
        refuse(error)
    print(f"\rufm-train: error: {one_line(error)}", file=sys.stderr)
    if not recorded:
        status.write(outcome, error=one_line(error))
    if exit_code is not None:
        sys.exit(exit_code)
    return {"status": outcome}


def _filesystem_failure(error: OSError, status: RunStatus, end: Callable[..., None], in_sweep: bool) -> dict[str, Any]:
    """A file-system error (full disk, read-only or vanished folder): one line naming the path and the error;
    exit 2 when it came before training (``status.json`` could not say "running"), else ``status.json`` "failed"
    (if it can still be written) and exit :data:`~ufm_torch.cli.process.EX_IOERR`. No ``*.tmp`` file is left."""
    line = filesystem_error(error, status.path.parent)
    remove_temporary_files(status.path.parent)
    if status.written:
        try:
            end("failed", line)
        except OSError as second:
            line = f"{line}; status.json could not be updated either ({filesystem_error(second)})"
    elif not in_sweep:
        refuse(error)
    print(f"\rufm-train: error: {line}", file=sys.stderr)
    if in_sweep:
        return {"status": "failed"}
    sys.exit(EX_IOERR)


def _instantiation_error(error: BaseException, cfg: DictConfig) -> BaseException:
    """A ConfigError saying why Hydra could not build an object: its config key, its target and the reason; for an
    unknown keyword (``+trainer.max_step=10``) the key it came from and the closest key of that node."""
    if not isinstance(error, InstantiationException):
        return error
    text = str(error)
    target = re.search(r"target '([\w.]+)'", text)
    node = re.search(r"full_key: ([\w.]+)", text)
    cause = error.__cause__
    reason = f"{type(cause).__name__}: {cause}" if cause is not None else " ".join(text.split())
    unknown = re.search(r"unexpected keyword argument '(\w+)'", reason)
    if target and node and unknown:
        keys = OmegaConf.select(cfg, node[1])
        known = [key for key in keys if key != unknown[1]] if isinstance(keys, DictConfig) else []
        close = difflib.get_close_matches(unknown[1], known, n=1)
        hint = f"; did you mean {node[1]}.{close[0]}?" if close else ""
        return ConfigError(f"{node[1]}.{unknown[1]} is not an argument of {target[1]} ({reason}){hint}")
    where = f"{node[1]} ({target[1]})" if node and target else (target[1] if target else "an object of the config")
    return ConfigError(f"cannot build {where}: {reason}")


def main() -> None:
    """Console script: every config mistake (unknown group option or key, unparsable override, missing launcher or
    sweeper plugin, a sweep the sweeper cannot run, out-of-range value, a resume that would change the run, a run
    folder that cannot be written) ends with exit code 2 and one line on stderr, leaving no run folder behind; then
    Hydra runs the task. A resume runs the run's own command again (:mod:`ufm_torch.cli.resume`)."""
    quiet_library_warnings()
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    PROCESS.reset()
    lightning_logs_to_stderr()
    arguments = sys.argv[1:]
    try:
        check_group_choices(arguments, CONFIG_DIR)
        check_plugins(arguments)
        PROCESS.resume = plan_resume(arguments, CONFIG_DIR)
        if PROCESS.resume is not None:
            sys.argv = [sys.argv[0], *PROCESS.resume.arguments]
        train()
    except (ConfigError, HydraException) as error:
        remove_new_run_folder()
        print(f"ufm-train: error: {_composition_message(error)}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        refuse(error)
    except KeyboardInterrupt:
        print("\rufm-train: interrupted (SIGINT)", file=sys.stderr)
        sys.exit(130)
    if PROCESS.run_dir is not None:  # a single run, its report drawn: the whole command beside the training time
        with contextlib.suppress(OSError):
            update_status(PROCESS.run_dir, command_wall_time_s=time.perf_counter() - PROCESS.started)
    if PROCESS.exit_code is not None:
        print(PROCESS.last_line, file=sys.stderr)
        sys.exit(PROCESS.exit_code)


def _composition_message(error: Exception) -> str:
    """Hydra's message about a bad override on one line: its first line, the override, "no such key" if so, and
    the reason of an object Hydra could not build."""
    if isinstance(error, ConfigError | InstantiationException):
        return one_line(error)
    text = f"{error} {error.__cause__ or ''}"
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, OverrideParseException) and getattr(error, "override", None):
        first_line = f"cannot parse the override {error.override!r}: {first_line}"
    return f"{first_line} (no such key in the config)" if "not in struct" in text else first_line


if __name__ == "__main__":
    main()
