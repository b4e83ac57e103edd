"""All TensorBoard writing: the replica runs of a training run (scalars with their log10 companions, per-ε summary
runs, chart layout, HPARAMS, Gram-matrix images), the report's figures and text, and the HPARAMS sessions of a sweep.

Summaries come from ``torch.utils.tensorboard.summary`` and tensorboard's protobuf messages and plugin metadata. A
:class:`RunWriter` writes them in the calling thread through tensorboardX's ``RecordWriter``, which checksums each
record with the ``crc32c`` package's C CRC32C. ``torch.utils.tensorboard.SummaryWriter`` checksums in pure Python in
one background thread per run: with the paper benchmark's 30 runs its writing took about six times the CPU time of
this path, and its threads held the interpreter lock against training. Each evaluation is one event per run holding
every tag (a single ``Summary`` with many values), serialised once per tag list and refilled with numpy
(:class:`_ScalarEvents`).

The dashboard (docs/architecture.md, "TensorBoard dashboards"): every metric that is ≥ 0 and spans decades also gets
``<tag>_log10`` (:func:`log10_companion`), in the replica runs only; each replica group (init scale ε, and the
per-replica hyperparameters of :mod:`ufm_torch.hyperparameters`) gets a summary run (``eps=<ε>``,
``lam_W=0.01/lam_H=0.02``) with the median, minimum and maximum over its replicas (``over_replicas/<tag>/median`` …);
the Custom Scalars layout has one category per metric family and one chart per metric (:func:`custom_scalars_layout`).
"""

from __future__ import annotations

import functools
import itertools
import os
import shutil
import socket
import struct
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import PIL.Image
from matplotlib import colormaps
from matplotlib.colors import Colormap
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboardX.record_writer import masked_crc32c
from torch.utils.tensorboard.summary import hparams, image

from ufm_torch.metrics.tags import (
    ACCURACY_TAGS,
    FIELD_TAGS,
    LOSS_TAG,
    NC_TAGS,
    OPTIMUM_TAGS,
    SNC_TAGS,
    is_collapse_tag,
    is_optimum_tag,
    metric_tag,
    short_name,
)
from ufm_torch.run_folder.names import replica_group_name

LOG10_SUFFIX = "_log10"
"""``collapse/nc1`` → ``collapse/nc1_log10``: TensorBoard sorts ``_`` before letters, so the companion comes right
after its metric in every tag list (``nc1``, ``nc1_log10``, ``nc1_quotient``, ``nc1_quotient_log10``, …)."""
LINEAR_COLLAPSE_TAGS = (metric_tag("nc4"), metric_tag("ncc_agreement"))
"""Collapse metrics without a log10 companion: NC4 and the nearest-centre agreement are fractions of samples, NC4
exactly 0 once collapsed."""
OVER_REPLICAS = "over_replicas"
"""Tag group of the per-ε summary runs: ``over_replicas/<plotted tag>/<statistic>``."""
STATISTICS = ("median", "min", "max")
"""What a summary run holds per metric, in this order: a Margin chart's value, lower and upper tags."""


def log10_companion(tag: str) -> str | None:
    """``<tag>_log10`` for a metric that is ≥ 0 and spans decades: every (strong) collapse metric but NC4, every
    distance to the global optimum, and the training loss; None for the others (NC4, accuracies, anything else)."""
    if tag == LOSS_TAG or is_optimum_tag(tag) or (is_collapse_tag(tag) and tag not in LINEAR_COLLAPSE_TAGS):
        return tag + LOG10_SUFFIX
    return None


def plotted_tag(tag: str) -> str:
    """The tag a chart shows for the metric ``tag``: its log10 companion if it has one, else itself."""
    return log10_companion(tag) or tag


def summary_tag(tag: str, statistic: str) -> str:
    """``over_replicas/collapse/nc1_log10/median``: a statistic over replicas of the plotted tag of ``tag``."""
    return f"{OVER_REPLICAS}/{plotted_tag(tag)}/{statistic}"


_file_counter = itertools.count()


