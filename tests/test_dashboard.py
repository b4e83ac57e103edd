"""The Custom Scalars link of a folder of many runs (``ufm_torch/run_folder/dashboard.py``): its run filter selects
every run the layout's charts read and no other, few enough for TensorBoard to select them by default."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import tensorboard

from tests.test_tensorboard_writing import layout_of, reload
from ufm_torch.metrics.tags import NC_TAGS, SNC_TAGS
from ufm_torch.run_folder.dashboard import (
    DASHBOARD_RUNS,
    MAX_RUNS_SELECTED_BY_DEFAULT,
    custom_scalars_url,
    dashboard_line,
    dashboard_runs,
    event_runs,
)
from ufm_torch.run_folder.names import measurement_run_name, replica_run_name
from ufm_torch.run_folder.tensorboard import add_scalar_rows, open_replica_writers

TAGS = [*NC_TAGS, *SNC_TAGS]
JOBS, SCALES, COPIES = 5, (1.0, 0.1, 0.01, 1e-3, 1e-4, 1e-5), 7


def write_runs(folder: Path, names: list[str]) -> None:
    """``names`` as replica runs (and their summary runs) under ``folder``, two evaluations of ``TAGS``."""
    writers = open_replica_writers(folder, names)
    for step in (0, 10):
        add_scalar_rows(writers, TAGS, [[0.5 / (step + 1)] * len(TAGS) for _ in names], step)
    for writer in writers:
        writer.close()


def chart_patterns(run: Path) -> list[str]:
    """Every tag or tag regex a chart of the run's Custom Scalars layout reads."""
    patterns = []
    for category in layout_of(reload(run)).category:
        for chart in category.chart:
            patterns += list(chart.multiline.tag)
            patterns += [tag for series in chart.margin.series for tag in (series.value, series.lower, series.upper)]
    return patterns


def test_the_limit_is_the_one_of_the_installed_tensorboard() -> None:
    bundle = Path(tensorboard.__file__).parent / "webfiles.zip"
    with zipfile.ZipFile(bundle) as files:
        script = files.read("index.js").decode()
    assert re.findall(r"maxNamesToEnableByDefault=(\d+)", script) == [str(MAX_RUNS_SELECTED_BY_DEFAULT)]


def test_a_sweep_of_200_runs_selects_the_runs_its_charts_read(tmp_path: Path) -> None:
    for job in range(JOBS):
        write_runs(
            tmp_path / str(job) / "tb", [replica_run_name(eps, copy) for eps in SCALES for copy in range(COPIES)]
        )
    runs, selected = event_runs(tmp_path), dashboard_runs(tmp_path)
    assert len(runs) == JOBS * len(SCALES) * (COPIES + 1) >= 200
    assert selected == sorted(f"{job}/tb/eps={eps:g}" for job in range(JOBS) for eps in SCALES)
    assert len(selected) <= MAX_RUNS_SELECTED_BY_DEFAULT
    patterns = chart_patterns(tmp_path / selected[0])
    tags = {run: reload(tmp_path / run).Tags()["scalars"] for run in runs}
    read = [run for run in runs if any(re.search(pattern, tag) for pattern in patterns for tag in tags[run])]
    assert read == selected, "the filter selects exactly the runs whose tags the charts read"
    line = dashboard_line(tmp_path)
    assert f"({len(selected)} of {len(runs)} runs)" in line and custom_scalars_url() in line and "Toggle" not in line


def test_a_backbone_selects_every_layer_and_split(tmp_path: Path) -> None:
    names = [measurement_run_name("backbone", layer, split, "head") for layer in ("head", "body.1", "body.3")
             for split in ("train", "heldout")]  # fmt: skip
    write_runs(tmp_path / "tb", names)
    assert dashboard_runs(tmp_path) == sorted(f"tb/{name}" for name in names)


def test_past_the_limit_the_line_says_what_to_do(tmp_path: Path) -> None:
    for job in range(8):
        write_runs(tmp_path / str(job) / "tb", [replica_run_name(eps, 0) for eps in SCALES])
    assert len(dashboard_runs(tmp_path)) == 48
    assert "press Toggle all runs or narrow the filter" in dashboard_line(tmp_path)
    assert re.search(DASHBOARD_RUNS, "0/tb/eps=1") and not re.search(DASHBOARD_RUNS, "0/tb/eps=1/rep=0")
