"""All TensorBoard writing: the replica runs of a training run (scalars, chart layout, HPARAMS, Gram-matrix images),
the report's figures and the HPARAMS sessions of a sweep.

Summaries come from ``torch.utils.tensorboard.summary`` and tensorboard's protobuf messages. A :class:`RunWriter`
writes them in the calling thread through tensorboardX's ``RecordWriter``, which checksums each record with the
``crc32c`` package's C CRC32C. ``torch.utils.tensorboard.SummaryWriter`` checksums in pure Python in one background
thread per run: with the paper benchmark's 30 runs its writing took about six times the CPU time of this path, and
its threads held the interpreter lock against training. Each evaluation is one event per replica run holding every
tag (a single ``Summary`` with many values).
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
from matplotlib import colormaps
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboardX.record_writer import RecordWriter
from torch.utils.tensorboard.summary import custom_scalars, hparams, image

from ufm_torch.metrics.tags import NC_TAGS, SNC_TAGS, short_name

CUSTOM_SCALARS_LAYOUT = {
    "Neural collapse": {"NC1–NC4": ["Multiline", list(NC_TAGS)]},
    "Strong neural collapse": {"SNC1–SNC3 and distance to S": ["Multiline", list(SNC_TAGS)]},
}

_file_counter = itertools.count()


class RunWriter:
    """A TensorBoard run: a new ``events.out.tfevents.*`` file in ``log_dir`` (created if needed), written in the
    calling thread.

    Events are tensorboard's protobuf messages; tensorboardX's ``RecordWriter`` frames them as TFRecords and
    checksums them with the ``crc32c`` package's C CRC32C.
    """

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.{next(_file_counter)}"
        self.path = log_dir / name
        self._records = RecordWriter(str(self.path))
        self.write_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write_event(self, event: Event) -> None:
        """Append ``event`` as one record."""
        self._records.write(event.SerializeToString())

    def add_summary(self, summary: Summary, step: int = 0, wall_time: float | None = None) -> None:
        """``summary`` as one event at ``step``, stamped ``wall_time`` (now by default)."""
        self.write_event(Event(wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary))

    def flush(self) -> None:
        """Write the buffered events to disk (TensorBoard sees them)."""
        self._records.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._records.close()


def open_replica_writers(log_dir: Path, run_names: list[str]) -> list[RunWriter]:
    """One writer per replica run ``log_dir/<name>``; each run's first summary is the custom-scalars layout."""
    writers = [RunWriter(Path(log_dir) / name) for name in run_names]
    layout = custom_scalars(CUSTOM_SCALARS_LAYOUT)
    for writer in writers:
        writer.add_summary(layout)
    return writers


@functools.lru_cache(maxsize=16)
def _scalar_event(tags: tuple[str, ...]) -> Event:
    """An event whose summary has one ``simple_value`` entry per tag, built once per tag list (every evaluation writes
    the same tags); each write refills its step, wall time and values in place and serialises it."""
    return Event(summary=Summary(value=[Summary.Value(tag=tag, simple_value=0.0) for tag in tags]))


def add_scalar_rows(
    writers: Sequence[RunWriter], tags: Sequence[str], rows: Sequence[Sequence[float]], step: int
) -> None:
    """Row ``r`` of ``rows`` (one value per tag) as one event at ``step`` in ``writers[r]``, all at one wall time:
    a single summary whose values TensorBoard reads as one scalar series per tag.

    Rows beyond the last writer are not written; a row whose length differs from the tags' raises ``ValueError``.
    """
    event = _scalar_event(tuple(tags))
    event.step, event.wall_time = step, time.time()
    for writer, row in zip(writers, rows, strict=False):
        for entry, value in zip(event.summary.value, row, strict=True):
            entry.simple_value = value
        writer.write_event(event)


def add_scalars_event(writer: RunWriter, values: dict[str, float], step: int) -> None:
    """All ``tag: value`` pairs as a single event at ``step`` (one summary with many values)."""
    add_scalar_rows([writer], list(values), [list(values.values())], step)


def add_image(writer: RunWriter, tag: str, image_hwc: np.ndarray, step: int) -> None:
    """An RGB image (height × width × 3, uint8) as a PNG image summary at ``step``."""
    writer.add_summary(image(tag, image_hwc, dataformats="HWC"), step)


