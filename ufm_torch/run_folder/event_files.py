"""Resuming a run's TensorBoard event files: drop what was written after the checkpoint training resumes from.

A killed run may have written evaluations (and training curves) past its last checkpoint; the resumed run writes
those steps again. Readers differ in whether they honour TensorBoard's purge marker (a ``SessionLog.START`` event),
so the old files are rewritten instead: each event with a step after the resumed one is dropped, as is a record
cut short by the kill. TensorBoard then shows every step once, and the same steps as ``metrics.jsonl``.
"""

from __future__ import annotations

import os
from pathlib import Path

from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
from tensorboard.compat.proto.event_pb2 import Event

from ufm_torch.run_folder.tensorboard import tfrecord

EVENT_FILE_GLOB = "events.out.tfevents.*"


def truncate_event_file(path: Path, last_step: int) -> bool:
    """Rewrite ``path`` without the events of steps after ``last_step`` (and without a truncated last record);
    atomic (a temporary file renamed over it). Returns whether the file changed."""
    records = list(RawEventFileLoader(str(path)).Load())
    kept = [record for record in records if Event.FromString(record).step <= last_step]
    if len(kept) == len(records) and _whole_records_size(records) == path.stat().st_size:
        return False
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(b"".join(tfrecord(record) for record in kept))
    os.replace(temporary, path)
    return True


def _whole_records_size(records: list[bytes]) -> int:
    """Bytes of ``records`` framed as TFRecords (8-byte length, 4-byte CRC, data, 4-byte CRC each)."""
    return sum(len(record) + 16 for record in records)


def truncate_runs(log_dirs: list[Path], last_step: int) -> list[Path]:
    """:func:`truncate_event_file` on every event file directly in each of ``log_dirs`` that another process wrote
    (files of this process are open for writing and already hold only steps up to ``last_step``). Returns the files
    that changed."""
    own = f".{os.getpid()}."
    changed = []
    for log_dir in log_dirs:
        for path in sorted(Path(log_dir).glob(EVENT_FILE_GLOB)):
            if own not in path.name and not path.name.endswith(".tmp") and truncate_event_file(path, last_step):
                changed.append(path)
    return changed


def truncate_tree(log_dir: Path, last_step: int) -> list[Path]:
    """:func:`truncate_runs` on ``log_dir`` and every folder below it (the main run and every replica run)."""
    log_dir = Path(log_dir)
    if not log_dir.is_dir():
        return []
    return truncate_runs([log_dir, *sorted(path for path in log_dir.rglob("*") if path.is_dir())], last_step)
