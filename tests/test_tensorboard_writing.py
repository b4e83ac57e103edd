"""What ``ufm_torch.run_folder.tensorboard`` writes, read back by TensorBoard's own ``EventAccumulator``: every scalar
of every replica run at its step with its log10 companion, the per-ε summary runs, the Gram image, the custom-scalars
layout, the HPARAMS sessions, and the report's figures and text panel."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, metadata

from ufm_torch.analysis.report import write_run_report
from ufm_torch.analysis.run_overview import OVERVIEW_TAG
from ufm_torch.analysis.sweep_hparams import write_sweep_hparams
from ufm_torch.analysis.sweep_table import SummaryTable
from ufm_torch.metrics import NC_METRIC_NAMES, SNC_METRIC_NAMES
from ufm_torch.metrics.tags import ACCURACY_TAGS, GRAM_IMAGE_TAG, LOSS_TAG, NC_TAGS, SNC_TAGS, metric_tag
from ufm_torch.run_folder.tensorboard import (
    GRAM_IMAGE_PIXELS,
    STATISTICS,
    RunWriter,
    add_image,
    add_scalar_rows,
    gram_comparison_image,
    log10_companion,
    open_replica_writers,
    over_replicas,
    plotted_tag,
    simplex_etf_gram,
    summary_tag,
    write_figure_images,
    write_hparams,
)

RUNS = ["eps=1/rep=0", "eps=1/rep=1", "eps=0.001/rep=0"]
SUMMARY_RUNS = {"eps=1": [0, 1], "eps=0.001": [2]}
TAGS = ["collapse/nc1", "strong_collapse/dist_S", "ε/nc1", "train/loss"]
COMPANIONS = {"collapse/nc1": "collapse/nc1_log10", "strong_collapse/dist_S": "strong_collapse/dist_S_log10",
              "train/loss": "train/loss_log10"}  # fmt: skip
ROWS_BY_STEP = {
    0: [[0.5, 1e-3, 2.0, 7.0], [math.nan, 1e300, -0.0, 1e-45], [3.141592653589793, 7.0, -1.0, 0.0], [9.0] * 4],
    10: [[0.25, 0.125, 1.0, 6.0], [4.0, -math.inf, 1e-45, 2.5], [2.0, 3.0, 4.0, 5.0], [9.0] * 4],
    12345: [[1e-30, 0.1, 0.2, 0.3], [math.inf, -1e300, 1.0, 0.5], [0.0, 1.0, 2.0, 3.0], [9.0] * 4],
}


def reload(run: Path) -> EventAccumulator:
    """Every event of the run folder ``run``, none sampled away."""
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def as_float32_bytes(values: list[float]) -> bytes:
    """``values`` narrowed to float32 as protobuf stores them (out of range: ±inf), as bytes (NaN compares)."""
    with np.errstate(over="ignore"):
        return np.array(values, dtype=np.float64).astype(np.float32).tobytes()


def decoded(png: bytes) -> np.ndarray:
    """The RGB pixels of a PNG image."""
    with PIL.Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def session_start(accumulator: EventAccumulator) -> dict[str, object]:
    """The hyperparameters of the run's HPARAMS session start."""
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    return {
        key: value.string_value if value.HasField("string_value") else value.number_value
        for key, value in start.hparams.items()
    }


def experiment(accumulator: EventAccumulator) -> api_pb2.Experiment:
    """The run's HPARAMS experiment summary."""
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG]
    return metadata.parse_experiment_plugin_data(content)


def close_all(writers: list[RunWriter]) -> None:
    """Close every writer (replica and summary runs)."""
    for writer in writers:
        writer.close()


@pytest.fixture
def scalar_runs(tmp_path: Path) -> Path:
    """Three replica runs and their two summary runs after three evaluations of ``TAGS`` (a fourth row has no
    writer), closed."""
    writers = open_replica_writers(tmp_path, RUNS)
    for step, rows in ROWS_BY_STEP.items():
        add_scalar_rows(writers, TAGS, rows, step)
    close_all(writers)
    return tmp_path


