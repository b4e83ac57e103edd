"""Ctrl-C (SIGINT) stops a run as SIGTERM does: at the end of a batch, ``last.ckpt`` written, ``status.json``
"interrupted", the report drawn, one line with the command that resumes, exit 130 (143 for SIGTERM); the resumed
run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.helpers import ufm_train_main
from ufm_torch.run_folder.checkpoints import read_checkpoint
from ufm_torch.run_folder.status import read_resumes

SHORT = ["trainer.max_steps=60", "callbacks.progress.refresh_rate=0", "module.fused_steps=5", "logger=none"]
UFM_TRAIN = Path(sys.executable).parent / "ufm-train"


class SignalAtStep(L.Callback):
    """Sends ``signum`` to this process once, at the end of the first batch that reaches ``step``, in a run that
    started before it (a run resumed past it is left alone)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step = step
        self.signum = signum
        self.start = 0

    def on_train_start(self, trainer: L.Trainer, *args: object) -> None:
        self.start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if self.start < self.step <= trainer.global_step:
            self.start = trainer.global_step
            signal.raise_signal(self.signum)


def stop_at(step: int, signum: signal.Signals) -> list[str]:
    """Overrides that add a :class:`SignalAtStep` to the run's callbacks."""
    target = f"{__name__}.SignalAtStep"
    return [
        f"+callbacks.stop._target_={target}",
        f"+callbacks.stop.step={step}",
        f"+callbacks.stop.signum={int(signum)}",
    ]


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), pytest.param(signal.SIGTERM, 143, marks=pytest.mark.slow)]
)
def test_a_stopped_run_checkpoints_records_reports_and_says_how_to_resume(
    tmp_path: Path, signum: signal.Signals, code: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert ufm_train_main(monkeypatch, *SHORT, *stop_at(20, signum), f"hydra.run.dir={run}") == code
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    resume = f"ufm-train hydra.run.dir={run} ckpt_path=last"
    assert last_line == f"ufm-train: stopped by {signum.name}; resume with {resume}"
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 20
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "interrupted" and resume in status["error"]
    assert (run / "figures" / "collapse.png").is_file()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    assert ufm_train_main(monkeypatch, *shlex.split(resume)[1:]) == 0
    straight = tmp_path / "straight"
    assert ufm_train_main(monkeypatch, *SHORT, f"hydra.run.dir={straight}") == 0
    resumed, reference = (read_checkpoint(folder / "checkpoints" / "last.ckpt") for folder in (run, straight))
    assert resumed["global_step"] == reference["global_step"] == 60
    assert all(torch.equal(resumed["state_dict"][key], value) for key, value in reference["state_dict"].items())
    assert [resume["outcome"] for resume in read_resumes(run)] == ["finished"]


@pytest.mark.slow
def test_a_stopped_resume_prints_the_command_with_its_longer_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    assert ufm_train_main(monkeypatch, *SHORT, *stop_at(70, signal.SIGINT), f"hydra.run.dir={run}") == 0
    assert ufm_train_main(monkeypatch, f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_steps=90") == 130
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.endswith(f"resume with ufm-train hydra.run.dir={run} ckpt_path=last trainer.max_steps=90")
    (resume,) = read_resumes(run)
    assert resume["outcome"] == "interrupted" and resume["changed"] == {"trainer.max_steps": [60, 90]}


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_process_exits_130_with_one_line_to_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = ["trainer.max_steps=100000000", "module.fused_steps=100", "callbacks.progress.refresh_rate=0"]
    process = subprocess.Popen(
        [str(UFM_TRAIN), *overrides, f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (run / "status.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("ufm-train: stopped by SIGINT; resume with ufm-train ")
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr and "SIGTERM" not in stderr
    assert json.loads((run / "status.json").read_text())["status"] == "interrupted"
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] > 0
    assert (run / "figures" / "collapse.png").is_file()
