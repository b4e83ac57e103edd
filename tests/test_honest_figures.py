"""Honest figures (issue 22, item 8): errors on log axes with zeros marked at the floor, one y-scale per metric family
across the panels of a figure, categories drawn as points, legends outside the data, no panel without values, a line
style per loss, and a collapse figure with one line per ε and a title that says what it shows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ufm_torch.analysis import report
from ufm_torch.analysis.comparison import ONSET_GID, collapse_figure
from ufm_torch.analysis.figure_style import ZEROS_GID, value_scale
from ufm_torch.analysis.report import write_run_report
from ufm_torch.analysis.sweep_figures import draw_sweep_figures, final_metrics_figure, trajectories_figure
from ufm_torch.analysis.sweep_table import summary_table
from ufm_torch.run_folder.jobs import Job

NC1, NC3, NC4, UNDEFINED = "collapse/nc1", "collapse/nc3", "collapse/nc4", "collapse/undefined"
SNC1, SNC2, LOSS_GAP = "strong_collapse/snc1", "strong_collapse/snc2", "optimum/loss_gap"
ACCURACY = "train/accuracy"
METRICS = [NC1, NC3, NC4, UNDEFINED, SNC1, ACCURACY]


def record(step: int, replica: int, init_scale: float | None = 0.1, copy: int = 0, **metrics: Any) -> dict[str, Any]:
    """One ``metrics.jsonl`` record; metric keywords use ``__`` for ``/`` (``collapse__nc1``)."""
    return {"step": step, "replica": replica, "init_scale": init_scale, "copy": copy, "seed": replica} | {
        key.replace("__", "/"): value for key, value in metrics.items()
    }


def job(name: str, overrides: dict[str, str], records: list[dict[str, Any]], loss: str | None = None) -> Job:
    """A finished job as read from disk, without the disk."""
    config = {"module": {"loss": loss}, "trainer": {"max_steps": 100}}
    return Job(name, Path(name), overrides, config, {"status": "finished", "error": None}, records)


def two_steps(replica: int, final: dict[str, Any], **start: Any) -> list[dict[str, Any]]:
    """Records at steps 0 and 100 of one replica: every metric at 1 (or ``start``), then ``final``."""
    first = {key: 1.0 for key in final} | start
    return [record(0, replica, **first), record(100, replica, **final)]


@pytest.fixture(scope="module")
def optimizer_sweep() -> list[Job]:
    """Two optimizers (a category), two replicas each: NC1 at round-off and exactly 0, NC3 within 3% everywhere,
    NC4 = 0 at the end, a metric no record defines, and SNC1 defined for one optimizer only."""
    finals = {
        "sgd": [dict(collapse__nc1=1e-32, collapse__nc3=0.100, collapse__nc4=0.0, strong_collapse__snc1=1e-3),
                dict(collapse__nc1=0.0, collapse__nc3=0.101, collapse__nc4=0.0, strong_collapse__snc1=2e-3)],
        "adam": [dict(collapse__nc1=1e-3, collapse__nc3=0.103, collapse__nc4=0.0, strong_collapse__snc1=None),
                 dict(collapse__nc1=2e-3, collapse__nc3=0.102, collapse__nc4=0.5, strong_collapse__snc1=None)],
    }  # fmt: skip
    jobs = []
    for index, (optimizer, replicas) in enumerate(finals.items()):
        records = [
            item
            for replica, final in enumerate(replicas)
            for item in two_steps(replica, final | {"collapse__undefined": None, "train__accuracy": 1.0},
                                  collapse__nc4=0.5, train__accuracy=0.5, collapse__undefined=None)
        ]  # fmt: skip
        jobs.append(job(str(index), {"optimizer": optimizer}, records))
    return jobs


@pytest.fixture(scope="module")
def optimizer_figures(optimizer_sweep: list[Job]) -> dict[str, Figure]:
    table = summary_table(optimizer_sweep)
    return {
        "final": final_metrics_figure(table, "optimizer", METRICS, "Last step vs optimizer"),
        "trajectories": trajectories_figure(optimizer_sweep, "optimizer", METRICS),
    }


def panels(figure: Figure) -> dict[str, Any]:
    """The visible panels of ``figure`` by title."""
    return {axes.get_title(): axes for axes in figure.axes if axes.get_visible()}


def data_lines(axes: Any) -> list[Any]:
    """The lines of measured values (not zero markers, not the onset of 100% accuracy)."""
    return [line for line in axes.lines if line.get_gid() not in (ZEROS_GID, ONSET_GID)]


def zero_markers(axes: Any) -> list[Any]:
    return [line for line in axes.lines if line.get_gid() == ZEROS_GID]


@pytest.mark.parametrize("name", ["final", "trajectories"])
def test_collapse_metrics_with_zeros_stay_on_log_axes_with_zeros_marked_at_the_floor(
    optimizer_figures: dict[str, Figure], name: str
) -> None:
    figure = optimizer_figures[name]
    for title in ("nc1", "nc4"):
        axes = panels(figure)[title]
        assert axes.get_yscale() == "log"
        floor = axes.get_ylim()[0]
        markers = zero_markers(axes)
        assert markers and all(np.all(line.get_ydata() == floor) for line in markers)
        assert not any(np.any(np.asarray(line.get_ydata(), dtype=float) <= 0) for line in data_lines(axes))
    assert panels(figure)["nc1"].get_ylim()[0] < 1e-32  # round-off is drawn as the tiny value it is, above the floor
    (legend,) = figure.legends
    assert any("axis floor" in text.get_text() for text in legend.get_texts())


@pytest.mark.parametrize("name", ["final", "trajectories"])
def test_the_panels_of_a_metric_family_share_one_y_scale(optimizer_figures: dict[str, Figure], name: str) -> None:
    drawn = panels(optimizer_figures[name])
    assert drawn["nc1"].get_ylim() == drawn["nc3"].get_ylim() == drawn["nc4"].get_ylim()
    accuracy = drawn["train/accuracy"]
    assert accuracy.get_yscale() == "linear" and accuracy.get_ylim() == pytest.approx((-0.02, 1.02))


def test_a_few_percent_never_fills_a_log_panel() -> None:
    scale = value_scale("collapse", [0.100, 0.103])
    assert scale.log and math.log10(scale.limits[1] / scale.limits[0]) >= 1.0


def test_categorical_x_values_are_points_without_connecting_lines(optimizer_figures: dict[str, Figure]) -> None:
    for axes in panels(optimizer_figures["final"]).values():
        lines = data_lines(axes)
        assert lines and all(line.get_linestyle() == "None" and line.get_marker() not in ("", "None") for line in lines)


def test_categories_are_dodged_only_among_the_series_they_hold() -> None:
    sides = (("backbone", "mean_squared"), ("ufm", "sum_squared"), ("both", "mean_squared"), ("both", "sum_squared"))
    jobs = [job(str(i), {"side": side}, two_steps(0, {"collapse__nc1": 0.1}), loss) for i, (side, loss) in
            enumerate(sides)]  # fmt: skip
    losses = {item.name: item.config["module"]["loss"] for item in jobs}
    axes = final_metrics_figure(summary_table(jobs), "side", [NC1], "t", losses).axes[0]
    xs = [float(x) for line in data_lines(axes) for x in line.get_xdata()]
    ticks = {label.get_text(): tick for label, tick in zip(axes.get_xticklabels(), axes.get_xticks(), strict=True)}
    assert ticks["backbone"] in xs and ticks["ufm"] in xs  # alone at their category: on the tick
    assert ticks["both"] not in xs and any(abs(x - ticks["both"]) < 0.5 for x in xs)


def test_numeric_x_values_join_their_medians() -> None:
    jobs = [job(str(i), {"optimizer.lr": lr}, two_steps(0, {"collapse__nc1": 0.1 * (i + 1)})) for i, lr in
            enumerate(("0.01", "0.1", "1.0"))]  # fmt: skip
    figure = final_metrics_figure(summary_table(jobs), "optimizer.lr", [NC1], "t")
    assert any(line.get_linestyle() == "-" and len(line.get_xdata()) == 3 for line in data_lines(figure.axes[0]))


def overlaps(first: Any, second: Any) -> bool:
    """Whether two display boxes share an area (touching edges do not count)."""
    return first.x0 < second.x1 and second.x0 < first.x1 and first.y0 < second.y1 and second.y0 < first.y1


def assert_legends_outside_the_data(figure: Figure) -> None:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    renderer = canvas.get_renderer()
    assert not any(axes.get_legend() for axes in figure.axes), "a legend inside a panel"
    assert figure.legends
    for legend in figure.legends:
        box = legend.get_window_extent(renderer)
        for axes in figure.axes:
            if axes.get_visible():
                assert not overlaps(box, axes.get_window_extent(renderer)), axes.get_title()
                assert not overlaps(box, axes.title.get_window_extent(renderer)), axes.get_title()
        assert not overlaps(box, figure._suptitle.get_window_extent(renderer))


@pytest.mark.parametrize("name", ["final", "trajectories"])
def test_sweep_legends_stay_outside_the_panels_and_titles(optimizer_figures: dict[str, Figure], name: str) -> None:
    assert_legends_outside_the_data(optimizer_figures[name])


def test_a_metric_without_values_gets_no_panel(optimizer_figures: dict[str, Figure]) -> None:
    final, trajectories = panels(optimizer_figures["final"]), panels(optimizer_figures["trajectories"])
    assert "undefined" not in final and "undefined" not in trajectories
    assert "snc1" not in final  # defined for one optimizer only: no dependence on it to show
    assert "snc1" in trajectories  # its trajectories exist
    title = " ".join(optimizer_figures["final"].get_suptitle().split())
    assert "snc1" in title and "undefined" in title


def test_a_sweep_with_one_finished_value_still_draws_what_it_has(optimizer_sweep: list[Job]) -> None:
    finished = optimizer_sweep[:1] + [
        Job(job.name, job.path, job.overrides, job.config, {"status": "failed", "error": "x"}, [])
        for job in optimizer_sweep[1:]
    ]  # fmt: skip
    drawn = panels(final_metrics_figure(summary_table(finished), "optimizer", METRICS, "t"))
    assert {"nc1", "nc3", "nc4", "snc1", "train/accuracy"} == set(drawn)


def test_a_sweep_figure_without_panels_is_not_written(optimizer_sweep: list[Job], tmp_path: Path) -> None:
    stale = tmp_path / "final_strong_collapse_vs_optimizer.png"
    stale.write_bytes(b"left by an earlier report")
    table = summary_table(optimizer_sweep)
    assert final_metrics_figure(table, "optimizer", [SNC1, UNDEFINED], "t") is None
    written = {path.name for path in draw_sweep_figures(optimizer_sweep, table, tmp_path)}
    assert written == {"final_vs_optimizer.png", "trajectories_by_optimizer.png"}
    assert not stale.exists()
    assert {path.name for path in tmp_path.iterdir()} == written


@pytest.fixture(scope="module")
def loss_sweep() -> list[Job]:
    """λ (numeric) × loss: NC1 ends at 0.5 for cross-entropy and 0.25 for the mean squared error."""
    jobs = []
    for index, (loss, decay) in enumerate((loss, decay) for loss in ("cross_entropy", "mean_squared")
                                          for decay in ("0.01", "0.1")):  # fmt: skip
        final = {"collapse__nc1": 0.5 if loss == "cross_entropy" else 0.25}
        jobs.append(job(str(index), {"module.loss": loss, "decay": decay}, two_steps(0, final), loss=loss))
    return jobs


def test_each_loss_has_its_own_line_style_in_trajectories(loss_sweep: list[Job]) -> None:
    figure = trajectories_figure(loss_sweep, "decay", [NC1])
    styles = {line.get_ydata()[-1]: line.get_linestyle() for line in data_lines(panels(figure)["nc1"])}
    assert styles == {0.5: "-", 0.25: "--"}
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "loss: cross_entropy" in labels and "loss: mean_squared" in labels


def test_each_loss_has_its_own_line_style_in_final_values(loss_sweep: list[Job]) -> None:
    losses = {job.name: job.config["module"]["loss"] for job in loss_sweep}
    figure = final_metrics_figure(summary_table(loss_sweep), "decay", [NC1], "t", losses)
    medians = [line for line in data_lines(figure.axes[0]) if line.get_linestyle() != "None"]
    assert {line.get_ydata()[0]: (line.get_linestyle(), line.get_marker()) for line in medians} == {
        0.5: ("-", "o"), 0.25: ("--", "s"),
    }  # fmt: skip


def paper_records(scales: tuple[float, ...] = (1.0, 1e-2, 1e-4), copies: int = 2) -> list[dict[str, Any]]:
    """A paper-like run: every ε with ``copies`` replicas, errors falling as ε·(copy + 1)/(step + 1), NC4 = 0 and
    100% accuracy from step 10."""
    records = []
    for step in (0, 1, 10, 100):
        for replica, (scale, copy) in enumerate((scale, copy) for scale in scales for copy in range(copies)):
            value = scale * (1 + copy) / (step + 1)
            records.append(record(
                step, replica, scale, copy, collapse__nc1=value, collapse__nc3=value, strong_collapse__snc1=value,
                collapse__nc4=0.0 if step >= 10 else 0.5, train__accuracy=1.0 if step >= 10 else 0.5,
            ))  # fmt: skip
    return records


def test_collapse_figure_draws_one_line_per_init_scale_with_a_descriptive_title() -> None:
    figure = collapse_figure({"15-09-19": paper_records()}, {"15-09-19": 100}, "$C = 3$, $N = 3$, $p = 15$")
    drawn = panels(figure)
    assert {"nc1", "nc3", "nc4", "snc1", "train/accuracy"} <= set(drawn)
    for title in ("nc1", "nc3", "snc1", "train/accuracy"):
        lines = data_lines(drawn[title])
        assert len(lines) == 3 and len({tuple(line.get_color()) for line in lines}) == 3, title
    title = " ".join(figure.get_suptitle().split())
    assert "NC1–NC4" in title and "SNC1–SNC3" in title and "against the fraction of training" in title
    assert "median over the 2 replicas of each ε" in title and "$C = 3$" in title
    assert "15-09-19" not in title
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert [label for label in labels if label.startswith("$\\varepsilon")] == [
        "$\\varepsilon = 10^{0}$", "$\\varepsilon = 10^{-2}$", "$\\varepsilon = 10^{-4}$",
    ]  # fmt: skip


def test_collapse_figure_rows_share_their_scale_mark_zeros_and_keep_legends_outside() -> None:
    figure = collapse_figure({"run": paper_records()}, {"run": 100}, "t")
    drawn = panels(figure)
    assert drawn["nc1"].get_ylim() == drawn["nc3"].get_ylim() == drawn["nc4"].get_ylim()
    assert drawn["nc4"].get_yscale() == "log"
    markers = zero_markers(drawn["nc4"])
    assert markers and all(np.all(line.get_ydata() == drawn["nc4"].get_ylim()[0]) for line in markers)
    assert_legends_outside_the_data(figure)


def test_collapse_figure_leaves_out_metrics_and_rows_without_values() -> None:
    records = [item | {SNC1: None, SNC2: None, LOSS_GAP: None, NC3: None} for item in paper_records()]
    drawn = panels(collapse_figure({"run": records}, {"run": 100}, "t"))
    assert "nc3" not in drawn and not {"snc1", "snc2", "loss_gap"} & set(drawn)
    assert "Strong neural collapse" not in {axes.get_ylabel() for axes in drawn.values()}


def test_a_comparison_draws_each_loss_in_its_own_line_style() -> None:
    backbone = [record(step, 0, None, collapse__nc1=1.0 / (step + 1), train__accuracy=1.0) for step in (0, 10, 100)]
    ufm = [record(step, 0, 0.1, collapse__nc1=0.1 / (step + 1), train__accuracy=1.0) for step in (0, 10, 100)]
    figure = collapse_figure(
        {"backbone": backbone, "ufm": ufm}, {"backbone": 100, "ufm": 100}, "t",
        {"backbone": "mean_squared", "ufm": "sum_squared"},
    )  # fmt: skip
    lines = data_lines(panels(figure)["nc1"])
    assert {line.get_ydata()[-1]: line.get_linestyle() for line in lines} == {1.0 / 101: "-", 0.1 / 101: "--"}
    assert len({tuple(line.get_color()) for line in lines}) == 2
    title = " ".join(figure.get_suptitle().split())
    assert "Backbone" in title and "Unconstrained features model" in title
    assert_legends_outside_the_data(figure)  # a long title is wrapped clear of the legend


def test_a_report_draws_the_main_records_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "2026-12-05" / "15-09-19"
    (run / ".hydra").mkdir(parents=True)
    config = {"trainer": {"max_steps": 100}, "data": {"num_classes": 3, "samples_per_class": 3},
              "model": {"feature_dim": 15, "init_scale": [1.0, 0.01, 0.0001], "replicas": 2},
              "optimizer": {"lr": 0.05}, "report": {"print_summary": False, "dpi": 30}}  # fmt: skip
    (run / ".hydra" / "config.yaml").write_text(json.dumps(config))
    (run / "status.json").write_text(json.dumps({"status": "finished", "error": None}))
    main = [item | {"layer": "network.head", "split": "train"} for item in paper_records()]
    others = [item | {"layer": "body.0", "split": "train", NC1: 123.0} for item in paper_records()]
    heldout = [item | {"layer": "network.head", "split": "heldout", NC1: 456.0} for item in paper_records()]
    (run / "metrics.jsonl").write_text("".join(json.dumps(item) + "\n" for item in main + others + heldout))
    drawn: list[Figure] = []

    def capture(*args: Any, **kwargs: Any) -> Figure:
        drawn.append(collapse_figure(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(report, "collapse_figure", capture)
    result = write_run_report(run, tensorboard=False)
    assert run / "figures" / "collapse.png" in result.written
    (figure,) = drawn
    values = np.concatenate([line.get_ydata() for line in data_lines(panels(figure)["nc1"])])
    assert np.nanmax(values) <= 2.0 and len(data_lines(panels(figure)["nc1"])) == 3
    assert "15-09-19" not in figure.get_suptitle()
