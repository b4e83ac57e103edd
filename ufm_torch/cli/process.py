"""What one ``ufm-train`` process does around its training: the checks before Hydra makes the run folder, Ctrl-C as
SIGTERM, file-system errors as one line, and the exit code.

Exit codes (single runs): 0 finished; 2 a mistake found before training (config, data, checkpoint, resume, a run
folder that cannot be written): one line, and a new run folder is removed again; 3 diverged; :data:`EX_IOERR` (74) a
file-system error during training (full disk, a folder turned read-only): one line naming the path and the error,
``status.json`` "failed", no ``*.tmp`` file left; 130 (SIGINT, Ctrl-C) and 143 (SIGTERM): ``last.ckpt``,
``status.json`` "interrupted", the report, and one line with the command that resumes.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

from ufm_torch.cli.resume import Resume, changed_in_config
from ufm_torch.cli.validation import validate_config
from ufm_torch.errors import ConfigError, DivergenceError
from ufm_torch.run_folder.layout import temporary_files

EX_IOERR = 74
"""Exit code of a file-system error during training (``sysexits.h``: an error while doing I/O on a file)."""


def process_start() -> float:
    """When this process began, on the ``time.perf_counter()`` clock: ``now − (uptime − starttime/CLK_TCK)`` from
    Linux's ``/proc/self/stat`` (field 22) and ``/proc/uptime``, to a clock tick (10 ms); now where these are
    missing."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.perf_counter() - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.perf_counter()


@dataclass
class ProcessState:
    """What ``main()``, the Hydra callback :class:`RunChecks` and the task of one process share.

    ``resume``: the resume the command line asks for; ``run_dir``: the single run's folder; ``created``: the
    outermost folder of its path that did not exist before Hydra made it (None when the run folder existed, and
    from the moment training starts: a folder that holds a run is never removed);
    ``exit_code`` and ``last_line``: how ``main()`` ends after Hydra has drawn the report of an interrupted run;
    ``started``: when the command began (on the ``time.perf_counter()`` clock), for the wall time of the whole
    command: the process's start for its first command (interpreter start-up and imports included), else the call of
    ``main()``.
    """

    started: float = field(default_factory=process_start)
    commands: int = 0
    resume: Resume | None = None
    run_dir: Path | None = None
    created: Path | None = None
    exit_code: int | None = None
    last_line: str | None = None

    def reset(self) -> None:
        """Begin a command: forget an earlier command of this process (``main()`` called again, as tests do)."""
        started = self.started if self.commands == 0 else time.perf_counter()
        self.__dict__.update(ProcessState(started=started, commands=self.commands + 1).__dict__)


PROCESS = ProcessState()


LIBRARY_WARNINGS = {
    "The 'train_dataloader' does not have many workers": (
        "our loaders hold tensors already in memory (a UFM's sample indices, digits, Gaussian mixtures); "
        "worker processes would only add start-up time"
    ),
    "`isinstance(treespec": (
        "`isinstance(treespec, LeafSpec)` is deprecated, raised inside Lightning 2.6's own _pytree.py by "
        "torch >= 2.13 at every batch; nothing of ours uses LeafSpec, and the fix is Lightning's"
    ),
}
"""Library warnings a default run would print, by the start of their message, with why they are silenced here."""


def quiet_library_warnings() -> None:
    """Ignore :data:`LIBRARY_WARNINGS` in this process and, through ``PYTHONWARNINGS``, in the processes it starts:
    DDP's spawned workers import Lightning afresh and would print them once each. There each prefix matches
    literally, and none may hold a comma, which separates filters."""
    for prefix in LIBRARY_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(prefix))
    filters = [f"ignore:{prefix}" for prefix in LIBRARY_WARNINGS]
    inherited = os.environ.get("PYTHONWARNINGS")
    os.environ["PYTHONWARNINGS"] = ",".join([inherited, *filters] if inherited else filters)


