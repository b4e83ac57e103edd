"""Interrupted runs resume exactly, reruns reproduce, and divergence stops cleanly with valid files."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import UFM_TRAIN, fit_in_process, ufm_train_in_process
from ufm_torch.run_folder.names import replica_run_name

SLOW_RUN = [
    "trainer.max_steps=3700",   # not a multiple of the checkpoint interval
    "module.fused_steps=1",
    "callbacks.checkpoint.every_n_train_steps=500",
    "callbacks.progress.refresh_rate=0",
    "model.init_scale=[0.1,0.001]",
    "model.replicas=2",
]


def final_parameters(run: Path) -> dict[str, torch.Tensor]:
    """Parameters stored in the run's last checkpoint."""
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3700
    return checkpoint["state_dict"]


def tensorboard_steps(run_dir: Path) -> dict[str, list[int]]:
    """Per TensorBoard run (relative folder), the steps of its ``train/loss`` scalar, in file order."""
    steps = {}
    for folder in sorted({path.parent for path in (run_dir / "tb").rglob("events.out.tfevents.*")}):
        accumulator = EventAccumulator(str(folder), purge_orphaned_data=False)
        accumulator.Reload()
        if "train/loss" in accumulator.Tags()["scalars"]:
            steps[folder.relative_to(run_dir / "tb").as_posix()] = [e.step for e in accumulator.Scalars("train/loss")]
    return steps


@pytest.mark.slow
@pytest.mark.parametrize("kill_signal", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path: Path, kill_signal: signal.Signals) -> None:
    """Killed after its third checkpoint (once it has gone on past it), resumed: the same checkpoints, bit-identical
    parameters, the same metrics.jsonl, and TensorBoard runs holding each logged step once, as uninterrupted.

    The killed run is a process of its own; the reference and the resume run in this process."""
    reference = ufm_train_in_process(*SLOW_RUN, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    run = tmp_path / "interrupted"
    process = subprocess.Popen(
        [str(UFM_TRAIN), *SLOW_RUN, f"hydra.run.dir={run}"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "step=1500.ckpt").exists() and time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.01)
    time.sleep(0.3)
    process.send_signal(kill_signal)
    process.wait(timeout=60)
    assert process.returncode != 0
    resumed = ufm_train_in_process(*SLOW_RUN, f"hydra.run.dir={run}", "ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    expected, actual = final_parameters(tmp_path / "reference"), final_parameters(run)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step=3500.ckpt"]
    assert sorted(p.name for p in (tmp_path / "reference" / "checkpoints").iterdir()) == ["last.ckpt", "step=3500.ckpt"]
    metrics = (run / "metrics.jsonl").read_text()
    assert metrics == (tmp_path / "reference" / "metrics.jsonl").read_text()
    jsonl_steps: dict[str, list[int]] = {}
    for record in map(json.loads, metrics.splitlines()):
        jsonl_steps.setdefault(replica_run_name(record["init_scale"], record["copy"]), []).append(record["step"])
    resumed_steps = tensorboard_steps(run)
    assert {name: steps for name, steps in resumed_steps.items() if "/rep=" in name} == jsonl_steps
    assert resumed_steps == tensorboard_steps(tmp_path / "reference")


def test_same_config_and_seed_reproduce_metrics_exactly(tmp_path: Path) -> None:
    overrides = ["trainer.max_steps=300", "model.init_scale=[1.0,0.01]", "model.replicas=3", "seed=0"]
    for name in ("first", "second"):
        fit_in_process(tmp_path / name, *overrides)
    first = (tmp_path / "first" / "metrics.jsonl").read_text()
    assert first == (tmp_path / "second" / "metrics.jsonl").read_text()
    replicas = {json.loads(line)["seed"] for line in first.splitlines()}
    assert len(replicas) == 3


def test_divergent_run_stops_with_the_step_and_leaves_valid_files(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = ufm_train_in_process(
        "optimizer.lr=0.3", "allow_unstable=true", "trainer.max_steps=5000",
        "callbacks.checkpoint.every_n_train_steps=4", "callbacks.progress.refresh_rate=0", f"hydra.run.dir={run}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 3
    error_lines = [line for line in result.stderr.splitlines() if "diverged" in line]
    assert len(error_lines) == 1 and error_lines[0].startswith("ufm-train: error: training diverged at step")
    assert "optimizer.lr" in error_lines[0]
    assert "Traceback" not in result.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "diverged" and "diverged at step" in status["error"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(record["train/loss"]) for record in records)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())


def test_unstable_step_size_is_refused_without_opt_in(tmp_path: Path) -> None:
    result = ufm_train_in_process("optimizer.lr=0.5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and "allow_unstable" in result.stderr
