"""Whole runs of ``ufm-train`` (in this process): the run folder, resuming, and what every logger receives."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import fit_in_process, ufm_train_in_process
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.run_folder.metrics_log import read_records

SHORT_RUN = ("trainer.max_steps=40", "callbacks.progress.refresh_rate=0")
"""The ``short_run_overrides`` fixture's settings, for runs fitted without Hydra's run folder."""


def scalar_tags(log_dir: Path) -> set[str]:
    """Scalar tags in the TensorBoard events of one run folder."""
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_short_run_writes_hydra_tensorboard_checkpoint_and_metrics(tmp_path: Path, short_run_overrides) -> None:
    result = ufm_train_in_process(
        *short_run_overrides, "model.init_scale=[0.1,0.001]", "model.replicas=2", "trainer.log_every_n_steps=10",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    assert f"Run folder: {run}" in result.stdout
    assert (run / ".hydra" / "config.yaml").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert "train/loss" in scalar_tags(run / "tb")
    replica_runs = sorted(path.relative_to(run / "tb").as_posix() for path in (run / "tb").glob("eps=*/rep=*"))
    assert replica_runs == ["eps=0.001/rep=0", "eps=0.001/rep=1", "eps=0.1/rep=0", "eps=0.1/rep=1"]
    tags = scalar_tags(run / "tb" / "eps=0.1" / "rep=1")
    assert {"collapse/nc1", "collapse/nc4", "strong_collapse/snc1", "strong_collapse/dist_S", "train/loss"} <= tags
    records = read_records(run / "metrics.jsonl")
    assert sorted({record["step"] for record in records}) == evaluation_steps(40)
    assert len(records) == 4 * len(evaluation_steps(40))
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def test_resuming_from_last_checkpoint_continues_the_step_count(tmp_path: Path, short_run_overrides) -> None:
    first = ufm_train_in_process(*short_run_overrides, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = ufm_train_in_process(*short_run_overrides[:1], "trainer.max_steps=100", "ckpt_path=last", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run = tmp_path / "run"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 100
    steps = [record["step"] for record in read_records(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)), "an evaluation was written twice"
    assert steps[-1] == 100 and 40 in steps and all(step in steps for step in evaluation_steps(100) if step > 40)


def test_tensorboard_replica_runs_hold_every_metric_at_every_scheduled_step(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit_in_process(run, *SHORT_RUN, "model.init_scale=[0.1,0.001]", "model.replicas=2")
    records = read_records(run / "metrics.jsonl")
    metric_tags = [key for key in records[0] if "/" in key]
    assert len(metric_tags) == 19  # 9 NC, 4 field (cdnv, gnc2, unc3, ncc_agreement), 4 SNC, loss, accuracy
    for replica_run in sorted((run / "tb").glob("eps=*/rep=*")):
        accumulator = EventAccumulator(str(replica_run), size_guidance={"scalars": 0, "images": 0})
        accumulator.Reload()
        for tag in metric_tags:
            events = accumulator.Scalars(tag)
            assert [event.step for event in events] == evaluation_steps(40), tag
        name = replica_run.relative_to(run / "tb").as_posix()
        expected = next(r for r in reversed(records) if name == f"eps={r['init_scale']:g}/rep={r['copy']}")
        last = accumulator.Scalars("strong_collapse/snc1")[-1].value
        assert abs(last - expected["strong_collapse/snc1"]) <= 1e-6 * max(1.0, abs(last))
        assert {"hp/snc1", "hp/dist_S", "hp/nc1"} <= set(accumulator.Tags()["scalars"])
        assert set(accumulator.PluginTagToContent("hparams")) == {
            "_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"
        }
        assert list(accumulator.PluginTagToContent("custom_scalars")) == ["custom_scalars__config__"]
        if replica_run.name == "rep=0":
            assert len(accumulator.Images("collapse/gram_vs_simplex_etf")) == 4


def test_other_loggers_receive_every_metric_per_replica(tmp_path: Path) -> None:
    fit_in_process(tmp_path / "run", *SHORT_RUN, "logger=csv", "model.replicas=2")
    header = (tmp_path / "run" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for copy in (0, 1):
        assert f"strong_collapse/dist_S/eps=0.001/rep={copy}" in header
        assert f"collapse/nc1/eps=0.001/rep={copy}" in header