def float32(values: list[float]) -> list[float]:
    """``values`` as protobuf's float32 ``simple_value`` reads back."""
    return np.array(values, dtype=np.float64).astype(np.float32).astype(np.float64).tolist()


def test_every_replica_run_holds_every_finite_scalar_at_its_step(scalar_runs: Path) -> None:
    """A NaN (an undefined metric, such as SNC on unbalanced classes) or an infinity is left out: a gap."""
    for replica, name in enumerate(RUNS):
        accumulator = reload(scalar_runs / name)
        assert sorted(accumulator.Tags()["scalars"]) == sorted(TAGS + list(COMPANIONS.values()))
        for column, tag in enumerate(TAGS):
            events = accumulator.Scalars(tag)
            expected = {step: rows[replica][column] for step, rows in ROWS_BY_STEP.items()}
            expected = {step: value for step, value in expected.items() if math.isfinite(value)}
            assert [event.step for event in events] == list(expected), (name, tag)
            values = [event.value for event in events]
            assert as_float32_bytes(values) == as_float32_bytes(list(expected.values())), (name, tag)


def test_log10_companions_equal_log10_of_the_metric_and_skip_values_that_are_not_positive(scalar_runs: Path) -> None:
    for replica, name in enumerate(RUNS):
        accumulator = reload(scalar_runs / name)
        for tag, companion in COMPANIONS.items():
            column = TAGS.index(tag)
            values = {step: rows[replica][column] for step, rows in ROWS_BY_STEP.items()}
            expected = {step: math.log10(v) for step, v in values.items() if math.isfinite(v) and v > 0}
            events = accumulator.Scalars(companion)
            assert [event.step for event in events] == list(expected), (name, tag)
            assert [event.value for event in events] == float32(list(expected.values())), (name, tag)
    # float64 values below float32's range still get their exponent: 1e-45 → -45, 1e300 → 300 (the metric itself: inf)
    dist_s = reload(scalar_runs / "eps=1/rep=1").Scalars("strong_collapse/dist_S_log10")
    assert [(event.step, event.value) for event in dist_s] == [(0, 300.0)]
    assert [event.value for event in reload(scalar_runs / "eps=1/rep=1").Scalars("train/loss_log10")] == float32(
        [-45.0, math.log10(2.5), math.log10(0.5)]
    )


def test_which_tags_get_a_log10_companion() -> None:
    every_tag = [metric_tag(name) for name in (*NC_METRIC_NAMES, *SNC_METRIC_NAMES)] + [LOSS_TAG, *ACCURACY_TAGS]
    with_companion = [tag for tag in every_tag if log10_companion(tag)]
    assert sorted(set(every_tag) - set(with_companion)) == ["collapse/nc4", "heldout/accuracy", "train/accuracy"]
    assert all(log10_companion(tag) == f"{tag}_log10" for tag in with_companion)
    assert log10_companion("hp/nc1") is None and plotted_tag("collapse/nc4") == "collapse/nc4"


def tensorboard_tag_key(tag: str) -> list[tuple[int, float, str]]:
    """TensorBoard's tag order (``vz_sorting.compareTagNames``): digit runs compare as numbers and before other
    characters, ``/`` and ``_`` before letters, letters by code point, a prefix first."""
    key = []
    for digits, breaks, other in re.findall(r"(\d+)|([/_])|(.)", tag):
        key.append((0, float(digits), "") if digits else (1, 0.0, "") if breaks else (2, 0.0, other))
    return key


def test_each_companion_sorts_right_after_its_metric_in_tensorboard() -> None:
    every_tag = [metric_tag(name) for name in (*NC_METRIC_NAMES, *SNC_METRIC_NAMES)] + [LOSS_TAG, *ACCURACY_TAGS]
    listed = sorted(every_tag + [log10_companion(tag) for tag in every_tag if log10_companion(tag)],
                    key=tensorboard_tag_key)  # fmt: skip
    for tag in every_tag:
        if log10_companion(tag):
            assert listed[listed.index(tag) + 1] == log10_companion(tag)


