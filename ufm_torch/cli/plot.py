"""``ufm-plot PATH``: redraw the report of a run, sweep or comparison folder from its saved files (no retraining).

Writes what the automatic path writes (:mod:`ufm_torch.analysis.report`): for a run folder its figures (and with
``report.paper_figures`` the paper's figures and ``summary.csv``); for a sweep folder every job's report, then
``sweep_summary.csv``, the sweep figures, TensorBoard HPARAMS in ``hparams/`` and, for a comparison,
``figures/compare.png``. Running it on a finished folder reproduces the summary byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ufm_torch.analysis.report import write_report
from ufm_torch.run_folder.jobs import find_job_dirs


def main(argv: list[str] | None = None) -> None:
    """Console script ``ufm-plot PATH [--no-tensorboard]``; exit 2 with one line when PATH holds no run."""
    parser = argparse.ArgumentParser(prog="ufm-plot", description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="a run folder, a sweep folder (outputs/multiruns/…) or a comparison")
    parser.add_argument("--no-tensorboard", action="store_true", help="write no TensorBoard images or HPARAMS")
    arguments = parser.parse_args(argv)
    path: Path = arguments.path
    if not path.is_dir() or not find_job_dirs(path):
        print(f"ufm-plot: error: {path} holds no run folder (a folder with .hydra/config.yaml)", file=sys.stderr)
        sys.exit(2)
    report = write_report(path, tensorboard=not arguments.no_tensorboard)
    for table in report.tables:
        print(table)
    print(report.describe())


if __name__ == "__main__":
    main()