class RunWriter:
    """A TensorBoard run: a new ``events.out.tfevents.*`` file in ``log_dir`` (created if needed), written in the
    calling thread.

    Events are tensorboard's protobuf messages, framed as TFRecords (:func:`tfrecord`, with tensorboardX's
    ``masked_crc32c`` over the ``crc32c`` package's C CRC32C) into a buffered file. :meth:`flush` hands the buffer to
    the operating system, so the events survive a killed process (as ``metrics.jsonl`` does); tensorboardX's
    ``RecordWriter.flush`` also calls ``fsync``, which cost 1.3 s of a 20 000-step, 64-replica run when flushing
    before each checkpoint. ``needs_layout``: the next :func:`add_scalar_rows` first writes the custom-scalars
    layout of its tags here (set by :func:`open_replica_writers`).
    """

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.{next(_file_counter)}"
        self.path = log_dir / name
        self.needs_layout = False
        self._file = self.path.open("wb")
        self.write_event(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write_record(self, serialised_event: bytes) -> None:
        """Append one serialised ``Event`` as one record."""
        self._file.write(tfrecord(serialised_event))

    def write_event(self, event: Event) -> None:
        """Append ``event`` as one record."""
        self.write_record(event.SerializeToString())

    def add_summary(self, summary: Summary, step: int = 0, wall_time: float | None = None) -> None:
        """``summary`` as one event at ``step``, stamped ``wall_time`` (now by default)."""
        self.write_event(Event(wall_time=time.time() if wall_time is None else wall_time, step=step, summary=summary))

    def flush(self) -> None:
        """Hand the buffered events to the operating system (TensorBoard sees them; a kill does not lose them)."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord: ``len`` (uint64 LE), ``masked_crc32c(len)``, ``data``, ``masked_crc32c(data)``
    (uint32 LE each), the format TensorBoard reads."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class ReplicaSummaryWriter(RunWriter):
    """The summary run of a replica group (``eps=<ε>``, ``lam_W=0.01/lam_H=0.02``) of the replicas ``members`` (their
    rows in :func:`add_scalar_rows`): per metric the median, minimum and maximum over them of its plotted tag."""

    def __init__(self, log_dir: Path, members: Sequence[int]) -> None:
        super().__init__(log_dir)
        self.members = np.asarray(members, dtype=np.intp)


def open_replica_writers(log_dir: Path, run_names: list[str]) -> list[RunWriter]:
    """One writer per replica run ``log_dir/<name>``, in order, then one :class:`ReplicaSummaryWriter` per replica
    group ``log_dir/<group>`` (:func:`~ufm_torch.run_folder.names.replica_group_name`; none for a backbone). The
    first :func:`add_scalar_rows` writes the custom-scalars layout of its tags into every one of them first.

    ``writers[r]`` is replica ``r``'s run; a caller that zips the writers with its replicas (``strict=False``) or
    flushes and closes every writer needs no change for the summary runs.
    """
    log_dir = Path(log_dir)
    writers: list[RunWriter] = [RunWriter(log_dir / name) for name in run_names]
    groups: dict[str, list[int]] = {}
    for replica, name in enumerate(run_names):
        group = replica_group_name(name)
        if group is not None:
            groups.setdefault(group, []).append(replica)
    writers += [ReplicaSummaryWriter(log_dir / group, members) for group, members in groups.items()]
    for writer in writers:
        writer.needs_layout = True
    return writers


class _ScalarEvents:
    """Serialised events of a summary with one ``simple_value`` per tag, built once per tag list.

    Protobuf encodes a ``Summary.Value`` holding a tag and a ``simple_value`` with the float32 last, and the
    concatenation of two encoded messages is their merge. So an evaluation copies the encoded ``Event(summary=…)``
    once per row, overwrites the values' bytes with the rows narrowed to float32 (numpy, all rows at once) and prefixes
    the encoded ``Event(wall_time, step)``. Checked against protobuf's own encoding when built.
    """

    def __init__(self, tags: Sequence[str]) -> None:
        self.tags = tuple(tags)
        entries = [Summary.Value(tag=tag, simple_value=0.0) for tag in self.tags]
        self.body = np.frombuffer(Event(summary=Summary(value=entries)).SerializeToString(), dtype=np.uint8)
        entry_ends = np.cumsum([Summary(value=[entry]).ByteSize() for entry in entries], dtype=np.intp)
        header = self.body.size - int(entry_ends[-1]) if entries else self.body.size
        self.value_bytes = ((header + entry_ends - 4)[:, None] + np.arange(4)).ravel()
        probe = np.arange(len(self.tags), dtype=np.float64)[None] + 0.5
        (encoded,) = self.encode(probe)
        if Event.FromString(encoded) != self.protobuf_event(probe[0]):
            raise RuntimeError("protobuf no longer encodes a simple_value as the last four bytes of its entry")

    def encode(self, values: np.ndarray) -> list[bytes]:
        """The summary part of one event per row of ``values`` (rows × tags, narrowed to float32 as protobuf does)."""
        with np.errstate(over="ignore"):
            as_bytes = np.ascontiguousarray(values, dtype="<f4").view(np.uint8)
        events = np.tile(self.body, (len(values), 1))
        events[:, self.value_bytes] = as_bytes
        return [event.tobytes() for event in events]

    def protobuf_event(self, row: np.ndarray, keep: np.ndarray | None = None) -> Event:
        """The event of one row built by protobuf, with only the tags where ``keep`` is true (all by default)."""
        keep = np.ones(len(self.tags), dtype=bool) if keep is None else keep
        return Event(
            summary=Summary(
                value=[
                    Summary.Value(tag=tag, simple_value=value)
                    for tag, value, kept in zip(self.tags, row.tolist(), keep.tolist(), strict=True)
                    if kept
                ]
            )
        )

    def write(self, writers: Sequence[RunWriter], head: bytes, values: np.ndarray, optional: np.ndarray) -> None:
        """Row ``r`` of ``values`` as one event in ``writers[r]``; the ``optional`` columns are left out of a row where
        they are not finite (a row without a finite value at all writes nothing)."""
        missing = optional & ~np.isfinite(values)
        complete, empty = ~missing.any(axis=1), missing.all(axis=1)
        rows = zip(writers, self.encode(values), complete.tolist(), empty.tolist(), strict=False)
        for replica, (writer, encoded, is_complete, is_empty) in enumerate(rows):
            if is_complete:
                writer.write_record(head + encoded)
            elif not is_empty:
                writer.write_record(head + self.protobuf_event(values[replica], ~missing[replica]).SerializeToString())


class _ScalarPlan(NamedTuple):
    """How one tag list is written: the replica runs' tags (the metrics, then the log10 companions of the columns
    ``log10_columns``) and the summary runs' tags (:data:`STATISTICS` of each metric's plotted column)."""

    replica: _ScalarEvents
    log10_columns: np.ndarray
    plotted_columns: np.ndarray
    summary: _ScalarEvents


@functools.lru_cache(maxsize=16)
def _scalar_plan(tags: tuple[str, ...]) -> _ScalarPlan:
    """The plan of ``tags``, built once per tag list (every evaluation writes the same tags)."""
    log10_columns = [column for column, tag in enumerate(tags) if log10_companion(tag)]
    companions = {column: len(tags) + index for index, column in enumerate(log10_columns)}
    replica_tags = [*tags, *(log10_companion(tags[column]) for column in log10_columns)]
    plotted = [companions.get(column, column) for column in range(len(tags))]
    summary_tags = [summary_tag(tag, statistic) for tag in tags for statistic in STATISTICS]
    return _ScalarPlan(
        _ScalarEvents(replica_tags), np.asarray(log10_columns, dtype=np.intp), np.asarray(plotted, dtype=np.intp),
        _ScalarEvents(summary_tags),
    )  # fmt: skip


def over_replicas(values: np.ndarray, groups: Sequence[np.ndarray]) -> np.ndarray:
    """Median, minimum and maximum (:data:`STATISTICS`) of each column of ``values`` (replicas × columns) over the
    rows of each group, finite values only: shape groups × columns × 3, NaN where a group has none. Rows past the end
    of ``values`` count as missing. For an even count the median is the mean of the two middle values.
    """
    count, columns = values.shape
    index = np.full((len(groups), max((len(members) for members in groups), default=0)), count, dtype=np.intp)
    for group, members in enumerate(groups):
        index[group, : len(members)] = np.minimum(members, count)
    padded = np.concatenate([values, np.full((1, columns), np.nan)])[index]  # groups × replicas × columns
    padded[~np.isfinite(padded)] = np.nan
    finite = np.count_nonzero(~np.isnan(padded), axis=1)
    ordered = np.sort(padded, axis=1)  # NaN last
    last = np.maximum(finite - 1, 0)
    group_index, column_index = np.arange(len(groups))[:, None], np.arange(columns)[None, :]
    statistics = np.empty((len(groups), columns, len(STATISTICS)))
    middle = ordered[group_index, last // 2, column_index] + ordered[group_index, (last + 1) // 2, column_index]
    statistics[..., 0] = middle / 2
    statistics[..., 1] = ordered[:, 0, :]
    statistics[..., 2] = ordered[group_index, last, column_index]
    statistics[finite == 0] = np.nan
    return statistics


def add_scalar_rows(
    writers: Sequence[RunWriter], tags: Sequence[str], rows: Sequence[Sequence[float]], step: int
) -> None:
    """Row ``r`` of ``rows`` (one value per tag) as one event at ``step`` in the ``r``-th replica writer of
    ``writers``, and the statistics over replicas as one event in each :class:`ReplicaSummaryWriter`, all at one wall
    time: a single summary per run whose values TensorBoard reads as one scalar series per tag. A value that is NaN
    (undefined, e.g. SNC on unbalanced classes) or infinite is left out of its event: the series has a gap.

    A replica's event also holds the log10 companion (:func:`log10_companion`) of each metric whose value is > 0 and
    finite (left out otherwise: never NaN or inf). A summary run's event holds :data:`STATISTICS` over its replicas of
    each metric's plotted tag (:func:`plotted_tag`), over the finite values (left out where none is). Writers whose
    ``needs_layout`` is set first get the custom-scalars layout of these tags (:func:`custom_scalars_layout`).

    Rows beyond the last replica writer are not written; a row whose length differs from the tags' raises
    ``ValueError``.
    """
    summaries = [writer for writer in writers if isinstance(writer, ReplicaSummaryWriter)]
    if any(writer.needs_layout for writer in writers):
        _write_layout(writers, tags, grouped=bool(summaries))
    _write_rows(writers, tags, rows, step)


def _write_rows(writers: Sequence[RunWriter], tags: Sequence[str], rows: Sequence[Sequence[float]], step: int) -> None:
    """The events of :func:`add_scalar_rows`, without the layout."""
    table = np.array(rows, dtype=np.float64, ndmin=2) if len(rows) else np.empty((0, len(tags)))
    if table.shape != (len(rows), len(tags)):
        raise ValueError(f"every row must hold one value per tag ({len(tags)}); got shape {table.shape}")
    replicas = [writer for writer in writers if not isinstance(writer, ReplicaSummaryWriter)]
    summaries = [writer for writer in writers if isinstance(writer, ReplicaSummaryWriter)]
    plan = _scalar_plan(tuple(tags))
    with np.errstate(divide="ignore", invalid="ignore"):
        table = np.concatenate([table, np.log10(table[:, plan.log10_columns])], axis=1)
    head = Event(wall_time=time.time(), step=step).SerializeToString()
    plan.replica.write(replicas, head, table, optional=np.ones(table.shape[1], dtype=bool))
    if summaries:
        statistics = over_replicas(table[:, plan.plotted_columns], [writer.members for writer in summaries])
        everything = np.ones(statistics[0].size, dtype=bool)
        plan.summary.write(summaries, head, statistics.reshape(len(summaries), -1), optional=everything)


def add_scalars_event(writer: RunWriter, values: dict[str, float], step: int) -> None:
    """All ``tag: value`` pairs as a single event at ``step`` (one summary with many values, and the log10 companions
    of :func:`log10_companion`); no layout."""
    _write_rows([writer], list(values), [list(values.values())], step)


METRIC_FAMILIES = (
    ("NC1–NC4 (log10 but NC4)", NC_TAGS, False),
    ("SNC1–SNC3 and distance to S (log10)", SNC_TAGS, False),
    ("CDNV, GNC2, UNC3 (log10) and nearest-centre agreement", FIELD_TAGS, False),
    ("Training loss (log10) and accuracy", (LOSS_TAG, *ACCURACY_TAGS), False),
    ("Distance to the global optimum (log10)", OPTIMUM_TAGS, False),
)
"""Custom Scalars categories, in order: title, tags, folded. Other collapse metrics (``nc1_quotient`` and the NC2
variants) follow in a folded category, then any other tag."""


def custom_scalars_layout(tags: Sequence[str], grouped: bool) -> layout_pb2.Layout:
    """One category per metric family (:data:`METRIC_FAMILIES`), one chart per metric of ``tags``, showing its plotted
    tag (log10 companion if any).

    ``grouped`` (replicas in per-group summary runs): a Margin chart of ``over_replicas/<plotted>/median`` with the
    band from ``…/min`` to ``…/max``, one line per summary run (``eps=<ε>``, or a group of per-replica
    hyperparameters). Otherwise (a backbone: one run) a multiline chart of the plotted tag itself. TensorBoard's
    Custom Scalars dashboard shows a category's Margin charts in the reverse of their order in the layout (multiline
    charts in order; checked in 2.21), so they are written reversed and appear in family order.
    """
    remaining = list(tags)
    families = []
    for title, members, closed in METRIC_FAMILIES:
        families.append((title, [tag for tag in members if tag in remaining], closed))
        remaining = [tag for tag in remaining if tag not in members]
    families.append(("Other NC1 and NC2 variants (log10)", [tag for tag in remaining if is_collapse_tag(tag)], True))
    families.append(("Other scalars", [tag for tag in remaining if not is_collapse_tag(tag)], True))

    def chart(tag: str) -> layout_pb2.Chart:
        if not grouped:
            return layout_pb2.Chart(title=plotted_tag(tag), multiline={"tag": [f"^{plotted_tag(tag)}$"]})
        value, lower, upper = (summary_tag(tag, statistic) for statistic in STATISTICS)
        series = layout_pb2.MarginChartContent.Series(value=value, lower=lower, upper=upper)
        return layout_pb2.Chart(title=plotted_tag(tag), margin={"series": [series]})

    def category(title: str, members: list[str], closed: bool) -> layout_pb2.Category:
        if grouped:
            title += " · one line per ε: median over its replicas, band from min to max"
            members = members[::-1]
        return layout_pb2.Category(title=title, chart=[chart(tag) for tag in members], closed=closed)

    return layout_pb2.Layout(category=[category(*family) for family in families if family[1]])


def _write_layout(writers: Sequence[RunWriter], tags: Sequence[str], grouped: bool) -> None:
    """The custom-scalars layout of ``tags`` at step 0 in every writer that ``needs_layout`` (then cleared)."""
    tensor = TensorProto(
        dtype="DT_STRING", string_val=[custom_scalars_layout(tags, grouped).SerializeToString()],
        tensor_shape=TensorShapeProto(),
    )  # fmt: skip
    layout = Summary(
        value=[
            Summary.Value(
                tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG,
                metadata=custom_scalar_metadata.create_summary_metadata(),
                tensor=tensor,
            )
        ]
    )
    for writer in writers:
        if writer.needs_layout:
            writer.add_summary(layout, 0)
            writer.needs_layout = False


def text_summary(tag: str, markdown: str) -> Summary:
    """``markdown`` as one text summary under ``tag`` (TensorBoard's Text tab renders it, tables included)."""
    tensor = TensorProto(dtype="DT_STRING", string_val=[markdown.encode()], tensor_shape=TensorShapeProto())
    metadata = text_metadata.create_summary_metadata(display_name=tag, description="")
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata, tensor=tensor)])


