"""A bad ``ckpt_path`` ends before training with one line naming the file; a finished run's ``last.ckpt`` and
``status.json`` hold its final state and evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import ufm_train_in_process
from ufm_torch.errors import ConfigError
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.run_folder.checkpoints import check_resume, resume_path
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.training.module import CollapseModule


def ufm_module(samples_per_class: int = 3, replicas: int = 1) -> CollapseModule:
    """A paper-size UFM in the training module."""
    network = UnconstrainedFeatures(3, samples_per_class, 15, replicas=replicas)
    return CollapseModule(network, optimizer=lambda parameters: torch.optim.SGD(parameters, lr=0.05))


def saved_checkpoint(path: Path, module: CollapseModule) -> Path:
    """``module``'s parameters written as a Lightning-style checkpoint."""
    torch.save({"state_dict": module.state_dict(), "global_step": 10}, path)
    return path


def test_a_matching_checkpoint_is_accepted(tmp_path: Path) -> None:
    path = saved_checkpoint(tmp_path / "good.ckpt", ufm_module())
    assert check_resume(str(path), tmp_path, ufm_module()) == path


def test_last_means_the_run_folders_last_checkpoint_or_a_fresh_start(tmp_path: Path) -> None:
    assert resume_path("last", tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    last = saved_checkpoint(tmp_path / "checkpoints" / "last.ckpt", ufm_module())
    assert resume_path("last", tmp_path) == last
    assert resume_path(None, tmp_path) is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: path, "does not exist"),
        (lambda path: path.write_bytes(b"not a checkpoint at all") and path, "not a readable checkpoint"),
        (lambda path: torch.save([1, 2, 3], path) or path, "no Lightning checkpoint"),
    ],
)
def test_missing_garbage_and_foreign_files_are_one_line_naming_the_file(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path / "bad.ckpt")
    with pytest.raises(ConfigError, match=message) as error:
        check_resume(str(path), tmp_path, ufm_module())
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_truncated_checkpoint_is_refused(tmp_path: Path) -> None:
    path = saved_checkpoint(tmp_path / "whole.ckpt", ufm_module())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        check_resume(str(path), tmp_path, ufm_module())


@pytest.mark.parametrize(("samples_per_class", "replicas"), [(4, 1), (3, 2)])
def test_a_checkpoint_of_another_shape_names_the_parameter(tmp_path: Path, samples_per_class: int, replicas: int):
    path = saved_checkpoint(tmp_path / "other.ckpt", ufm_module())
    with pytest.raises(ConfigError, match=r"network\.features has shape \(1, 9, 15\) there"):
        check_resume(str(path), tmp_path, ufm_module(samples_per_class, replicas))


def test_cli_refuses_a_bad_checkpoint_before_touching_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = ufm_train_in_process(f"hydra.run.dir={run}", "trainer.max_steps=20", "callbacks.progress.refresh_rate=0",
                                 cwd=tmp_path)  # fmt: skip
    assert first.returncode == 0, first.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 20  # the final state, although no periodic checkpoint was due
    metrics = (run / "metrics.jsonl").read_bytes()
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"\x00" * 100)
    result = ufm_train_in_process(f"hydra.run.dir={run}", "trainer.max_steps=40", f"ckpt_path={garbage}", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(garbage) in lines[0] and "Traceback" not in result.stderr
    assert (run / "metrics.jsonl").read_bytes() == metrics
    status = json.loads((run / "status.json").read_text())
    assert status["final_metrics"]["step"] == 20
    (replica,) = status["final_metrics"]["replicas"]
    assert replica["train/accuracy"] == read_records(run / "metrics.jsonl")[-1]["train/accuracy"]


def test_a_trained_bias_does_not_load_into_a_bias_free_ufm(tmp_path: Path) -> None:
    with_bias = ufm_module()
    with torch.no_grad():
        with_bias.network.head.bias.fill_(0.25)
    path = saved_checkpoint(tmp_path / "bias.ckpt", with_bias)
    bias_free = CollapseModule(UnconstrainedFeatures(3, 3, 15, bias=False), optimizer=with_bias.optimizer_factory)
    with pytest.raises(ConfigError, match=r"trained network\.head\.bias, but model\.bias=false"):
        check_resume(str(path), tmp_path, bias_free)
    assert check_resume(str(saved_checkpoint(tmp_path / "free.ckpt", bias_free)), tmp_path, bias_free)
