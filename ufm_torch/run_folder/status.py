"""``status.json`` in a run folder: running, finished, diverged or failed, with the error line and wall time."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from ufm_torch.run_folder.layout import STATUS_FILE


class RunStatus:
    """Writes the status of one run atomically (temporary file, then rename) so a reader never sees half a file.

    ``written`` says whether this run has written it yet: a mistake found before training leaves a resumed run's
    earlier status as it was.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self.started = time.perf_counter()
        self.written = False

    def write(self, status: str, error: str | None = None, **extra: Any) -> None:
        """Record ``status`` with the wall time since construction."""
        record = {"status": status, "error": error, "wall_time_s": time.perf_counter() - self.started} | extra
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(temporary, self.path)
        self.written = True


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """The recorded status of a run folder, or None when it has none."""
    path = Path(run_dir) / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None
