"""File-system faults end with one line naming the path and the error, never a traceback: exit 2 when found before
training (a path through a file, a folder that cannot be written), 74 during it (a full disk). ``status.json`` never
stays "running", no ``*.tmp`` file is left, and ``metrics.jsonl`` and the checkpoints keep their last whole record.

Tests run as root here, where permissions stop nothing: a fault-injecting fixture makes writes fail with ENOSPC, and
real read-only and full file systems are mounted in a private mount namespace (``unshare -m``) where that is allowed.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ufm_train_main
from ufm_torch.run_folder.checkpoints import read_checkpoint
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.run_folder.status import RunStatus, read_status

SHORT = ["trainer.max_steps=40", "callbacks.progress.refresh_rate=0", "module.fused_steps=5", "logger=none"]
UFM_TRAIN = Path(sys.executable).parent / "ufm-train"


class FullDisk:
    """Writes to files whose name matches ``pattern`` fail with ENOSPC after ``after`` successful write calls to
    them (counted over all such files): the failing call writes half of its data first, as a full disk does."""

    def __init__(self, pattern: str, after: int = 0) -> None:
        self.pattern = pattern
        self.after = after
        self.writes = 0

    def wrap(self, handle: Any, path: Path) -> Any:
        """``handle`` with failing writes when ``path`` matches."""
        return _FailingWrites(handle, path, self) if fnmatch(path.name, self.pattern) else handle


class _FailingWrites:
    """A file object whose ``write`` fails once its disk is full; everything else is the file's own."""

    def __init__(self, handle: Any, path: Path, disk: FullDisk) -> None:
        self._handle, self._path, self._disk = handle, path, disk

    def write(self, data: Any) -> int:
        self._disk.writes += 1
        if self._disk.writes <= self._disk.after:
            return self._handle.write(data)
        self._handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _FailingWrites:
        return self

    def __exit__(self, *exception: object) -> None:
        self._handle.close()

    def __iter__(self) -> Iterator[Any]:
        return iter(self._handle)


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[FullDisk]]:
    """Append :class:`FullDisk` rules to the list this yields; every ``open`` for writing consults them."""
    disks: list[FullDisk] = []
    original = io.open

    def faulty_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = original(file, mode, *args, **kwargs)
        if isinstance(file, str | os.PathLike) and any(flag in mode for flag in "wax+"):
            for disk in disks:
                handle = disk.wrap(handle, Path(file))
        return handle

    monkeypatch.setattr(builtins, "open", faulty_open)
    monkeypatch.setattr(io, "open", faulty_open)
    yield disks


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line ``ufm-train`` printed on stderr, which holds no traceback."""
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.startswith("ufm-train")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def assert_no_temporary_files(folder: Path) -> None:
    """No ``*.tmp`` below ``folder``."""
    assert not list(folder.rglob("*.tmp"))


def test_a_full_disk_while_metrics_are_written_is_one_line_and_exit_74(
    tmp_path: Path, full_disk: list[FullDisk], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    full_disk.append(FullDisk("metrics.jsonl", after=3))
    assert ufm_train_main(monkeypatch, *SHORT, f"hydra.run.dir={run}") == 74
    line = one_error_line(capsys)
    assert line == f"ufm-train: error: {run}: No space left on device (ENOSPC)"
    status = read_status(run)
    assert status["status"] == "failed" and status["error"] == f"{run}: No space left on device (ENOSPC)"
    records = read_records(run / "metrics.jsonl")
    assert len(records) == 3 and (run / "metrics.jsonl").read_text().count("\n") == 3, "three whole evaluations"
    assert_no_temporary_files(run)


def test_a_full_disk_while_a_checkpoint_is_written_keeps_the_previous_one(
    tmp_path: Path, full_disk: list[FullDisk], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    full_disk.append(FullDisk("*.ckpt.tmp", after=2))
    every_10 = "callbacks.checkpoint.every_n_train_steps=10"
    assert ufm_train_main(monkeypatch, *SHORT, every_10, f"hydra.run.dir={run}") == 74
    assert one_error_line(capsys).endswith("No space left on device (ENOSPC)")
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 10
    assert read_status(run)["status"] == "failed"
    assert_no_temporary_files(run)


def test_a_status_that_cannot_be_replaced_is_written_in_place(tmp_path: Path, full_disk: list[FullDisk]) -> None:
    status = RunStatus(tmp_path)
    status.write("running")
    full_disk.append(FullDisk("status.json.tmp"))
    status.write("failed", error="the disk is full")
    recorded = read_status(tmp_path)
    assert recorded["status"] == "failed" and recorded["error"] == "the disk is full"
    assert_no_temporary_files(tmp_path)
    fresh = RunStatus(tmp_path / "fresh")
    with pytest.raises(OSError, match="No space left"):
        fresh.write("running")
    assert list((tmp_path / "fresh").iterdir()) == []


def test_a_run_folder_through_a_file_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("a file\n")
    assert ufm_train_main(monkeypatch, f"hydra.run.dir={readme}/x") == 2
    line = one_error_line(capsys)
    assert str(readme) in line and "is a file (ENOTDIR)" in line
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md"]


def test_a_folder_that_cannot_be_written_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != locked and access(path, mode, **kw))
    assert ufm_train_main(monkeypatch, f"hydra.run.dir={locked}/run") == 2
    assert one_error_line(capsys) == (
        f"ufm-train: error: hydra.run.dir={locked}/run cannot be written: {locked}: Permission denied (EACCES)"
    )
    assert list(locked.iterdir()) == []


def test_a_full_disk_while_hydra_writes_the_run_folder_leaves_nothing(
    tmp_path: Path, full_disk: list[FullDisk], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    full_disk.append(FullDisk("hydra.yaml"))
    assert ufm_train_main(monkeypatch, f"hydra.run.dir={tmp_path}/runs/run") == 2
    line = one_error_line(capsys)
    assert line == f"ufm-train: error: {tmp_path}/runs/run: No space left on device (ENOSPC)"
    assert list(tmp_path.iterdir()) == []


def can_mount_in_a_private_namespace() -> bool:
    """Whether ``unshare -m`` may mount a tmpfs here (root in a container that allows it)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not can_mount_in_a_private_namespace(),
    reason="a read-only or full file system needs `unshare -m` and mount rights (root in a container that allows "
    "them); as another user permissions would do, but these tests run as root, where they stop nothing",
)


