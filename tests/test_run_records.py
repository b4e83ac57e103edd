"""A run folder's record never lies: a resume keeps ``.hydra/`` as the run wrote it, trains with the run's own config,
records what it was given in ``resumes.jsonl``, and a resume that would change the trajectory changes nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers import ufm_train_main
from ufm_torch.cli import train
from ufm_torch.cli.resume import RESUMABLE_KEYS, plan_resume
from ufm_torch.errors import ConfigError
from ufm_torch.run_folder.checkpoints import read_checkpoint
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.run_folder.status import read_resumes, record_resume, record_resume_end

SHORT = ["trainer.max_steps=20", "callbacks.progress.refresh_rate=0", "module.fused_steps=5", "logger=none"]
"""A short run whose original command sets a learning rate and a seed other than the defaults."""
ORIGINAL = [*SHORT, "optimizer.lr=0.02", "seed=3"]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes."""
    return {
        path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()
    }


def final_parameters(run: Path) -> dict[str, torch.Tensor]:
    """The parameters of a run's ``last.ckpt``."""
    return read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 20-step run started with ``optimizer.lr=0.02 seed=3`` (copy it before changing it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert ufm_train_main(monkeypatch, *ORIGINAL, f"hydra.run.dir={run}") == 0
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained run folder."""
    return Path(shutil.copytree(trained, tmp_path / "run", symlinks=True))


@pytest.mark.parametrize(
    "overrides",
    [
        ["model.replicas=3"],
        ["model.feature_dim=8"],
        ["optimizer.lr=0.05"],
        ["optimizer=adam"],
        ["seed=0"],
        ["data.num_classes=4", "trainer.max_steps=40"],
        ["module.loss=mean_squared"],
        ["+trainer.max_step=10"],
        ["trainer.max_steps=40,60"],
    ],
)
def test_a_refused_resume_changes_no_file_and_names_the_keys(
    run: Path, overrides: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(run)
    assert ufm_train_main(monkeypatch, f"hydra.run.dir={run}", "ckpt_path=last", *overrides) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    key = overrides[0].split("=")[0].lstrip("+")
    assert line.startswith("ufm-train: error: ") and key in line, line
    assert snapshot(run) == before


def test_a_checkpoint_of_another_shape_changes_no_file(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    assert ufm_train_main(monkeypatch, *SHORT, "model.replicas=2", f"hydra.run.dir={other}") == 0
    capsys.readouterr()
    before = snapshot(run)
    foreign = other / "checkpoints" / "last.ckpt"
    assert ufm_train_main(monkeypatch, f"hydra.run.dir={run}", f"ckpt_path={foreign}", "trainer.max_steps=40") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "does not fit this config" in line and str(foreign) in line
    assert snapshot(run) == before


def test_a_resume_without_the_original_overrides_trains_the_original_config(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hydra_files = {
        name: (run / ".hydra" / name).read_bytes() for name in ("config.yaml", "hydra.yaml", "overrides.yaml")
    }
    assert ufm_train_main(monkeypatch, f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_steps=40") == 0
    straight = tmp_path / "straight"
    assert ufm_train_main(monkeypatch, *ORIGINAL, "trainer.max_steps=40", f"hydra.run.dir={straight}") == 0
    resumed, reference = final_parameters(run), final_parameters(straight)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[key], reference[key]) for key in reference), "not the run's lr 0.02 and seed 3"
    assert {name: (run / ".hydra" / name).read_bytes() for name in hydra_files} == hydra_files
    (resume,) = read_resumes(run)
    assert resume["given"] == [f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_steps=40"]
    assert resume["changed"] == {"trainer.max_steps": [20, 40]}
    assert resume["outcome"] == "finished" and resume["error"] is None
    assert json.loads((run / "status.json").read_text())["final_metrics"]["step"] == 40


def test_repeating_the_whole_original_command_changes_nothing_and_is_accepted(run: Path) -> None:
    resume = plan_resume([*ORIGINAL, f"hydra.run.dir={run}", "ckpt_path=last"], train.CONFIG_DIR)
    assert resume is not None and resume.changed == {}
    assert resume.arguments[-2:] == ["hydra.output_subdir=null", "hydra.mode=RUN"]
    same_values = [
        "optimizer=sgd",
        "model.feature_dim=15",
        "optimizer.lr=2e-2",
        f"hydra.run.dir={run}",
        "ckpt_path=last",
    ]
    assert plan_resume(same_values, train.CONFIG_DIR).changed == {}


def test_the_keys_a_resume_may_change_are_recorded(run: Path) -> None:
    arguments = [
        f"hydra.run.dir={run}", "ckpt_path=last", "trainer.max_steps=1e3", "callbacks.collapse_monitor.every_n_steps=5",
        "callbacks.progress.refresh_rate=10", "report.dpi=80",
    ]  # fmt: skip
    resume = plan_resume(arguments, train.CONFIG_DIR)
    assert resume is not None and resume.given == arguments
    assert resume.changed == {
        "trainer.max_steps": [20, 1000.0],
        "callbacks.collapse_monitor.every_n_steps": [None, 5],
        "callbacks.progress.refresh_rate": [0, 10],
        "report.dpi": [150, 80],
    }
    assert "trainer.max_steps" in RESUMABLE_KEYS and "optimizer.lr" not in RESUMABLE_KEYS


def test_a_killed_resume_is_recorded_without_an_outcome(tmp_path: Path) -> None:
    record_resume(tmp_path, ["ckpt_path=last"], {})
    record_resume_end(tmp_path, "interrupted", "stopped by SIGINT")
    record_resume(tmp_path, ["ckpt_path=last", "trainer.max_steps=90"], {"trainer.max_steps": [40, 90]})
    with (tmp_path / "resumes.jsonl").open("a") as file:
        file.write('{"event": "ended", "outcome": "fini')  # cut short by a kill
    first, second = read_resumes(tmp_path)
    assert first["outcome"] == "interrupted" and first["error"] == "stopped by SIGINT"
    assert second["outcome"] is None and second["changed"] == {"trainer.max_steps": [40, 90]}


def test_ckpt_path_last_without_a_run_folder_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert ufm_train_main(monkeypatch, "ckpt_path=last") == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "hydra.run.dir=<the run folder to resume>" in line
    assert list(tmp_path.iterdir()) == []


def test_a_new_run_in_a_folder_that_holds_a_run_is_refused(run: Path) -> None:
    with pytest.raises(ConfigError, match=r"holds a run already.*ckpt_path=last"):
        plan_resume([f"hydra.run.dir={run}", "trainer.max_steps=40"], train.CONFIG_DIR)


def test_a_folder_as_ckpt_path_is_called_a_folder(run: Path) -> None:
    with pytest.raises(ConfigError, match=rf"is a folder, not a checkpoint file; give ckpt_path={run}/checkpoints"):
        read_checkpoint(run)
    with pytest.raises(ConfigError, match=r"is a folder, not a checkpoint file; give a checkpoint file \(\.ckpt\)"):
        read_checkpoint(run / ".hydra")


def test_status_gives_final_metrics_per_replica_and_the_command_time_beside_the_training_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    assert ufm_train_main(monkeypatch, *SHORT, "model.init_scale=[0.1,0.001]", f"hydra.run.dir={run}") == 0
    status = json.loads((run / "status.json").read_text())
    final, records = status["final_metrics"], read_records(run / "metrics.jsonl")
    assert final["step"] == 20 and [replica["init_scale"] for replica in final["replicas"]] == [0.1, 0.001]
    for replica, record in zip(final["replicas"], records[-2:], strict=True):
        assert replica == {key: value for key, value in record.items() if key not in ("step", "layer", "split")}
    assert final["replicas"][0]["collapse/nc1"] != final["replicas"][1]["collapse/nc1"], "ε is not averaged away"
    assert 0 < status["training_time_s"] < status["wall_time_s"] < status["command_wall_time_s"]