def lightning_logs_to_stderr() -> None:
    """Give Lightning's loggers the plain stderr handler they give themselves when imported before anything
    configures logging, and keep them out of Hydra's job log. Lightning is now imported after Hydra has configured
    logging (so that a rejected config does not load it); without this its lines would appear twice."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if not logger.handlers:
            logger.setLevel(logging.INFO)
            logger.addHandler(_StderrHandler())
            logger.propagate = False
        for handler in logger.handlers:
            if no_product_tips not in handler.filters:
                handler.addFilter(no_product_tips)


def no_product_tips(record: logging.LogRecord) -> bool:
    """Drop Lightning's "💡 Tip: … try installing litlogger / litmodels" lines: advertisements for cloud services that
    say nothing about the run and that Lightning offers no switch to turn off (lightning 2.6,
    ``logger_connector.py`` and ``callback_connector.py`` log them at every ``Trainer``)."""
    return not str(record.msg).startswith("💡 Tip:")


class _StderrHandler(logging.StreamHandler):
    """A stream handler on ``sys.stderr`` as it is when a record is written (tests replace it between runs)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def refuse(error: BaseException) -> NoReturn:
    """Print ``ufm-train: error: <one line>``, remove a run folder this process made, exit 2."""
    print(f"ufm-train: error: {one_line(error)}", file=sys.stderr)
    remove_new_run_folder()
    sys.exit(2)


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line: a config mistake as it is, a file-system error as
    :func:`filesystem_error`, anything else as ``Type: message``."""
    if isinstance(error, OSError):
        return filesystem_error(error)
    message = " ".join(str(error).split())
    return message if isinstance(error, ConfigError | DivergenceError) else f"{type(error).__name__}: {message}"


def filesystem_error(error: OSError, folder: Path | None = None) -> str:
    """``<path>: <what the system said> (<errno name>)``; the path is the file the error names, else ``folder``
    or the single run's folder (a write to an open file names none)."""
    path = error.filename or folder or PROCESS.run_dir or "the run folder"
    code = f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else ""
    reason = error.strerror or str(error) or type(error).__name__
    if error.filename2:
        path = f"{path} -> {error.filename2}"
    return f"{path}: {reason}{code}"


def check_run_folder(run_dir: Path) -> None:
    """:class:`ConfigError` when the run folder cannot be made and written: a file where it or a folder above it
    should be, or a folder this process may not write in (permissions, a read-only file system)."""
    existing = next(folder for folder in (run_dir, *run_dir.parents) if folder.exists())
    if not existing.is_dir():
        raise ConfigError(f"hydra.run.dir={run_dir} cannot be a folder: {existing} is a file (ENOTDIR)")
    if not os.access(existing, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(existing).f_flag & os.ST_RDONLY)
        reason = "Read-only file system (EROFS)" if read_only else "Permission denied (EACCES)"
        raise ConfigError(f"hydra.run.dir={run_dir} cannot be written: {existing}: {reason}")


def remove_new_run_folder() -> None:
    """Remove the single run's folder when this process made it, and the empty folders it made above it: a run
    refused before training leaves nothing behind. Folders that existed before, and a resumed run's, stay."""
    if PROCESS.created is None or PROCESS.run_dir is None:
        return
    shutil.rmtree(PROCESS.run_dir, ignore_errors=True)
    folder = PROCESS.run_dir.parent
    while PROCESS.created in (folder, *folder.parents):
        try:
            folder.rmdir()
        except OSError:
            break
        folder = folder.parent
    PROCESS.created = None


def remove_temporary_files(run_dir: Path) -> None:
    """Remove the ``*.tmp`` files a replacement cut short by an error left in ``run_dir``."""
    for path in temporary_files(run_dir):
        path.unlink(missing_ok=True)


