"""Shared helpers for the test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UFM_TRAIN = Path(sys.executable).parent / "ufm-train"


def run_ufm_train(*overrides: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``ufm-train`` with ``overrides`` in a subprocess, capturing its output."""
    environment = os.environ | {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [str(UFM_TRAIN), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def short_run_overrides(tmp_path: Path) -> list[str]:
    """Overrides for a fast run whose folder is ``tmp_path/run``."""
    return [f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_steps=40", "callbacks.progress.refresh_rate=0"]