def write_figure_images(run_dir: Path, pngs: dict[str, Path], step: int) -> None:
    """Each saved figure of ``pngs`` (tag: PNG file) as an image at ``step`` in the run ``run_dir``, replaced: a
    redrawn report leaves one copy of each image."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    writer = RunWriter(run_dir)
    for tag, path in pngs.items():
        with PIL.Image.open(path) as png:
            add_image(writer, tag, np.asarray(png.convert("RGB")), step)
    writer.close()


def write_hparams(
    writer: RunWriter, hyperparameters: dict[str, Any], final_metrics: dict[str, float], step: int
) -> None:
    """An HPARAMS entry in ``writer``'s own run (not a new sub-run): the experiment, session start and session end
    summaries of ``hyperparameters`` against metrics ``hp/<name>``, and those metrics as one event at ``step``."""
    metric_dict = {f"hp/{short_name(name)}": value for name, value in final_metrics.items()}
    for summary in hparams(hyperparameters, metric_dict):
        writer.add_summary(summary)
    add_scalars_event(writer, metric_dict, step)


class HparamsSession(NamedTuple):
    """One HPARAMS session of a sweep: the run folder it is written to, its hyperparameters, its final metrics
    (``hp/<metric>``) and the step they are shown at."""

    run_dir: Path
    hyperparameters: dict[str, Any]
    finals: dict[str, float]
    step: int


def _write_session(session: HparamsSession) -> None:
    """In the session's run: its HPARAMS session start and end, and its final metrics as one event at its step (the
    experiment summary is written once, at the top)."""
    writer = RunWriter(session.run_dir)
    _, session_start, session_end = hparams(session.hyperparameters, session.finals)
    writer.add_summary(session_start)
    writer.add_summary(session_end)
    add_scalars_event(writer, session.finals, session.step)
    writer.close()


def _write_experiment(log_dir: Path, sessions: Sequence[HparamsSession]) -> None:
    """In ``log_dir``: the HPARAMS experiment summary, with every hyperparameter of the first session as a column
    (text ones with every value seen as their domain) and every metric of any session."""
    first = sessions[0].hyperparameters
    domains = {
        key: sorted({str(session.hyperparameters[key]) for session in sessions})
        for key in first
        if isinstance(first[key], str)
    }
    metric_keys = {name: 0.0 for session in sessions for name in session.finals}
    experiment, _, _ = hparams(first, metric_keys, hparam_domain_discrete=domains)
    writer = RunWriter(log_dir)
    writer.add_summary(experiment)
    writer.close()


def write_hparams_sessions(log_dir: Path, sessions: Sequence[HparamsSession]) -> list[Path]:
    """TensorBoard HPARAMS in ``log_dir`` (replaced): one run per session, plus one experiment summary at the top so
    that ``tensorboard --logdir <log_dir>`` lists every hyperparameter as a column. Returns the session runs."""
    log_dir = Path(log_dir)
    if log_dir.exists():
        shutil.rmtree(log_dir)
    for session in sessions:
        _write_session(session)
    if sessions:
        _write_experiment(log_dir, sessions)
    return [session.run_dir for session in sessions]


def simplex_etf_gram(num_classes: int) -> np.ndarray:
    """Gram matrix of the simplex ETF: ``C/(C−1) I − 1/(C−1) 11ᵀ`` (Papyan et al., NC2)."""
    return (num_classes * np.eye(num_classes) - np.ones((num_classes, num_classes))) / (num_classes - 1)


GRAM_IMAGE_PIXELS = 256
"""Height of a Gram-matrix image when every class gets at least one pixel: cells shrink as C grows (16 pixels at
most), so that encoding the image stays cheap for many classes."""


def gram_comparison_image(gram: np.ndarray, cell_pixels: int | None = None) -> np.ndarray:
    """HWC uint8 image: ``gram`` (M̃ᵀM̃) and the simplex ETF side by side, colours on [−1, 1] (coolwarm).

    ``cell_pixels`` per matrix entry; by default ``min(16, max(1, GRAM_IMAGE_PIXELS // C))``.
    """
    num_classes = gram.shape[0]
    cell_pixels = cell_pixels or min(16, max(1, GRAM_IMAGE_PIXELS // num_classes))
    separator = np.full((num_classes, 1), np.nan)
    panel = np.concatenate([gram, separator, simplex_etf_gram(num_classes)], axis=1)
    colours = colormaps["coolwarm"]((np.nan_to_num(panel, nan=0.0) + 1.0) / 2.0)[..., :3]
    colours[np.isnan(panel)] = 1.0
    image = np.kron(colours, np.ones((cell_pixels, cell_pixels, 1)))
    return (255 * image).astype(np.uint8)