def resume_command(run_dir: Path, resume: Resume | None) -> str:
    """The command that resumes the run in ``run_dir``: its folder, ``ckpt_path=last`` and the changes this resume
    made (a longer ``trainer.max_steps``…); the run's own overrides are read from its folder."""
    changes = [] if resume is None else [argument for argument in resume.given if _key(argument) in resume.changed]
    return shlex.join(["ufm-train", f"hydra.run.dir={run_dir}", "ckpt_path=last", *changes])


def _key(argument: str) -> str:
    """The key of an override argument (``+``/``~`` dropped)."""
    return argument.partition("=")[0].lstrip("+~")


class RunChecks(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): at ``on_run_start`` of a single run, before Hydra makes the
    run folder or writes ``.hydra/``, check the folder's path (:func:`check_run_folder`), a resume's composed config
    against the run's own (:func:`ufm_torch.cli.resume.changed_in_config`) and the config
    (:func:`ufm_torch.cli.validation.validate_config`, its warnings left to the task's own check). A mistake ends the
    process with one line and exit 2, leaving nothing behind. A multirun checks each job in its task instead, where
    the sweep records the failure and goes on.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check before the run folder exists."""
        try:
            run_dir = Path(str(config.hydra.run.dir)).absolute()
            PROCESS.run_dir = run_dir
            check_run_folder(run_dir)
            PROCESS.created = next(
                (folder for folder in (*reversed(run_dir.parents), run_dir) if not folder.exists()), None
            )
            if PROCESS.resume is not None:
                changed = changed_in_config(PROCESS.resume.run_dir, config)
                if changed:
                    raise ConfigError(
                        f"the package's configs changed since the run in {PROCESS.resume.run_dir} began: "
                        f"{', '.join(changed)} differ from its .hydra/config.yaml; a resume would not continue the "
                        "same run; start a new run"
                    )
            _validate_as_run_job_will(config, run_dir)
        except ConfigError as error:
            refuse(error)


def _validate_as_run_job_will(config: DictConfig, run_dir: Path) -> None:
    """:func:`validate_config` on a copy of the task's config, with ``hydra.runtime.output_dir`` set as Hydra's
    ``run_job`` will set it (``run_dir`` interpolates it); warnings are left to the task's own check."""
    full = copy.deepcopy(config)
    with read_write(full.hydra.runtime), open_dict(full.hydra.runtime):
        full.hydra.runtime.output_dir = str(run_dir)
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    hydra_config.set_config(full)
    try:
        task = copy.deepcopy(full)
        with read_write(task), open_dict(task):
            del task["hydra"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            validate_config(task)
    except ConfigError:
        raise
    except Exception:  # anything else the task's own check reports, in the run folder's record
        pass
    finally:
        hydra_config.cfg = previous


class StopSignal:
    """Ctrl-C during training stops a run as SIGTERM does: at the end of the batch (a consistent state),
    ``last.ckpt`` written. The SIGINT handler sends SIGTERM to the process while Lightning's SIGTERM handler is in
    place (during ``fit``) and remembers that the stop was a SIGINT; before and after ``fit`` Ctrl-C raises
    ``KeyboardInterrupt`` as usual. ``received`` is the signal that stopped training."""

    SIGTERM_LOGGER = "lightning.pytorch.trainer.connectors.signal_connector"
    """Lightning's logger of "Received SIGTERM", a line left out when the signal was a Ctrl-C."""

    def __init__(self) -> None:
        self.received = signal.SIGTERM
        self._previous: Any = None

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            logging.getLogger(self.SIGTERM_LOGGER).addFilter(self._not_for_sigint)
        return self

    def __exit__(self, *exception: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            logging.getLogger(self.SIGTERM_LOGGER).removeFilter(self._not_for_sigint)

    def _not_for_sigint(self, record: logging.LogRecord) -> bool:
        return not (self.received == signal.SIGINT and "SIGTERM" in record.getMessage())

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt
        self.received = signal.SIGINT
        signal.raise_signal(signal.SIGTERM)