def test_summary_runs_hold_median_min_and_max_over_the_replicas_of_each_eps(scalar_runs: Path) -> None:
    for run, members in SUMMARY_RUNS.items():
        accumulator = reload(scalar_runs / run)
        assert sorted(accumulator.Tags()["scalars"]) == sorted(summary_tag(t, s) for t in TAGS for s in STATISTICS)
        for column, tag in enumerate(TAGS):
            expected: dict[str, dict[int, float]] = {statistic: {} for statistic in STATISTICS}
            for step, rows in ROWS_BY_STEP.items():
                values = np.array([rows[member][column] for member in members])
                if tag in COMPANIONS:
                    with np.errstate(divide="ignore", invalid="ignore"):
                        values = np.log10(values)
                values = values[np.isfinite(values)]
                if values.size:
                    for statistic, function in zip(STATISTICS, (np.median, np.min, np.max), strict=True):
                        expected[statistic][step] = float(function(values))
            for statistic in STATISTICS:
                events = accumulator.Scalars(summary_tag(tag, statistic))
                assert {event.step: event.value for event in events} == dict(
                    zip(expected[statistic], float32(list(expected[statistic].values())), strict=True)
                ), (run, tag, statistic)
    # eps=1 at step 10, collapse/nc1: replicas 0.25 and 4.0 → median of the log10 values = 0, band [log10 .25, log10 4]
    nc1 = {s: reload(scalar_runs / "eps=1").Scalars(summary_tag("collapse/nc1", s))[1].value for s in STATISTICS}
    assert nc1 == dict(zip(STATISTICS, float32([0.0, math.log10(0.25), math.log10(4.0)]), strict=True))


def test_over_replicas_matches_numpy_for_ragged_groups_with_missing_values() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=(9, 5))
    values[rng.random(values.shape) < 0.3] = np.nan
    values[0, 0], values[1, 1] = np.inf, -np.inf
    groups = [np.array([0, 1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8, 12]), np.array([1, 8])]
    statistics = over_replicas(values, groups)
    assert statistics.shape == (4, 5, 3)
    for group, members in enumerate(groups):
        for column in range(5):
            finite = values[members[members < 9], column]
            finite = finite[np.isfinite(finite)]
            expected = [np.median(finite), finite.min(), finite.max()] if finite.size else [np.nan] * 3
            np.testing.assert_array_equal(statistics[group, column], expected)


def test_rows_beyond_the_last_writer_are_not_written(scalar_runs: Path) -> None:
    event_dirs = {path.parent.relative_to(scalar_runs).as_posix() for path in scalar_runs.rglob("events.out.*")}
    assert event_dirs == set(RUNS) | set(SUMMARY_RUNS)


def test_one_evaluation_is_stamped_with_one_wall_time_in_every_run(scalar_runs: Path) -> None:
    wall_times: dict[int, set[float]] = {step: set() for step in ROWS_BY_STEP}
    for name in [*RUNS, *SUMMARY_RUNS]:
        accumulator = reload(scalar_runs / name)
        for tag in accumulator.Tags()["scalars"]:
            for event in accumulator.Scalars(tag):
                wall_times[event.step].add(event.wall_time)
    assert all(len(times) == 1 for times in wall_times.values())


def layout_of(accumulator: EventAccumulator) -> layout_pb2.Layout:
    """The run's custom-scalars layout (its one layout event, at step 0)."""
    (config,) = accumulator.Tensors("custom_scalars__config__")
    assert config.step == 0
    return layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])


