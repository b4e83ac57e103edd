"""A TensorBoard event file written synchronously, with scalar events encoded straight to protobuf wire format.

``torch.utils.tensorboard.SummaryWriter`` serialises in a background thread and checksums every record with
TensorBoard's pure-Python CRC32C; with one run per replica, many writers contend for the interpreter lock at every
evaluation. This writer frames each event in the same TFRecord format (length, masked CRC32C of the length, data,
masked CRC32C of the data) in the calling thread, using ``google_crc32c``.

Building protobuf ``Summary``/``Event`` objects for every replica at every evaluation dominates the collapse
monitor's cost for tiny problems with many replicas, so ``ScalarEventEncoder`` writes scalar events' bytes directly:
every ``Summary.Value`` up to its float is fixed by its tag and precomputed once, and an event only packs the float32
values between those prefixes. The bytes equal ``Event.SerializeToString()``'s.
"""

from __future__ import annotations

import functools
import itertools
import operator
import os
import socket
import struct
import time
from array import array
from collections.abc import Sequence
from pathlib import Path

import google_crc32c
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary

_MASK_DELTA = 0xA282EAD8
_file_counter = itertools.count()
_INT64_MIN, _INT64_END = -(2**63), 2**63
_UINT64_MASK = 2**64 - 1
_DOUBLE = struct.Struct("<d")
_ZERO_DOUBLE = bytes(8)
# Wire-format keys, (field number << 3) | wire type: Event.wall_time (1, fixed64), Event.step (2, varint),
# Event.summary (5, length-delimited), Summary.value and Summary.Value.tag (1, length-delimited),
# Summary.Value.simple_value (2, fixed32).
_WALL_TIME_KEY = b"\x09"
_STEP_KEY = b"\x10"
_SUMMARY_KEY = b"\x2a"
_VALUE_KEY = _TAG_KEY = b"\x0a"
_SIMPLE_VALUE_KEY = b"\x15"


def masked_crc32c(data: bytes) -> int:
    """TFRecord checksum: CRC32C rotated right by 15 bits plus a constant, modulo 2³²."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint of ``0 ≤ value < 2⁶⁴``: seven bits a byte, least significant first."""
    encoded = bytearray()
    while value > 0x7F:
        encoded.append(value & 0x7F | 0x80)
        value >>= 7
    encoded.append(value)
    return bytes(encoded)


def _value_prefix(tag: str) -> bytes:
    """The bytes of a ``Summary.Value(tag=tag, simple_value=…)`` entry of a summary, up to the float's four bytes.

    Proto3 leaves out an empty tag; ``simple_value`` is in a oneof, so it is written even when zero.
    """
    tag_bytes = tag.encode()
    tag_field = _TAG_KEY + _varint(len(tag_bytes)) + tag_bytes if tag_bytes else b""
    value_message_length = len(tag_field) + len(_SIMPLE_VALUE_KEY) + 4
    return _VALUE_KEY + _varint(value_message_length) + tag_field + _SIMPLE_VALUE_KEY


@functools.lru_cache(maxsize=16)
def _length_header(length: int) -> bytes:
    """A TFRecord's length field with its masked CRC32C (cached: a scalar event's length repeats every evaluation)."""
    header = struct.pack("<Q", length)
    return header + struct.pack("<I", masked_crc32c(header))


def _event_header(step: int, wall_time: float) -> bytes:
    """``Event.wall_time`` and ``Event.step`` fields, each left out when zero (proto3 defaults).

    A negative step is written as protobuf writes int64: a ten-byte varint of its two's complement.
    """
    step = operator.index(step)
    if not _INT64_MIN <= step < _INT64_END:
        raise ValueError(f"step {step} is outside int64")
    wall_time_bytes = _DOUBLE.pack(wall_time)
    wall_time_field = _WALL_TIME_KEY + wall_time_bytes if wall_time_bytes != _ZERO_DOUBLE else b""
    step_field = _STEP_KEY + _varint(step & _UINT64_MASK) if step else b""
    return wall_time_field + step_field


class ScalarEventEncoder:
    """Serialises events of one float per tag, for a fixed list of tags, as ``Event(summary=Summary(…))`` would."""

    def __init__(self, tags: Sequence[str]) -> None:
        self.tags = tuple(tags)
        prefixes = [_value_prefix(tag) for tag in self.tags]
        self._summary_template = b"".join(prefix.replace(b"%", b"%%") + b"%b" for prefix in prefixes)
        self._split_floats = struct.Struct("4s" * len(prefixes)).unpack
        summary_length = sum(len(prefix) + 4 for prefix in prefixes)
        self._summary_header = _SUMMARY_KEY + _varint(summary_length)

    def encode(self, values: Sequence[float], step: int, wall_time: float) -> bytes:
        """``Event(wall_time, step, summary=Summary(value=[Summary.Value(tag, simple_value) …]))`` serialised.

        Values are rounded to float32 as protobuf does (out of range: ±inf, NaN and −0.0 kept); a step outside int64
        raises ``ValueError``, as with protobuf.
        """
        if len(values) != len(self.tags):
            raise ValueError(f"{len(values)} values for {len(self.tags)} tags")
        # array("f") narrows with a C cast, as protobuf does; struct.pack("f") would raise OverflowError instead of inf.
        summary = self._summary_template % self._split_floats(array("f", values).tobytes())
        return _event_header(step, wall_time) + self._summary_header + summary


class EventFileWriter:
    """Appends events to a new ``events.out.tfevents.*`` file in ``log_dir`` (created if needed)."""

    def __init__(self, log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.0f}.{socket.gethostname()}.{os.getpid()}.{next(_file_counter)}"
        self.path = log_dir / name
        self._file = self.path.open("wb")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Event) -> None:
        self.write_event(event.SerializeToString())

    def write_event(self, data: bytes) -> None:
        """Append one serialised ``Event`` as a TFRecord: length, its masked CRC32C, ``data``, its masked CRC32C."""
        self._file.write(_length_header(len(data)) + data + struct.pack("<I", masked_crc32c(data)))

    def add_summary(self, summary: Summary, step: int) -> None:
        """Write ``summary`` as an event at ``step``."""
        self._write(Event(wall_time=time.time(), step=step, summary=summary))

    def flush(self) -> None:
        """Hand the buffered events to the operating system (TensorBoard sees them)."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()