def in_namespace(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the shell ``script`` in a private mount namespace (its mounts vanish with it)."""
    environment = os.environ | {"PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script], cwd=cwd, capture_output=True, text=True, env=environment, timeout=600
    )


@needs_mounts
def test_a_read_only_file_system_is_one_line_for_a_new_run_and_a_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (run / ".hydra" / name).write_text("[]\n" if name == "overrides.yaml" else "{}\n")
    before = {path: path.read_bytes() for path in run.rglob("*") if path.is_file()}
    result = in_namespace(
        f"mount --bind {tmp_path} {tmp_path} && mount -o remount,bind,ro {tmp_path} && "
        f"{UFM_TRAIN} hydra.run.dir={tmp_path}/new; echo new=$?; "
        f"{UFM_TRAIN} hydra.run.dir={run} ckpt_path=last; echo resume=$?",
        tmp_path,
    )
    assert "new=2" in result.stdout and "resume=2" in result.stdout, result.stderr
    assert result.stderr.replace("\r", "").splitlines() == [
        f"ufm-train: error: hydra.run.dir={tmp_path}/new cannot be written: {tmp_path}: Read-only file system (EROFS)",
        f"ufm-train: error: hydra.run.dir={run} cannot be written: {run}: Read-only file system (EROFS)",
    ]
    assert {path: path.read_bytes() for path in run.rglob("*") if path.is_file()} == before


@pytest.mark.slow
@needs_mounts
def test_a_really_full_disk_is_one_line_and_keeps_whole_records(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    result = in_namespace(
        f"mount -t tmpfs -o size=4m tmpfs {disk} && {UFM_TRAIN} experiment=paper hydra.run.dir={disk}/run "
        f"callbacks.progress.refresh_rate=0; echo code=$?; cp -r {disk}/run {tmp_path}/copy",
        tmp_path,
    )
    assert "code=74" in result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ufm-train")]
    assert errors == [f"ufm-train: error: {disk}/run: No space left on device (ENOSPC)"], result.stderr
    assert "Traceback" not in result.stderr
    copy = tmp_path / "copy"
    assert json.loads((copy / "status.json").read_text())["status"] == "failed"
    assert_no_temporary_files(copy)
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    assert len(read_records(copy / "metrics.jsonl")) >= len(lines) - 1 > 0, "at most the last line is cut short"
