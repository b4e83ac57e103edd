"""The link that opens a run or sweep folder's Custom Scalars with the runs its charts read already selected.

TensorBoard's run selector enables runs by default only while at most
:data:`MAX_RUNS_SELECTED_BY_DEFAULT` of them match its filter (``maxNamesToEnableByDefault`` of its multi-checkbox;
``tests/test_dashboard.py`` reads it from the installed TensorBoard). A sweep has far more runs: one per replica, per
layer and split. With none selected every Custom Scalars chart is empty ("Matches (0)"). The charts read only the
summary runs of the replica groups (``eps=<ε>``: median and band over replicas) and, for a backbone, its layer and
split runs, so the link sets the selector's filter (``regexInput`` in the URL) to :data:`DASHBOARD_RUNS` and they
alone are selected.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import quote

from ufm_torch.hyperparameters import HYPERPARAMETERS, INIT_SCALE_LABEL

MAX_RUNS_SELECTED_BY_DEFAULT = 40
"""TensorBoard selects the runs matching its filter by default only when there are at most this many."""

GROUP_LABELS = "|".join([INIT_SCALE_LABEL, *(parameter.label for parameter in HYPERPARAMETERS.values())])
DASHBOARD_RUNS = rf"((?:{GROUP_LABELS})=[^/]+|backbone(/[^/]+)*)$"
"""The runs the Custom Scalars layout reads: a UFM's summary runs, whose names end in a group's value (``eps=<ε>``,
``lam_W=0.01/lam_H=0.02``; not ``…/rep=<copy>``), and a backbone's ``backbone``, ``backbone/layer=<name>`` and
``backbone/heldout`` runs (:mod:`ufm_torch.run_folder.names`)."""


def event_runs(folder: Path) -> list[str]:
    """The TensorBoard runs under ``folder``: each folder holding an event file, relative to ``folder``."""
    folder = Path(folder)
    runs = {path.parent.relative_to(folder).as_posix() for path in folder.rglob("events.out.tfevents.*")}
    return sorted(runs)


def dashboard_runs(folder: Path) -> list[str]:
    """The runs of ``folder`` that :data:`DASHBOARD_RUNS` selects."""
    pattern = re.compile(DASHBOARD_RUNS)
    return [run for run in event_runs(folder) if pattern.search(run)]


def custom_scalars_url(port: int = 6006, host: str = "localhost") -> str:
    """``http://<host>:<port>/#custom_scalars&regexInput=<DASHBOARD_RUNS>``: Custom Scalars with the run filter
    set."""
    return f"http://{host}:{port}/#custom_scalars&regexInput={quote(DASHBOARD_RUNS, safe='')}"


def dashboard_line(folder: Path, port: int = 6006) -> str:
    """One line for the terminal: how to start TensorBoard on ``folder`` and the Custom Scalars link, with how many
    runs it selects and, past :data:`MAX_RUNS_SELECTED_BY_DEFAULT`, what to do."""
    selected, total = len(dashboard_runs(folder)), len(event_runs(folder))
    line = f"TensorBoard: tensorboard --logdir {folder}; Custom Scalars ({selected} of {total} runs): "
    line += custom_scalars_url(port)
    if selected > MAX_RUNS_SELECTED_BY_DEFAULT:
        line += (
            f" (over {MAX_RUNS_SELECTED_BY_DEFAULT} runs match: TensorBoard leaves them unselected; press Toggle all "
            "runs or narrow the filter, e.g. to one job: ^0/)"
        )
    return line


def main() -> None:
    """``python -m ufm_torch.run_folder.dashboard FOLDER [PORT]``: print :func:`dashboard_line` (``make
    tensorboard`` does, before it starts TensorBoard)."""
    folder = Path(sys.argv[1])
    print(dashboard_line(folder, int(sys.argv[2]) if len(sys.argv) > 2 else 6006))


if __name__ == "__main__":
    main()