def test_layout_has_one_margin_chart_per_metric_over_the_summary_runs_of_each_eps(scalar_runs: Path) -> None:
    layouts = [layout_of(reload(scalar_runs / name)) for name in [*RUNS, *SUMMARY_RUNS]]
    assert all(layout == layouts[0] for layout in layouts)
    charts = {category.title.split(" · ")[0]: list(category.chart) for category in layouts[0].category}
    assert list(charts) == ["NC1–NC4 (log10 but NC4)", "SNC1–SNC3 and distance to S (log10)",
                            "Training loss (log10) and accuracy", "Other scalars"]  # fmt: skip
    shown = dict(zip(charts, [["collapse/nc1"], ["strong_collapse/dist_S"], ["train/loss"], ["ε/nc1"]], strict=True))
    for title, tags in shown.items():
        # TensorBoard draws a category's Margin charts last to first: the layout lists them reversed
        assert [chart.title for chart in reversed(charts[title])] == [plotted_tag(tag) for tag in tags]
        for chart, tag in zip(reversed(charts[title]), tags, strict=True):
            (series,) = chart.margin.series
            assert (series.value, series.lower, series.upper) == tuple(summary_tag(tag, s) for s in STATISTICS)
            assert series.value == f"over_replicas/{plotted_tag(tag)}/median"
    assert [category.closed for category in layouts[0].category] == [False, False, False, True]


def test_paper_metrics_layout_puts_each_family_in_its_category_in_order(tmp_path: Path) -> None:
    tags = [metric_tag(name) for name in (*NC_METRIC_NAMES, *SNC_METRIC_NAMES)] + [LOSS_TAG, "train/accuracy"]
    writers = open_replica_writers(tmp_path, ["eps=1/rep=0", "eps=1/rep=1"])
    add_scalar_rows(writers, tags, [[0.5] * len(tags)] * 2, 0)
    close_all(writers)
    layout = layout_of(reload(tmp_path / "eps=1"))
    shown = [[chart.title for chart in reversed(category.chart)] for category in layout.category]
    assert shown == [
        [plotted_tag(tag) for tag in NC_TAGS],
        [plotted_tag(tag) for tag in SNC_TAGS],
        ["train/loss_log10", "train/accuracy"],
        [f"collapse/{name}_log10" for name in NC_METRIC_NAMES if f"collapse/{name}" not in NC_TAGS],
    ]
    assert sum(len(row) for row in shown) == len(tags)


def test_a_backbone_gets_multiline_charts_of_its_own_run_and_no_summary_run(tmp_path: Path) -> None:
    writers = open_replica_writers(tmp_path, ["backbone"])
    assert len(writers) == 1
    add_scalar_rows(writers, TAGS, [[0.5, 0.25, 2.0, 8.0]], 4)
    close_all(writers)
    accumulator = reload(tmp_path / "backbone")
    charts = [chart for category in layout_of(accumulator).category for chart in category.chart]
    assert [(chart.title, list(chart.multiline.tag)) for chart in charts] == [
        (plotted_tag(tag), [f"^{plotted_tag(tag)}$"]) for tag in ("collapse/nc1", "strong_collapse/dist_S",
                                                                  "train/loss", "ε/nc1")
    ]  # fmt: skip
    assert [event.value for event in accumulator.Scalars("collapse/nc1_log10")] == float32([math.log10(0.5)])
    assert {path.parent.name for path in tmp_path.rglob("events.out.*")} == {"backbone"}


def test_flush_makes_the_events_readable_before_close(tmp_path: Path) -> None:
    writers = open_replica_writers(tmp_path, ["eps=1/rep=0"])
    add_scalar_rows(writers, ["collapse/nc1"], [[0.75]], 3)
    for writer in writers:
        writer.flush()
    events = reload(tmp_path / "eps=1/rep=0").Scalars("collapse/nc1")
    median = reload(tmp_path / "eps=1").Scalars("over_replicas/collapse/nc1_log10/median")
    close_all(writers)
    assert [(event.step, event.value) for event in events] == [(3, 0.75)]
    assert [(event.step, event.value) for event in median] == [(3, float32([math.log10(0.75)])[0])]


def test_a_row_of_the_wrong_length_is_rejected(tmp_path: Path) -> None:
    writers = open_replica_writers(tmp_path, ["eps=1/rep=0"])
    with pytest.raises(ValueError):
        add_scalar_rows(writers, ["a", "b"], [[1.0]], 0)
    close_all(writers)


