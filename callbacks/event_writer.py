"""A TensorBoard event file written synchronously, with a C implementation of the record checksum.

``torch.utils.tensorboard.SummaryWriter`` serialises in a background thread and checksums every record with
TensorBoard's pure-Python CRC32C; with one run per replica, many writers contend for the interpreter lock at every
evaluation. This writer frames each event in the same TFRecord format (length, masked CRC32C of the length, data,
masked CRC32C of the data) in the calling thread, using ``google_crc32c``.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from pathlib import Path

import google_crc32c
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

_MASK_DELTA = 0xA282EAD8
_file_counter = itertools.count()


def masked_crc32c(data: bytes) -> int:
    """TFRecord checksum: CRC32C rotated right by 15 bits plus a constant, modulo 2³²."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


class EventFileWriter:
    """Appends events to a new ``events.out.tfevents.*`` file in ``log_dir`` (created if needed)."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.{next(_file_counter)}"
        self.path = log_dir / name
        self._file = self.path.open("wb")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Event) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(
            header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))
        )

    def add_summary(self, summary: Summary, step: int) -> None:
        """Write ``summary`` as an event at ``step``."""
        self._write(Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """Hand the buffered events to the operating system (TensorBoard sees them)."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
