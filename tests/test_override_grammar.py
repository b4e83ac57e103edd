"""Hydra's override grammar on the command line: sweeps expand to one job per combination, mistakes are one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra import initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from tests.helpers import run_ufm_train
from tests.test_sweeps import FAST
from ufm_torch.cli import train
from ufm_torch.cli.overrides import check_group_choices, check_plugins

OPTIMIZERS = "adam, momentum, sgd"


def basic_sweep_jobs(*overrides: str) -> list[list[str]]:
    """The overrides of every job the basic sweeper launches for ``overrides`` (globs read ``conf/``)."""
    with initialize_config_module(config_module="ufm_torch.conf", version_base="1.3"):
        parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        (jobs,) = BasicSweeper.split_arguments(parser.parse_overrides(list(overrides)), max_batch_size=None)
    return jobs


@pytest.mark.parametrize(
    ("overrides", "jobs"),
    [
        (["optimizer=choice(sgd,momentum)"], [["optimizer=sgd"], ["optimizer=momentum"]]),
        (["optimizer=glob(s*)"], [["optimizer=sgd"]]),
        (["optimizer=glob(*,exclude=adam)"], [["optimizer=momentum"], ["optimizer=sgd"]]),
        (["seed=range(0,2)"], [["seed=0"], ["seed=1"]]),
        (["optimizer.lr=range(0.01,0.03,0.01)"], [["optimizer.lr=0.01"], ["optimizer.lr=0.02"]]),
        (["optimizer=sort(sgd,adam)", "seed=1,2"], [["optimizer=adam", "seed=1"], ["optimizer=adam", "seed=2"],
                                                    ["optimizer=sgd", "seed=1"], ["optimizer=sgd", "seed=2"]]),
    ],
)  # fmt: skip
def test_basic_sweeper_expands_each_sweep_form_into_one_job_per_value(overrides, jobs) -> None:
    check_group_choices(["-m", *overrides], train.CONFIG_DIR)
    check_plugins(["-m", *overrides])
    assert basic_sweep_jobs(*overrides) == jobs


@pytest.mark.parametrize(
    "override",
    [
        "optimizer=[sgd]",
        "optimizer=shuffle(sgd,momentum)",
        "optimizer=tag(grid,choice(sgd,adam))",
        "+optimizer=momentum",
        "optimizer.lr=choice(0.01,0.02)",
    ],
)
def test_group_check_accepts_every_form_that_names_known_options(override: str) -> None:
    check_group_choices(["-m", override], train.CONFIG_DIR)


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["optimizer=choice(sgd,nosuch)"], ["optimizer=nosuch is not a known option", OPTIMIZERS]),
        (["optimizer=glob(zzz*)"], ["optimizer=glob(zzz*) matches no option", OPTIMIZERS]),
        (["optimizer=range(0,2)"], ["optimizer=0 is not a known option"]),
        (["seed=range(0,0)"], ["seed=range(0,0) gives no value"]),
        (["optimizer.lr=interval(0.01,0.1)"], ["basic sweeper does not take interval()", "optuna", "nevergrad"]),
        (["hydra/sweeper=basic", "optimizer.lr=tag(log,interval(0.01,0.1))"], ["does not take interval()"]),
        (["optimizer=choice(sgd"], ["cannot parse the override 'optimizer=choice(sgd'"]),
        (["seed=range(0,2"], ["cannot parse the override 'seed=range(0,2'"]),
    ],
)  # fmt: skip
def test_a_bad_sweep_ends_with_one_line_and_exit_2(overrides, words, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["ufm-train", "-m", *overrides, "trainer.max_steps=1"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("ufm-train: error: ") and error.count("\n") == 1, error
    assert all(word in error for word in words), error


def test_interval_passes_the_check_under_an_installed_sampling_sweeper(monkeypatch) -> None:
    monkeypatch.setattr("ufm_torch.cli.overrides.plugin_installed", lambda module: True)
    check_plugins(["-m", "hydra/sweeper=optuna", "optimizer.lr=interval(0.01,0.1)"])
    check_plugins(["-m", "hydra/sweeper=nevergrad", "optimizer.lr=tag(log,interval(1e-3,1e-1))"])


def test_a_missing_sweeper_plugin_is_one_line_naming_its_package(monkeypatch, capsys) -> None:
    monkeypatch.setattr("ufm_torch.cli.overrides.plugin_installed", lambda module: False)
    monkeypatch.setattr(sys, "argv", ["ufm-train", "-m", "hydra/sweeper=optuna", "optimizer.lr=interval(0.01,0.1)"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install hydra-optuna-sweeper" in error


@pytest.mark.slow
def test_choice_and_range_sweep_runs_one_job_per_combination_with_its_own_config(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_ufm_train(
        "-m", f"hydra.sweep.dir={sweep}", *FAST, "optimizer=choice(sgd,momentum)", "seed=range(0,2)",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "(jobs: 4 finished)" in result.stdout
    jobs = []
    for job in range(4):
        hydra_config = OmegaConf.load(sweep / str(job) / ".hydra" / "hydra.yaml")
        config = OmegaConf.load(sweep / str(job) / ".hydra" / "config.yaml")
        jobs.append((hydra_config.hydra.runtime.choices.optimizer, config.optimizer.momentum, config.seed))
    assert jobs == [("sgd", 0.0, 0), ("sgd", 0.0, 1), ("momentum", 0.9, 0), ("momentum", 0.9, 1)]


def test_a_named_objective_is_returned_as_a_float_for_sampling_sweepers() -> None:
    replicas = [{"replica": 0, "strong_collapse/snc1": 0.125, "train/loss": None},
                {"replica": 1, "strong_collapse/snc1": 0.375, "train/loss": None}]  # fmt: skip
    metrics = {"step": 20, "replicas": replicas}
    assert train.job_value(None, metrics) is metrics
    assert train.job_value("strong_collapse/snc1", metrics) == 0.25, "the mean over replicas"
    assert train.job_value("train/loss", metrics) != train.job_value("train/loss", metrics), "NaN when missing"
    assert train.job_value("strong_collapse/snc1", {"status": "diverged"}) != 0.25
    assert train.job_value("train/loss", {"step": 20, "trainer": {"train/loss": 0.5}}) == 0.5, "without a monitor"


def test_an_objective_that_is_no_metric_tag_is_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "argv", ["ufm-train", "objective=snc1", f"hydra.run.dir={tmp_path / 'run'}"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "objective=snc1 is not a metric tag" in line and "strong_collapse/snc1" in line
    assert not (tmp_path / "run" / "status.json").exists()