def test_gram_image_reads_back_pixel_for_pixel(tmp_path: Path) -> None:
    writer, _summary = open_replica_writers(tmp_path, ["eps=1/rep=0"])
    gram = simplex_etf_gram(4) + np.diag([0.1, -0.2, 0.0, 0.05])
    image = gram_comparison_image(gram)
    add_image(writer, GRAM_IMAGE_TAG, image, 250)
    close_all([writer, _summary])
    (event,) = reload(tmp_path / "eps=1/rep=0").Images(GRAM_IMAGE_TAG)
    assert (event.step, event.height, event.width) == (250, image.shape[0], image.shape[1])
    assert np.array_equal(decoded(event.encoded_image_string), image)


def test_hparams_go_into_each_replica_runs_own_run(tmp_path: Path) -> None:
    writers = open_replica_writers(tmp_path, RUNS[:2])
    finals = [{"collapse/nc1": 0.5, "strong_collapse/snc1": 0.25}, {"collapse/nc1": 2.0, "strong_collapse/snc1": 4.0}]
    for replica, (writer, final) in enumerate(zip(writers, finals, strict=False)):  # as the monitor: replicas first
        write_hparams(writer, {"lr": 0.1, "optimizer": "SGD", "seed": str(7 + replica), "replica": replica}, final, 40)
    close_all(writers)
    for replica, name in enumerate(RUNS[:2]):
        accumulator = reload(tmp_path / name)
        assert set(accumulator.PluginTagToContent(metadata.PLUGIN_NAME)) == {
            metadata.EXPERIMENT_TAG,
            metadata.SESSION_START_INFO_TAG,
            metadata.SESSION_END_INFO_TAG,
        }
        hyper = {"lr": 0.1, "optimizer": "SGD", "seed": str(7 + replica), "replica": replica}
        assert session_start(accumulator) == hyper
        assert [info.name.tag for info in experiment(accumulator).metric_infos] == ["hp/nc1", "hp/snc1"]
        for metric, tag in (("hp/nc1", "collapse/nc1"), ("hp/snc1", "strong_collapse/snc1")):
            assert [(event.step, event.value) for event in accumulator.Scalars(metric)] == [(40, finals[replica][tag])]
    folders = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_dir())
    assert folders == ["eps=1", "eps=1/rep=0", "eps=1/rep=1"]
    assert reload(tmp_path / "eps=1").Tags()["scalars"] == []  # the summary run gets no HPARAMS session


def sweep_table() -> SummaryTable:
    """Two jobs sweeping the optimiser, two replicas each (the second job's second replica has no metrics)."""
    row = {"replica": 0, "copy": 0, "init_scale": 0.1, "replica_seed": 11, "status": "finished", "wall_time_s": 1.0}
    row |= {"run": "eps=0.1/rep=0"}
    second = {"replica": 1, "copy": 1, "run": "eps=0.1/rep=1"}
    failed = {"replica_seed": None, "step": None, "status": "failed", "collapse/nc1": None}
    rows = [
        row | {"job": "0", "module.optimizer": "sgd", "step": 20, "collapse/nc1": 0.5},
        row | {"job": "0", "module.optimizer": "sgd", "step": 20, "collapse/nc1": 0.25} | second,
        row | {"job": "1", "module.optimizer": "adam", "step": 30, "collapse/nc1": 0.125},
        row | {"job": "1", "module.optimizer": "adam"} | second | failed,
    ]
    return SummaryTable(["module.optimizer"], ["collapse/nc1"], rows)


