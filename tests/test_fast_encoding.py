"""Scalar events encoded straight to wire format equal protobuf's serialisation, and TensorBoard reads them back."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

from ufm_torch.run_folder.event_writer import EventFileWriter, ScalarEventEncoder
from ufm_torch.run_folder.tensorboard import (
    GRAM_IMAGE_PIXELS,
    add_scalar_rows,
    add_scalars_event,
    gram_comparison_image,
    simplex_etf_gram,
)

EDGE_VALUES = [
    0.0,
    -0.0,
    1e-45,
    1e300,
    -1e300,
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    3.141592653589793,
    3.4028235677973366e38,
    7,
]
LONG_TAGS = ["a", "t" * 127, "u" * 128, "v" * 300, "ε/nc1", "", "100%/loss", *(f"collapse/m{i}" for i in range(5))]
TAG_SETS = {"one short tag": ["a"], "long tags, long summary": LONG_TAGS, "no tags": []}
STEPS = [0, 1, 127, 128, 2**40, -1, 2**63 - 1, -(2**63)]
WALL_TIMES = [0.0, -0.0, 1_795_921_516.663729]  # fixed, so that every test worker collects the same ids


def protobuf_event(tags: list[str], values: list[float], step: int, wall_time: float) -> bytes:
    """The reference: the event built as protobuf objects and serialised."""
    entries = [Summary.Value(tag=tag, simple_value=value) for tag, value in zip(tags, values, strict=True)]
    summary = Summary(value=entries)
    return Event(wall_time=wall_time, step=step, summary=summary).SerializeToString()


def values_for(tags: list[str]) -> list[float]:
    """One edge value per tag, cycling through ``EDGE_VALUES``."""
    return [EDGE_VALUES[i % len(EDGE_VALUES)] for i in range(len(tags))]


@pytest.mark.parametrize("tags", TAG_SETS.values(), ids=TAG_SETS.keys())
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("wall_time", WALL_TIMES)
def test_scalar_event_bytes_equal_protobuf_serialisation(tags: list[str], step: int, wall_time: float) -> None:
    values = values_for(tags)
    assert ScalarEventEncoder(tags).encode(values, step, wall_time) == protobuf_event(tags, values, step, wall_time)


@pytest.mark.parametrize("value", EDGE_VALUES)
def test_each_edge_value_narrows_to_float32_as_protobuf_does(value: float) -> None:
    tags = ["collapse/nc1"]
    assert ScalarEventEncoder(tags).encode([value], 5, 1.5) == protobuf_event(tags, [value], 5, 1.5)


@pytest.mark.parametrize("step", [2**63, -(2**63) - 1])
def test_step_outside_int64_is_rejected_as_by_protobuf(step: int) -> None:
    with pytest.raises(ValueError):
        Event(step=step)
    with pytest.raises(ValueError):
        ScalarEventEncoder(["a"]).encode([1.0], step, 1.0)


def test_value_count_must_equal_tag_count() -> None:
    with pytest.raises(ValueError):
        ScalarEventEncoder(["a", "b"]).encode([1.0], 1, 1.0)


def test_add_scalars_event_file_equals_protobuf_summary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    values = dict(zip(LONG_TAGS, values_for(LONG_TAGS), strict=True))
    reference, encoded = EventFileWriter(tmp_path / "reference"), EventFileWriter(tmp_path / "encoded")
    reference.add_summary(Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in values.items()]), 300)
    add_scalars_event(encoded, values, 300)
    reference.close()
    encoded.close()
    assert encoded.path.read_bytes() == reference.path.read_bytes()


def read_scalar_events(path: Path) -> list[tuple[int, list[str], list[float]]]:
    """(step, tags, values) of every event with a summary in ``path``, read by TensorBoard (checksums verified)."""
    events = [event for event in LegacyEventFileLoader(str(path)).Load() if event.HasField("summary")]
    return [
        (event.step, [v.tag for v in event.summary.value], [v.simple_value for v in event.summary.value])
        for event in events
    ]


def test_event_file_round_trips_through_tensorboard_reader(tmp_path: Path) -> None:
    tags = ["collapse/nc1", "strong_collapse/dist_S", "ε/nc1"]
    writers = [EventFileWriter(tmp_path / f"replica_{r}") for r in range(3)]
    rows_by_step = {
        10: [[0.5, 1e-3, 2.0], [math.nan, 1e300, -0.0], [3.141592653589793, 7.0, -1.0], [9.0, 9.0, 9.0]],
        200: [[0.25, 0.125, 1.0], [4.0, -math.inf, 1e-45], [2.0, 3.0, 4.0], [9.0, 9.0, 9.0]],
    }
    for step, rows in rows_by_step.items():
        add_scalar_rows(writers, tags, rows, step)
    for writer in writers:
        writer.close()
    for replica, writer in enumerate(writers):
        events = read_scalar_events(writer.path)
        assert [step for step, _, _ in events] == list(rows_by_step)
        for (_, read_tags, read_values), rows in zip(events, rows_by_step.values(), strict=True):
            assert read_tags == tags
            with np.errstate(over="ignore"):
                expected = np.array(rows[replica], dtype=np.float64).astype(np.float32)
            assert np.array(read_values, dtype=np.float32).tobytes() == expected.tobytes()


@pytest.mark.parametrize("num_classes", [3, 10, 100, 1000])
def test_gram_image_cells_shrink_with_many_classes(num_classes: int) -> None:
    gram = simplex_etf_gram(num_classes)
    image = gram_comparison_image(gram)
    cell = min(16, max(1, GRAM_IMAGE_PIXELS // num_classes))
    assert image.shape == (num_classes * cell, (2 * num_classes + 1) * cell, 3) and image.dtype == np.uint8
    assert np.array_equal(image[:cell, :cell], image[-cell:, -cell:])  # both panels start with the ETF's diagonal
