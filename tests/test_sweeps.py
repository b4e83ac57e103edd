"""Hydra multiruns summarise themselves; ``ufm-plot`` redraws the summary from saved files."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

from tests.helpers import UFM_PLOT, run_ufm_train
from ufm_torch.analysis.records import final_records
from ufm_torch.analysis.sweep_table import format_summary_csv, summary_table, swept_keys
from ufm_torch.cli import train
from ufm_torch.cli.overrides import check_plugins, plugin_installed
from ufm_torch.errors import ConfigError
from ufm_torch.run_folder.jobs import Job

FAST = (
    "trainer.max_steps=20",
    "callbacks.collapse_monitor.points_per_decade=1",
    "callbacks.collapse_monitor.gram_images=0",
    "callbacks.progress.refresh_rate=0",
    "~callbacks.checkpoint",
)


def summary_rows(sweep: Path) -> list[dict[str, str]]:
    """Rows of ``sweep_summary.csv`` as dicts of text."""
    return list(csv.DictReader(io.StringIO((sweep / "sweep_summary.csv").read_text())))


def session_hparams(run: Path) -> dict[str, object]:
    """The hyperparameters of the HPARAMS session written in one TensorBoard run folder."""
    accumulator = EventAccumulator(str(run))
    accumulator.Reload()
    content = accumulator.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    return {key: value.number_value or value.string_value for key, value in start.hparams.items()}


@pytest.fixture(scope="class")
def two_by_two_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2×2 multirun (init scale × samples per class), two replicas per job."""
    tmp_path = tmp_path_factory.mktemp("sweep")
    sweep = tmp_path / "sweep"
    result = run_ufm_train(
        "-m", f"hydra.sweep.dir={sweep}", *FAST, "model.replicas=2",
        "model.init_scale=1e-3,1e-1", "data.samples_per_class=2,3",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Report of " in result.stdout and "(jobs: 4 finished)" in result.stdout
    return sweep


class TestTwoByTwoSweep:
    """What a finished 2×2 sweep holds: one class, so that one worker runs the sweep once (``tests/conftest.py``)."""

    def test_summarises_every_job_and_replica(self, two_by_two_sweep: Path) -> None:
        rows = summary_rows(two_by_two_sweep)
        assert len(rows) == 4 * 2
        assert [(row["job"], row["replica"]) for row in rows] == [(str(j), str(r)) for j in range(4) for r in range(2)]
        assert {(row["model.init_scale"], row["data.samples_per_class"]) for row in rows} == {
            ("0.001", "2"), ("0.001", "3"), ("0.1", "2"), ("0.1", "3"),
        }  # fmt: skip
        assert all(row["status"] == "finished" and row["step"] == "20" and not row["error"] for row in rows)
        assert all(float(row["wall_time_s"]) > 0 and row["strong_collapse/snc1"] for row in rows)

    def test_draws_figures_per_swept_key(self, two_by_two_sweep: Path) -> None:
        figures = {path.name for path in (two_by_two_sweep / "figures").glob("*.png")}
        for key in ("init_scale", "data.samples_per_class"):
            expected = {f"final_vs_{key}.png", f"final_strong_collapse_vs_{key}.png", f"trajectories_by_{key}.png"}
            assert expected <= figures

    def test_every_job_has_tensorboard_runs_and_an_hparams_session_with_its_swept_values(
        self, two_by_two_sweep: Path
    ) -> None:
        for job in range(4):
            replica_runs = sorted((two_by_two_sweep / str(job) / "tb").glob("eps=*/rep=*"))
            assert len(replica_runs) == 2 and all(any(run.glob("events.out.tfevents.*")) for run in replica_runs)
        hparams = session_hparams(two_by_two_sweep / "hparams" / "3" / "eps=0.1" / "rep=1")
        assert hparams["data.samples_per_class"] == 3 and hparams["init_scale"] == 0.1
        assert hparams["job"] == "3" and hparams["status"] == "finished"

    def test_ufm_plot_reproduces_the_summary_byte_for_byte(self, two_by_two_sweep: Path) -> None:
        written = (two_by_two_sweep / "sweep_summary.csv").read_bytes()
        (two_by_two_sweep / "sweep_summary.csv").unlink()
        result = subprocess.run([str(UFM_PLOT), str(two_by_two_sweep)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert (two_by_two_sweep / "sweep_summary.csv").read_bytes() == written


def test_failed_and_diverged_jobs_are_summarised_beside_the_finished_one(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_ufm_train(
        "-m", f"hydra.sweep.dir={sweep}", *FAST, "allow_unstable=true",
        "model.init_scale=1e-3,-1", "optimizer.lr=0.05,1.0",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    outcome = {(row["model.init_scale"], row["optimizer.lr"]): row for row in summary_rows(sweep)}
    assert outcome["0.001", "0.05"]["status"] == "finished"
    assert outcome["0.001", "1.0"]["status"] == "diverged"
    assert "training diverged at step" in outcome["0.001", "1.0"]["error"]
    for lr in ("0.05", "1.0"):
        assert outcome["-1", lr]["status"] == "failed"
        assert outcome["-1", lr]["error"].startswith("model.init_scale=-1 is not allowed")
        assert outcome["-1", lr]["strong_collapse/snc1"] == ""
    assert (sweep / "figures" / "final_vs_optimizer.lr.png").exists()


def test_a_missing_launcher_plugin_is_one_line_naming_the_sweeps_extra(monkeypatch, capsys) -> None:
    monkeypatch.setattr("ufm_torch.cli.overrides.plugin_installed", lambda module: False)
    with pytest.raises(ConfigError, match=r"pip install 'ufm-torch\[sweeps\]'"):
        check_plugins(["-m", "hydra/launcher=joblib"])
    monkeypatch.setattr(sys, "argv", ["ufm-train", "-m", "hydra/launcher=submitit_slurm"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "hydra-submitit-launcher" in error and "ufm-torch[sweeps]" in error


def test_basic_launcher_and_plain_overrides_pass_the_plugin_check() -> None:
    check_plugins(["-m", "hydra/launcher=basic", "optimizer=adam", "model.init_scale=1e-3,1e-2"])


@pytest.mark.slow
@pytest.mark.skipif(not plugin_installed("hydra_plugins.hydra_joblib_launcher"), reason="needs ufm-torch[sweeps]")
def test_joblib_launcher_runs_jobs_in_parallel_into_separate_folders(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_ufm_train(
        "-m", f"hydra.sweep.dir={sweep}", *FAST, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "model.init_scale=1e-3,1e-1",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rows = summary_rows(sweep)
    assert [(row["job"], row["model.init_scale"], row["status"]) for row in rows] == [
        ("0", "0.001", "finished"), ("1", "0.1", "finished"),
    ]  # fmt: skip


def fake_job(name: str, overrides: dict[str, str], records: list[dict]) -> Job:
    """A job as read from disk, without the disk."""
    return Job(name, Path(name), overrides, {}, {"status": "finished", "error": None, "wall_time_s": 1.0}, records)


def test_swept_keys_are_the_overrides_whose_values_differ_between_jobs() -> None:
    jobs = [
        fake_job("0", {"trainer.max_steps": "9", "optimizer": "sgd", "seed": "0"}, []),
        fake_job("1", {"trainer.max_steps": "9", "optimizer": "adam"}, []),
    ]
    assert swept_keys(jobs) == ["optimizer", "seed"]


def test_final_record_of_a_replica_is_its_last_step() -> None:
    records = [{"step": s, "replica": r, "x": 10 * s + r} for s in (0, 5, 3) for r in (1, 0)]
    assert [record["x"] for record in final_records(records)] == [50, 51]


def test_summary_text_sorts_jobs_naturally_and_fixes_float_digits() -> None:
    record = {"step": 4, "replica": 0, "init_scale": 0.1, "copy": 0, "seed": 7, "strong_collapse/snc1": 1 / 3}
    jobs = [fake_job(name, {"lr": name}, [record]) for name in ("10", "2")]
    text = format_summary_csv(summary_table(jobs))
    lines = text.splitlines()
    assert lines[0] == (
        "job,lr,replica,copy,init_scale,replica_seed,run,status,wall_time_s,step,strong_collapse/snc1,error"
    )
    assert lines[1] == "2,2,0,0,0.1,7,eps=0.1/rep=0,finished,1,4,0.3333333333,"
    assert lines[2].startswith("10,10,")
    assert text == format_summary_csv(summary_table(list(reversed(jobs))))