def test_sweep_hparams_hold_one_session_per_replica_and_the_experiment_at_the_top(tmp_path: Path) -> None:
    log_dir = tmp_path / "hparams"
    (log_dir / "stale").mkdir(parents=True)
    runs = write_sweep_hparams(sweep_table(), log_dir)
    assert runs == [log_dir / job / f"eps=0.1/rep={copy}" for job in ("0", "1") for copy in (0, 1)]
    assert not (log_dir / "stale").exists()
    expected = [
        ("0", "sgd", "11", "finished", 20, 0.5),
        ("0", "sgd", "11", "finished", 20, 0.25),
        ("1", "adam", "11", "finished", 30, 0.125),
        ("1", "adam", "", "failed", 0, None),
    ]
    for run, (job, optimizer, seed, status, step, nc1) in zip(runs, expected, strict=True):
        accumulator = reload(run)
        hyper = {"job": job, "module.optimizer": optimizer, "init_scale": 0.1, "seed": seed, "status": status}
        assert session_start(accumulator) == hyper
        assert metadata.EXPERIMENT_TAG not in accumulator.PluginTagToContent(metadata.PLUGIN_NAME)
        finals = accumulator.Tags()["scalars"]
        assert finals == (["hp/nc1"] if nc1 is not None else [])
        if nc1 is not None:
            assert [(event.step, event.value) for event in accumulator.Scalars("hp/nc1")] == [(step, nc1)]
    top = experiment(reload(log_dir))
    assert [info.name for info in top.hparam_infos] == ["job", "module.optimizer", "init_scale", "seed", "status"]
    domains = {
        info.name: [value.string_value for value in info.domain_discrete.values]
        for info in top.hparam_infos
        if info.HasField("domain_discrete")
    }
    assert domains == {
        "job": ["0", "1"],
        "module.optimizer": ["adam", "sgd"],
        "seed": ["", "11"],
        "status": ["failed", "finished"],
    }
    assert [info.name.tag for info in top.metric_infos] == ["hp/nc1"]


def test_report_figures_read_back_as_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = {
        name: rng.integers(0, 256, (12, width, 3), dtype=np.uint8) for name, width in [("collapse", 20), ("scaling", 9)]
    }
    pngs = {}
    for name, array in pixels.items():
        pngs[f"report/{name}"] = tmp_path / f"{name}.png"
        PIL.Image.fromarray(array).convert("RGBA").save(pngs[f"report/{name}"])
    write_figure_images(tmp_path / "tb" / "figures", pngs, 500)
    write_figure_images(tmp_path / "tb" / "figures", pngs, 500)
    assert len(list((tmp_path / "tb" / "figures").glob("events.out.tfevents.*"))) == 1
    accumulator = reload(tmp_path / "tb" / "figures")
    assert sorted(accumulator.Tags()["images"]) == ["report/collapse", "report/scaling"]
    for name, array in pixels.items():
        (event,) = accumulator.Images(f"report/{name}")
        assert event.step == 500
        assert np.array_equal(decoded(event.encoded_image_string), array)


