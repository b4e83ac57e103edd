"""What ``ufm_torch.run_folder.tensorboard`` writes, read back by TensorBoard's own ``EventAccumulator``: every scalar
of every replica run at its step, the Gram image, the custom-scalars layout, the HPARAMS sessions and the report
figures."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import api_pb2, metadata

from ufm_torch.analysis.sweep_hparams import write_sweep_hparams
from ufm_torch.analysis.sweep_table import SummaryTable
from ufm_torch.metrics.tags import GRAM_IMAGE_TAG, NC_TAGS, SNC_TAGS
from ufm_torch.run_folder.tensorboard import (
    GRAM_IMAGE_PIXELS,
    add_image,
    add_scalar_rows,
    gram_comparison_image,
    open_replica_writers,
    simplex_etf_gram,
    write_figure_images,
    write_hparams,
)

RUNS = ["eps=1/rep=0", "eps=1/rep=1", "eps=0.001/rep=0"]
TAGS = ["collapse/nc1", "strong_collapse/dist_S", "ε/nc1", "train/loss"]
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


@pytest.fixture
def scalar_runs(tmp_path: Path) -> Path:
    """Three replica runs after three evaluations of ``TAGS`` (a fourth row has no writer), closed."""
    writers = open_replica_writers(tmp_path, RUNS)
    for step, rows in ROWS_BY_STEP.items():
        add_scalar_rows(writers, TAGS, rows, step)
    for writer in writers:
        writer.close()
    return tmp_path


def test_every_replica_run_holds_every_scalar_at_every_step(scalar_runs: Path) -> None:
    for replica, name in enumerate(RUNS):
        accumulator = reload(scalar_runs / name)
        assert sorted(accumulator.Tags()["scalars"]) == sorted(TAGS)
        for column, tag in enumerate(TAGS):
            events = accumulator.Scalars(tag)
            assert [event.step for event in events] == list(ROWS_BY_STEP), (name, tag)
            expected = [rows[replica][column] for rows in ROWS_BY_STEP.values()]
            assert as_float32_bytes([event.value for event in events]) == as_float32_bytes(expected), (name, tag)


def test_rows_beyond_the_last_writer_are_not_written(scalar_runs: Path) -> None:
    event_dirs = {path.parent.relative_to(scalar_runs).as_posix() for path in scalar_runs.rglob("events.out.*")}
    assert event_dirs == set(RUNS)


def test_one_evaluation_is_stamped_with_one_wall_time_in_every_run(scalar_runs: Path) -> None:
    wall_times: dict[int, set[float]] = {step: set() for step in ROWS_BY_STEP}
    for name in RUNS:
        accumulator = reload(scalar_runs / name)
        for tag in TAGS:
            for event in accumulator.Scalars(tag):
                wall_times[event.step].add(event.wall_time)
    assert all(len(times) == 1 for times in wall_times.values())


def test_each_run_starts_with_the_custom_scalars_layout(scalar_runs: Path) -> None:
    for name in RUNS:
        (config,) = reload(scalar_runs / name).Tensors("custom_scalars__config__")
        layout = layout_pb2.Layout.FromString(config.tensor_proto.string_val[0])
        charts = {
            category.title: [(chart.title, list(chart.multiline.tag)) for chart in category.chart]
            for category in layout.category
        }
        assert charts == {
            "Neural collapse": [("NC1–NC4", list(NC_TAGS))],
            "Strong neural collapse": [("SNC1–SNC3 and distance to S", list(SNC_TAGS))],
        }
        assert config.step == 0


def test_flush_makes_the_events_readable_before_close(tmp_path: Path) -> None:
    (writer,) = open_replica_writers(tmp_path, ["eps=1/rep=0"])
    add_scalar_rows([writer], ["collapse/nc1"], [[0.75]], 3)
    writer.flush()
    events = reload(tmp_path / "eps=1/rep=0").Scalars("collapse/nc1")
    writer.close()
    assert [(event.step, event.value) for event in events] == [(3, 0.75)]


def test_a_row_of_the_wrong_length_is_rejected(tmp_path: Path) -> None:
    writers = open_replica_writers(tmp_path, ["eps=1/rep=0"])
    with pytest.raises(ValueError):
        add_scalar_rows(writers, ["a", "b"], [[1.0]], 0)
    writers[0].close()


def test_gram_image_reads_back_pixel_for_pixel(tmp_path: Path) -> None:
    (writer,) = open_replica_writers(tmp_path, ["eps=1/rep=0"])
    gram = simplex_etf_gram(4) + np.diag([0.1, -0.2, 0.0, 0.05])
    image = gram_comparison_image(gram)
    add_image(writer, GRAM_IMAGE_TAG, image, 250)
    writer.close()
    (event,) = reload(tmp_path / "eps=1/rep=0").Images(GRAM_IMAGE_TAG)
    assert (event.step, event.height, event.width) == (250, image.shape[0], image.shape[1])
    assert np.array_equal(decoded(event.encoded_image_string), image)


def test_hparams_go_into_each_replica_runs_own_run(tmp_path: Path) -> None:
    writers = open_replica_writers(tmp_path, RUNS[:2])
    finals = [{"collapse/nc1": 0.5, "strong_collapse/snc1": 0.25}, {"collapse/nc1": 2.0, "strong_collapse/snc1": 4.0}]
    for replica, (writer, final) in enumerate(zip(writers, finals, strict=True)):
        write_hparams(writer, {"lr": 0.1, "optimizer": "SGD", "seed": str(7 + replica), "replica": replica}, final, 40)
        writer.close()
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


def sweep_table() -> SummaryTable:
    """Two jobs sweeping the optimiser, two replicas each (the second job's second replica has no metrics)."""
    row = {"replica": 0, "copy": 0, "init_scale": 0.1, "replica_seed": 11, "status": "finished", "wall_time_s": 1.0}
    failed = {"replica_seed": None, "step": None, "status": "failed", "collapse/nc1": None}
    rows = [
        row | {"job": "0", "module.optimizer": "sgd", "step": 20, "collapse/nc1": 0.5},
        row | {"job": "0", "module.optimizer": "sgd", "replica": 1, "copy": 1, "step": 20, "collapse/nc1": 0.25},
        row | {"job": "1", "module.optimizer": "adam", "step": 30, "collapse/nc1": 0.125},
        row | {"job": "1", "module.optimizer": "adam", "replica": 1, "copy": 1} | failed,
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
