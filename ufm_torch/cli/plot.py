"""``ufm-plot PATH``: summarise a sweep or run folder from its saved files (no retraining).

Writes ``PATH/sweep_summary.csv`` (one row per job and replica: swept values, status, wall time, final metrics,
error line), figures in ``PATH/figures/`` and TensorBoard HPARAMS sessions in ``PATH/hparams/``. The Hydra
callback :class:`ufm_torch.cli.report_hook.SweepAggregator` calls :func:`aggregate` at the end of every
multirun, so running ``ufm-plot`` on a finished sweep reproduces its summary byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ufm_torch.run_folder.jobs import SUMMARY_FILE, find_job_dirs, format_summary_csv, read_jobs, summary_table

HPARAMS_DIR = "hparams"
FIGURES_DIR = "figures"


@dataclass(frozen=True)
class Aggregate:
    """What :func:`aggregate` wrote and the count of jobs per status."""

    summary: Path
    figures: list[Path]
    hparams: Path
    statuses: dict[str, int]
    rows: int

    def describe(self) -> str:
        """One line: where the summary is and how the jobs ended."""
        outcome = ", ".join(f"{count} {status}" for status, count in sorted(self.statuses.items()))
        return f"Sweep summary: {self.summary} ({self.rows} rows; jobs: {outcome})"


def aggregate(root: Path, tensorboard: bool = True) -> Aggregate:
    """Summary CSV, figures and (if ``tensorboard``) HPARAMS sessions of every job under ``root``."""
    from ufm_torch.analysis.sweep_figures import draw_sweep_figures, write_sweep_hparams

    root = Path(root)
    jobs = read_jobs(root)
    table = summary_table(jobs)
    summary = root / SUMMARY_FILE
    summary.write_text(format_summary_csv(table))
    figures = draw_sweep_figures(jobs, table, root / FIGURES_DIR)
    if tensorboard:
        write_sweep_hparams(table, root / HPARAMS_DIR)
    statuses = Counter(str(job.status.get("status")) for job in jobs)
    return Aggregate(summary, figures, root / HPARAMS_DIR, dict(statuses), len(table.rows))


def main(argv: list[str] | None = None) -> None:
    """Console script ``ufm-plot PATH [--no-tensorboard]``; exit 2 with one line when PATH holds no run."""
    parser = argparse.ArgumentParser(prog="ufm-plot", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a sweep folder (outputs/multiruns/…) or a run folder")
    parser.add_argument("--no-tensorboard", action="store_true", help="skip the HPARAMS sessions")
    arguments = parser.parse_args(argv)
    path: Path = arguments.path
    if not path.is_dir() or not find_job_dirs(path):
        print(f"ufm-plot: error: {path} holds no run folder (a folder with .hydra/config.yaml)", file=sys.stderr)
        sys.exit(2)
    result = aggregate(path, tensorboard=not arguments.no_tensorboard)
    print(result.describe())
    print(f"Figures: {path / FIGURES_DIR}" + ("" if arguments.no_tensorboard else f"; HPARAMS: {result.hparams}"))


if __name__ == "__main__":
    main()