@pytest.mark.parametrize("num_classes", [3, 10, 100, 1000])
def test_gram_image_cells_shrink_with_many_classes(num_classes: int) -> None:
    gram = simplex_etf_gram(num_classes)
    image = gram_comparison_image(gram)
    cell = min(16, max(1, GRAM_IMAGE_PIXELS // num_classes))
    assert image.shape == (num_classes * cell, (2 * num_classes + 1) * cell, 3) and image.dtype == np.uint8
    assert np.array_equal(image[:cell, :cell], image[-cell:, -cell:])  # both panels start with the ETF's diagonal


def run_folder(path: Path) -> Path:
    """A finished UFM run folder of two init scales (two replicas of ε = 0.1, one of ε = 0.001) with an empty ``tb/``:
    what the report reads."""
    (path / ".hydra").mkdir(parents=True)
    config = {"trainer": {"max_steps": 20}, "data": {"num_classes": 3, "samples_per_class": 3},
              "model": {"feature_dim": 4, "init_scale": [0.1, 0.001], "replicas": 2}, "optimizer": {"lr": 0.05},
              "report": {"print_summary": False, "dpi": 40}}  # fmt: skip
    (path / ".hydra" / "config.yaml").write_text(json.dumps(config))
    (path / ".hydra" / "overrides.yaml").write_text("- model.init_scale=[0.1,0.001]\n- ~callbacks.progress\n")
    (path / "status.json").write_text(json.dumps({"status": "finished", "error": None, "wall_time_s": 2.5}))
    replicas = [(0, 0.1, 0), (1, 0.1, 1), (2, 0.001, 0)]
    finals = {0: (0.5, 1e-3), 1: (0.25, 4e-3), 2: (1e-20, math.nan)}
    lines = []
    for step in (0, 20):
        for replica, scale, copy in replicas:
            nc1, snc1 = finals[replica] if step == 20 else (1.0, 1.0)
            lines.append({"step": step, "replica": replica, "init_scale": scale, "copy": copy, "seed": 5 + replica,
                          "collapse/nc1": nc1, "strong_collapse/snc1": snc1})  # fmt: skip
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (path / "tb").mkdir()
    return path


def texts_of(run: Path) -> list[tuple[int, str]]:
    """``(step, markdown)`` of every ``report/overview`` text event of the TensorBoard run ``run``."""
    accumulator = reload(run)
    return [(event.step, event.tensor_proto.string_val[0].decode()) for event in accumulator.Tensors(OVERVIEW_TAG)]


def test_report_text_panel_holds_the_command_line_and_final_metrics_once_after_a_redraw(tmp_path: Path) -> None:
    run = run_folder(tmp_path / "run")
    write_run_report(run)
    write_run_report(run)  # ufm-plot redraws the same report
    figures_run = run / "tb" / "figures"
    assert len(list(figures_run.glob("events.out.tfevents.*"))) == 1
    (text,) = texts_of(figures_run)
    step, markdown = text
    assert step == 20
    assert "```\nufm-train 'model.init_scale=[0.1,0.001]' '~callbacks.progress'\n```" in markdown
    assert "**finished** (job 2.5 s)" in markdown
    assert "at step 20: median over the replicas of each ε (1 to 2)" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert table == [
        "| metric | ε = 0.1 | ε = 0.001 |",
        "|---|---|---|",
        "| `collapse/nc1` | 0.375 | 1e-20 |",  # median of 0.5 and 0.25
        "| `strong_collapse/snc1` | 0.0025 | – |",  # NaN: no finite value
    ]
    plugin = reload(figures_run).PluginTagToContent("text")
    assert list(plugin) == [OVERVIEW_TAG]
    assert sorted(reload(figures_run).Tags()["images"]) == ["report/collapse"]


def test_report_run_replaces_its_text_and_images_when_rewritten(tmp_path: Path) -> None:
    png = tmp_path / "figure.png"
    PIL.Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(png)
    write_figure_images(tmp_path / "figures", {"report/collapse": png}, 7, {"report/overview": "first"})
    write_figure_images(tmp_path / "figures", {"report/collapse": png}, 9, {"report/overview": "| a |\n|---|\n| 1 |"})
    assert texts_of(tmp_path / "figures") == [(9, "| a |\n|---|\n| 1 |")]
    assert [event.step for event in reload(tmp_path / "figures").Images("report/collapse")] == [9]


@pytest.mark.parametrize("num_classes", [5, 256, 1001])
def test_binned_gram_averages_the_gram_matrix_over_blocks_of_classes(num_classes: int) -> None:
    """``binned_gram`` is M̃ᵀM̃ averaged over the blocks of ``class_bins`` (M̃ᵀM̃ itself up to 256 classes), and the
    binned simplex ETF is ``binned_gram`` of the simplex's own directions."""
    from ufm_torch.run_folder.tensorboard import binned_gram, binned_simplex_etf_gram, class_bins

    rows = np.random.default_rng(num_classes).normal(size=(num_classes, 7))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    bins = class_bins(num_classes)
    count = bins.max() + 1
    assert count == min(num_classes, GRAM_IMAGE_PIXELS) and np.ptp(np.bincount(bins)) <= 1
    full = rows @ rows.T
    averaged = np.array([[full[np.ix_(bins == i, bins == j)].mean() for j in range(count)] for i in range(count)])
    np.testing.assert_allclose(binned_gram(rows), averaged, rtol=0, atol=1e-13)
    centred = np.eye(num_classes) - 1.0 / num_classes
    simplex = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(binned_gram(simplex), binned_simplex_etf_gram(num_classes), rtol=0, atol=1e-12)
    if num_classes <= GRAM_IMAGE_PIXELS:
        np.testing.assert_allclose(binned_simplex_etf_gram(num_classes), simplex_etf_gram(num_classes), atol=1e-15)