def add_image(writer: RunWriter, tag: str, image_hwc: np.ndarray, step: int) -> None:
    """An RGB image (height × width × 3, uint8) as a PNG image summary at ``step``."""
    writer.add_summary(image(tag, image_hwc, dataformats="HWC"), step)


def write_figure_images(run_dir: Path, pngs: dict[str, Path], step: int, texts: dict[str, str] | None = None) -> None:
    """Each saved figure of ``pngs`` (tag: PNG file) as an image and each markdown text of ``texts`` (tag: markdown)
    as a text summary, at ``step`` in the run ``run_dir``, replaced: a redrawn report leaves one copy of each."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    writer = RunWriter(run_dir)
    for tag, path in pngs.items():
        with PIL.Image.open(path) as png:
            add_image(writer, tag, np.asarray(png.convert("RGB")), step)
    for tag, markdown in (texts or {}).items():
        writer.add_summary(text_summary(tag, markdown), step)
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


@functools.cache
def coolwarm() -> Colormap:
    """Matplotlib's ``coolwarm``, looked up once (the registry hands out a fresh copy, whose colour table is then
    rebuilt, on every lookup)."""
    return colormaps["coolwarm"]


def class_bins(num_classes: int, bins: int = GRAM_IMAGE_PIXELS) -> np.ndarray:
    """The bin of each class, ``(C,)``: ``min(C, bins)`` contiguous groups of classes of sizes differing by at most
    one (class k in bin ``⌊k·B/C⌋``)."""
    count = min(num_classes, bins)
    return np.arange(num_classes) * count // num_classes


def binned_gram(directions: np.ndarray, bins: int = GRAM_IMAGE_PIXELS) -> np.ndarray:
    """``ḠIJ = mean_{i∈I, j∈J} ⟨u_i, u_j⟩ = ⟨ū_I, ū_J⟩`` for the unit centred mean directions ``u_c`` (rows of
    ``directions`` ``(C, p)``) over the :func:`class_bins` (ū_I the mean direction of bin I): the Gram matrix M̃ᵀM̃
    averaged block by block, ``(B, B)``, without the ``C × C`` matrix; M̃ᵀM̃ itself when C ≤ ``bins``."""
    labels = class_bins(directions.shape[0], bins)
    sizes = np.bincount(labels)
    means = np.zeros((sizes.size, directions.shape[1]))
    np.add.at(means, labels, directions)
    means /= sizes[:, None]
    return means @ means.T


def binned_simplex_etf_gram(num_classes: int, bins: int = GRAM_IMAGE_PIXELS) -> np.ndarray:
    """:func:`simplex_etf_gram` averaged over the blocks of :func:`class_bins`:
    ``(C/(C−1))·[I = J]/|I| − 1/(C−1)``, ``(B, B)``; :func:`simplex_etf_gram` itself when C ≤ ``bins``."""
    sizes = np.bincount(class_bins(num_classes, bins))
    return (num_classes * np.diag(1.0 / sizes) - 1.0) / (num_classes - 1)


def gram_comparison_image(
    gram: np.ndarray, cell_pixels: int | None = None, reference: np.ndarray | None = None
) -> np.ndarray:
    """HWC uint8 image: ``gram`` (M̃ᵀM̃, or its block averages) and ``reference`` (None: the simplex ETF of the
    same size) side by side, colours on [−1, 1] (coolwarm).

    ``cell_pixels`` per matrix entry; by default ``min(16, max(1, GRAM_IMAGE_PIXELS // B))`` for B rows.
    """
    num_classes = gram.shape[0]
    cell_pixels = cell_pixels or min(16, max(1, GRAM_IMAGE_PIXELS // num_classes))
    separator = np.full((num_classes, 1), np.nan)
    reference = simplex_etf_gram(num_classes) if reference is None else reference
    panel = np.concatenate([gram, separator, reference], axis=1)
    colours = coolwarm()((np.nan_to_num(panel, nan=0.0) + 1.0) / 2.0)[..., :3]
    colours[np.isnan(panel)] = 1.0
    image = np.kron(colours, np.ones((cell_pixels, cell_pixels, 1)))
    return (255 * image).astype(np.uint8)
