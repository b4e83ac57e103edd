"""The paper experiment: per-ε summary, figures from metric records, and a reduced `ufm-train experiment=paper`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO, ufm_train_in_process
from ufm_torch.analysis.paper_figures import (
    DIST_S,
    SNC1,
    SNC2,
    SNC3,
    RunSetup,
    figure1,
    figure2,
    replica_histories,
    save_figure,
    scale_label,
    scaling_figure,
    snc3_theory_curves,
)
from ufm_torch.analysis.records import final_records
from ufm_torch.analysis.summary import (
    format_summary,
    loglog_fit,
    loglog_slope,
    read_summary_csv,
    summarize,
    write_summary,
    write_summary_csv,
)

SCALES = (1.0, 1e-2, 1e-4)
EXPONENTS = {SNC1: 2.0, SNC2: 1.0, SNC3: 1.0, DIST_S: 1.0, "collapse/nc1": 6.0}
SETUP = RunSetup(num_classes=3, samples_per_class=3, feature_dim=15, lr=0.05)


def power_law_records(scales=SCALES, copies: int = 3, steps=(0, 1, 10, 100)) -> list[dict]:
    """Records whose final value of each metric is exactly ``(copy + 1) · ε^exponent``; earlier steps larger."""
    records = []
    for replica, (scale, copy) in enumerate((s, c) for s in scales for c in range(copies)):
        for step in steps:
            decay = 1.0 + 10.0 * (steps[-1] - step)
            record = {"step": step, "replica": replica, "init_scale": scale, "copy": copy, "seed": 100 + copy}
            record |= {name: (copy + 1) * scale**power * decay for name, power in EXPONENTS.items()}
            record["collapse/nc4"] = 0.0
            records.append(record)
    return records


def test_loglog_slope_of_an_exact_power_law_is_its_exponent() -> None:
    scales = np.array([1.0, 0.1, 0.01, 1e-3])
    assert loglog_slope(scales, 7.0 * scales**1.5) == pytest.approx(1.5, abs=1e-12)
    assert loglog_fit(scales, 7.0 * scales**1.5)[0] == pytest.approx(1.5, abs=1e-12)
    intercept = loglog_fit(scales, 7.0 * scales**1.5)[1]
    assert intercept == pytest.approx(math.log10(7.0), abs=1e-12)


def test_loglog_slope_skips_non_positive_and_non_finite_values() -> None:
    scales = [1.0, 0.1, 0.01, 1e-3, 1e-4]
    values = [1.0, 1e-2, 0.0, -5.0, math.nan]
    assert loglog_slope(scales, values) == pytest.approx(2.0, abs=1e-12)


def test_loglog_slope_needs_two_distinct_scales() -> None:
    assert math.isnan(loglog_slope([0.1, 0.1], [1.0, 2.0]))
    assert math.isnan(loglog_slope([1.0, 0.1], [0.0, 0.0]))


def test_final_record_of_each_replica_is_its_largest_step() -> None:
    finals = final_records(power_law_records())
    assert len(finals) == len(SCALES) * 3
    assert {record["step"] for record in finals} == {100}


def test_summary_slopes_equal_the_exponents_of_synthetic_power_laws() -> None:
    summaries = summarize(power_law_records())
    slopes = {summary.metric: summary.loglog_slope for summary in summaries}
    for metric, power in EXPONENTS.items():
        assert slopes[metric] == pytest.approx(power, abs=1e-12)
    assert math.isnan(slopes["collapse/nc4"])


def test_summary_gives_mean_std_min_max_over_the_copies_of_each_scale() -> None:
    summaries = {(s.metric, s.init_scale): s for s in summarize(power_law_records())}
    snc2 = summaries[(SNC2, 1e-2)]
    assert (snc2.count, snc2.final_step) == (3, 100)
    assert snc2.mean == pytest.approx(2e-2)
    assert snc2.std == pytest.approx(1e-2)
    assert (snc2.min, snc2.max) == (pytest.approx(1e-2), pytest.approx(3e-2))


def test_summary_lists_scales_largest_first_and_strong_collapse_metrics_first() -> None:
    summaries = summarize(power_law_records())
    assert [s.init_scale for s in summaries[:3]] == list(SCALES)
    assert summaries[0].metric.startswith("strong_collapse/")


def test_summary_csv_round_trips(tmp_path: Path) -> None:
    summaries = summarize(power_law_records())
    path = write_summary_csv(summaries, tmp_path / "summary.csv")
    assert repr(read_summary_csv(path)) == repr(summaries)  # repr: NaN slopes compare equal


def test_printed_summary_has_a_row_per_metric_and_a_column_per_scale(tmp_path: Path) -> None:
    table = write_summary(power_law_records(), tmp_path / "summary.csv")
    lines = table.splitlines()
    assert all(f"ε={scale:g}" in lines[0] for scale in SCALES)
    snc1_row = next(line for line in lines if line.startswith(SNC1))
    assert snc1_row.split()[-1] == "2.000"
    assert format_summary(summarize(power_law_records())) == table


def test_replica_histories_group_lines_by_scale_sorted_by_step() -> None:
    records = power_law_records()[::-1]
    histories = replica_histories(records, SNC1)
    assert list(histories) == list(SCALES)
    steps, values = histories[1e-2][0]
    assert steps.tolist() == [0, 1, 10, 100]
    assert values[-1] == pytest.approx(1e-4)


def test_figure1_draws_a_thin_line_per_replica_and_the_snc3_theory_overlays() -> None:
    theory = snc3_theory_curves(SETUP, 100)
    figure = figure1(power_law_records(), SETUP, theory)
    axes = figure.axes
    assert len(axes) == 3
    assert all(panel.get_yscale() == "log" for panel in axes)
    assert [len(panel.lines) for panel in axes] == [9, 9, 9 + len(theory)]
    assert "SNC1" in axes[0].get_title() and "SNC3" in axes[2].get_title()
    legend_texts = [text.get_text() for text in figure.legends[0].get_texts()]
    assert [scale_label(scale) for scale in SCALES] == legend_texts[: len(SCALES)]
    assert any("Thm 2" in text for text in legend_texts)


def test_snc3_theory_curves_follow_the_closed_forms() -> None:
    descent, flow = snc3_theory_curves(SETUP, 50)
    step = int(descent.steps[7])
    assert descent.values[7] == pytest.approx(abs(1 - 0.05 * 9) ** step / math.sqrt(3))
    assert flow.values[7] == pytest.approx(math.exp(-9 * 0.05 * step) / math.sqrt(3))
    assert descent.steps[0] == 0 and descent.steps[-1] == 50


def test_figure2_and_scaling_figure_draw_every_scale(tmp_path: Path) -> None:
    records = power_law_records()
    distance = figure2(records, SETUP)
    assert len(distance.axes) == 1 and len(distance.axes[0].lines) == 9
    assert "distance" in distance.axes[0].get_title().lower()
    scaling = scaling_figure(records, SETUP)
    labels = [text.get_text() for text in scaling.axes[0].get_legend().get_texts()]
    assert any("SNC1" in label and "2.00" in label for label in labels)
    path = save_figure(scaling, tmp_path / "figures" / "scaling.png")
    assert path.read_bytes().startswith(b"\x89PNG")


def test_plots_leave_gaps_for_zero_and_nan_values_on_log_axes() -> None:
    records = power_law_records()
    records[-1][SNC3] = 0.0
    records[-2][SNC3] = math.nan
    figure = figure1(records)
    assert len(figure.axes[2].lines) == 9
    low, high = figure.axes[2].get_ylim()
    assert 0 < low < high


@pytest.fixture(scope="class")
def paper_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reduced `ufm-train experiment=paper`: two init scales, two seeds each, 500 steps."""
    run_dir = tmp_path_factory.mktemp("paper") / "run"
    result = ufm_train_in_process(
        "experiment=paper",
        f"hydra.run.dir={run_dir}",
        "trainer.max_steps=500",
        "model.init_scale=[1.0e-2,1.0e-4]",
        "model.replicas=2",
        "callbacks.progress.refresh_rate=0",
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Final errors per init scale" in result.stdout
    return run_dir


@pytest.mark.slow
class TestReducedPaperRun:
    """What the reduced paper run writes: one class, so that one worker runs it once (``tests/conftest.py``)."""

    def test_paper_experiment_writes_figures_and_summary(self, paper_run: Path) -> None:
        for name in ("figure1", "figure2", "scaling"):
            assert (paper_run / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (paper_run / "summary.csv").exists()

    def test_paper_experiment_final_strong_collapse_errors_shrink_with_the_init_scale(self, paper_run: Path) -> None:
        summaries = {(s.metric, s.init_scale): s for s in read_summary_csv(paper_run / "summary.csv")}
        for metric in (SNC1, SNC2, SNC3, DIST_S):
            large, small = summaries[(metric, 1e-2)], summaries[(metric, 1e-4)]
            assert (large.count, small.count) == (2, 2)
            assert small.max < large.min / 10, metric
            assert large.loglog_slope > 0.8, metric

    def test_paper_experiment_adds_its_figures_to_tensorboard(self, paper_run: Path) -> None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        tags = set()
        for event_file in (paper_run / "tb" / "figures").glob("events.out.tfevents.*"):
            accumulator = EventAccumulator(str(event_file), size_guidance={"images": 0})
            accumulator.Reload()
            tags |= set(accumulator.Tags()["images"])
        assert {"paper/figure1", "paper/figure2", "paper/scaling", "report/collapse"} <= tags
