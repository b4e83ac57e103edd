"""Hydra callback that draws the reports after training: each job's when it ends, the sweep's when a multirun ends."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ufm_torch.run_folder.dashboard import dashboard_line

if TYPE_CHECKING:
    from ufm_torch.analysis.report import Report


class RunReport(Callback):
    """At ``on_job_end`` (every job, single run or multirun, unless a multirun's ``report.lazy``)
    :func:`ufm_torch.analysis.report.write_run_report` on the job's folder; at ``on_multirun_end``
    :func:`ufm_torch.analysis.report.write_sweep_report` on ``hydra.sweep.dir``. ``ufm-plot PATH`` writes the same
    files later (and, for a lazy sweep, the ones it left).

    A single run and a sweep then print :func:`~ufm_torch.run_folder.dashboard.dashboard_line`: how to open
    TensorBoard on the folder, with the Custom Scalars link that selects the runs its charts read.

    A job that ended with an exception or an exit code (a config mistake) gets no report. A report that fails
    prints one warning line and leaves the run's outcome as it was. The report's modules (matplotlib, torch) are
    imported when a report is drawn, not when Hydra builds its callbacks, so a rejected config does not load them.
    """

    def __init__(self, tensorboard: bool = True) -> None:
        self.tensorboard = tensorboard

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Draw the job's report when its task returned (in a multirun not when ``report.lazy``: ``ufm-plot`` on the
        sweep folder draws it)."""
        lazy = config.hydra.mode == RunMode.MULTIRUN and OmegaConf.select(config, "report.lazy", default=False)
        if job_return.status == JobStatus.COMPLETED and not lazy:
            from ufm_torch.analysis.report import write_run_report

            folder = Path(config.hydra.runtime.output_dir)
            report = self._draw(lambda: write_run_report(folder, self.tensorboard))
            if report is not None and self.tensorboard and config.hydra.mode != RunMode.MULTIRUN:
                print(dashboard_line(folder))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Draw the sweep's report (``report.lazy``: without the per-key sweep figures) and print where it is."""
        from ufm_torch.analysis.report import write_sweep_report

        folder = Path(config.hydra.sweep.dir)
        lazy = bool(OmegaConf.select(config, "report.lazy", default=False))
        report = self._draw(lambda: write_sweep_report(folder, self.tensorboard, lazy=lazy))
        if report is not None:
            print(report.describe())
            if lazy:
                print(f"Each job's figures and the per-key sweep figures: ufm-plot {folder}")
            if self.tensorboard:
                print(dashboard_line(Path(config.hydra.sweep.dir)))

    @staticmethod
    def _draw(write: Callable[[], Report]) -> Report | None:
        """Run ``write``, print its tables; one warning line instead of a traceback if it fails."""
        try:
            report = write()
        except Exception as error:
            print(f"ufm-train: warning: the report was not drawn ({type(error).__name__}: {error})", file=sys.stderr)
            return None
        for table in report.tables:
            print(table)
        return report
