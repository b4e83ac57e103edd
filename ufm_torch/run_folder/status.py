"""The outcome records of a run folder: ``status.json`` (running, finished, diverged, failed or interrupted, with the
error line and wall time) and ``resumes.jsonl`` (what each resume was given and how it ended)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from ufm_torch.run_folder.layout import RESUMES_FILE, STATUS_FILE, TEMPORARY_SUFFIX


class RunStatus:
    """Writes the status of one run atomically (temporary file, then rename) so a reader never sees half a file.

    ``written`` says whether this run has written it yet: a mistake found before training leaves a resumed run's
    earlier status as it was. On a full disk the temporary file cannot be written; it is removed and the status is
    written over the old one in place (a small file keeps its block), so that an error the process lives to report
    never leaves ``status.json`` saying "running". Only when that fails too does :meth:`write` raise the ``OSError``.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self.started = time.perf_counter()
        self.written = False

    def write(self, status: str, error: str | None = None, **extra: Any) -> None:
        """Record ``status`` with the wall time since construction."""
        record = {"status": status, "error": error, "wall_time_s": time.perf_counter() - self.started} | extra
        text = json.dumps(record, indent=1) + "\n"
        try:
            replace_file(self.path, text)
        except OSError:
            if not self.path.is_file():
                raise
            with self.path.open("r+") as file:
                file.write(text)
                file.truncate()
        self.written = True


def update_status(run_dir: Path, **fields: Any) -> None:
    """Add ``fields`` to the recorded status of ``run_dir`` (atomically, as :meth:`RunStatus.write`); nothing when it
    has none. The command's whole wall time is recorded this way once its report is drawn."""
    status = read_status(run_dir)
    if status is not None:
        replace_file(Path(run_dir) / STATUS_FILE, json.dumps(status | fields, indent=1) + "\n")


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``<path>.tmp`` and rename it over ``path`` (atomic). On an ``OSError`` the temporary file
    is removed before the error is raised: nothing half-written is left."""
    temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The recorded status of a run folder, or None when it has none."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def record_resume(run_dir: Path, given: list[str], changed: dict[str, list[Any]]) -> None:
    """Append to ``resumes.jsonl`` that the run resumes now, with the arguments it was ``given`` and the keys it
    ``changed`` (key: [the run's value, the new value])."""
    _append(run_dir, {"event": "resumed", "time": _now(), "given": given, "changed": changed})


def record_resume_end(run_dir: Path, outcome: str, error: str | None = None) -> None:
    """Append to ``resumes.jsonl`` how the latest resume ended (``finished``, ``interrupted``, ``diverged``,
    ``failed``)."""
    _append(run_dir, {"event": "ended", "time": _now(), "outcome": outcome, "error": error})


def read_resumes(run_dir: Path) -> list[dict[str, Any]]:
    """Every resume of a run, oldest first: ``time``, ``given``, ``changed``, and ``outcome`` and ``error`` (None
    when the process ended without recording one, e.g. killed); [] for a run never resumed. The one reader of
    ``resumes.jsonl``; a line cut short is skipped."""
    path = Path(run_dir) / RESUMES_FILE
    resumes: list[dict[str, Any]] = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "resumed":
            resumes.append({key: event.get(key) for key in ("time", "given", "changed")} | {"outcome": None})
        elif event.get("event") == "ended" and resumes and resumes[-1]["outcome"] is None:
            resumes[-1] |= {"outcome": event.get("outcome"), "error": event.get("error"), "ended": event.get("time")}
    for resume in resumes:
        resume.setdefault("error", None)
    return resumes


def _append(run_dir: Path, event: dict[str, Any]) -> None:
    """Append one JSON line to ``resumes.jsonl`` and flush it to disk."""
    with (Path(run_dir) / RESUMES_FILE).open("a") as file:
        file.write(json.dumps(event, default=str) + "\n")
        file.flush()
        os.fsync(file.fileno())


def _now() -> str:
    """The local time with its offset, to the second (ISO 8601)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")
