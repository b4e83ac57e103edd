"""Per-replica temperatures of the spherical UFM (issue 23): ``module.temperature`` takes a list like the other keys
of :data:`ufm_torch.hyperparameters.HYPERPARAMETERS`; each replica group trains exactly as a run of its own τ, knows
its τ (``tau=<τ>``) wherever a run is read, and a bad list is refused in one line (exit 2)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import compose_train, fit_in_process, quiet_trainer, ufm_train_main
from ufm_torch.analysis.sweep_hparams import sweep_sessions
from ufm_torch.analysis.sweep_table import summary_table
from ufm_torch.cli.validation import validate_config
from ufm_torch.data import UFMDataModule
from ufm_torch.errors import ConfigError
from ufm_torch.hyperparameters import HYPERPARAMETERS, HyperparameterGrid, hyperparameter_grid
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.objectives.sample_chunks import chunked_data_gradients
from ufm_torch.objectives.ufm import Objective
from ufm_torch.run_folder.jobs import expected_replicas, read_jobs
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.training.module import CollapseModule

SPHERE = ("model.normalize=true", "model.bias=false", "module.loss=cross_entropy")
KEY = "module.temperature"


def test_the_temperature_is_a_per_replica_key_labelled_tau() -> None:
    assert HYPERPARAMETERS[KEY].label == "tau" and HYPERPARAMETERS[KEY].argument == "temperature"
    grid = hyperparameter_grid(compose_train(*SPHERE, "module.temperature=[0.1,0.2,0.5]"))
    assert grid.keys == (KEY,) and len(grid) == 3
    assert [setting.run_name_parts() for setting in grid.settings()] == [["tau=0.1"], ["tau=0.2"], ["tau=0.5"]]


def test_a_tuple_of_temperatures_gives_each_replica_the_value_and_gradients_of_its_own_tau() -> None:
    """The objective's value and gradients, and the chunked gradients the Riemannian steps take."""
    torch.manual_seed(0)
    temperatures = (0.1, 0.3, 1.7)
    features, weight = torch.randn(3, 6, 4, dtype=torch.float64), torch.randn(3, 3, 4, dtype=torch.float64)
    labels = torch.arange(3).repeat_interleave(2)
    batched = Objective("cross_entropy", label_smoothing=(0.0, 0.1, 0.2), temperature=temperatures)
    assert batched.inverse_temperature == tuple(1 / tau for tau in temperatures)
    assert batched.inverse_temperature_of(features).shape == (3, 1, 1)
    values, gradients = batched.value(features, weight, None, labels), batched.gradients(features, weight, None, labels)
    for r, (tau, smoothing) in enumerate(zip(temperatures, (0.0, 0.1, 0.2), strict=True)):
        alone = Objective("cross_entropy", label_smoothing=smoothing, temperature=tau)
        torch.testing.assert_close(values[r], alone.value(features[r], weight[r], None, labels), rtol=0, atol=1e-14)
        theirs = alone.gradients(features[r : r + 1], weight[r : r + 1], None, labels)
        for ours, reference in zip(gradients[:2], theirs[:2], strict=True):
            torch.testing.assert_close(ours[r], reference[0], rtol=0, atol=1e-14)
    chunked = chunked_data_gradients(features, weight, labels, batched, rows=4)
    for ours, reference in zip(chunked, gradients[:2], strict=True):
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-14)
    assert Objective("cross_entropy", temperature=(0.2, 0.2)).inverse_temperature_of(features) == pytest.approx(5.0)
    with pytest.raises(ValueError, match=r"module\.temperature=\(0\.1, 0\.0\)"):
        Objective("cross_entropy", temperature=(0.1, 0.0))
    with pytest.raises(ValueError, match="cross_entropy only"):
        Objective("mean_squared", temperature=(0.1, 0.2))


# Parity: a replica group trains as a run of its own τ.


def train_sphere(temperature: float | list[float], replicas: int, step_size: float = 1.0, steps: int = 150):
    """F and W after ``steps`` full-batch Riemannian steps of a spherical UFM (C = 4, N = 3, p = 5, float64) whose
    replica groups take ``temperature`` (a list: one group per τ, each of ``replicas`` copies)."""
    grid = HyperparameterGrid.of({KEY: temperature}) if isinstance(temperature, list) else None
    network = UnconstrainedFeatures(4, 3, 5, replicas=replicas, seed=3, bias=False, normalize=True,
                                    hyperparameters=grid)  # fmt: skip
    optimizer = partial(torch.optim.SGD, lr=step_size)
    module = CollapseModule(network, optimizer, loss="cross_entropy", fused_steps=40, temperature=temperature)
    L.seed_everything(0, verbose=False)
    quiet_trainer(Path("unused"), steps).fit(module, datamodule=UFMDataModule(num_classes=4, samples_per_class=3))
    return network.features.detach(), network.head.weight.detach()


def test_each_replica_group_trains_as_a_separate_run_of_its_temperature_to_1e_12() -> None:
    temperatures, copies = [0.1, 0.25, 1.0], 2
    features, weight = train_sphere(temperatures, copies)
    assert features.shape[0] == len(temperatures) * copies
    for group, tau in enumerate(temperatures):
        alone_features, alone_weight = train_sphere(tau, copies)
        for copy in range(copies):
            r = group * copies + copy
            torch.testing.assert_close(features[r], alone_features[copy], rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(weight[r], alone_weight[copy], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(features[0], features[copies])  # the temperatures do differ


# Every replica knows its τ.


def test_records_runs_summary_and_hparams_carry_each_replicas_temperature(tmp_path: Path) -> None:
    run = tmp_path / "run"
    final = fit_in_process(
        run, *SPHERE, "module.temperature=[0.1,0.5]", "model.replicas=2", "data.num_classes=4",
        "data.samples_per_class=2", "model.feature_dim=5", "optimizer.lr=1.0", "trainer.max_steps=60",
        "callbacks.progress.refresh_rate=0",
    )  # fmt: skip
    assert [(r[KEY], r["copy"]) for r in final["replicas"]] == [(0.1, 0), (0.1, 1), (0.5, 0), (0.5, 1)]
    assert {record[KEY] for record in read_records(run / "metrics.jsonl")} == {0.1, 0.5}
    runs = {path.parent.relative_to(run / "tb").as_posix() for path in (run / "tb").rglob("events.out.tfevents.*")}
    assert {"tau=0.1/rep=0", "tau=0.1/rep=1", "tau=0.5/rep=0", "tau=0.5/rep=1", "tau=0.1", "tau=0.5"} <= runs
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_train(*SPHERE)))
    table = summary_table(read_jobs(run))
    assert [(row[KEY], row["run"]) for row in table.rows] == [
        (0.1, "tau=0.1/rep=0"), (0.1, "tau=0.1/rep=1"), (0.5, "tau=0.5/rep=0"), (0.5, "tau=0.5/rep=1")
    ]  # fmt: skip
    assert [session.hyperparameters[KEY] for session in sweep_sessions(table, tmp_path / "hparams")] == [
        0.1, 0.1, 0.5, 0.5
    ]  # fmt: skip


def test_a_failed_job_summarises_the_temperatures_its_grid_asks_for() -> None:
    config = OmegaConf.to_container(compose_train(*SPHERE, "module.temperature=[0.1,0.2]", "optimizer.lr=[0.5,1]"))
    assert [(row[KEY], row["optimizer.lr"], row["run"]) for row in expected_replicas(config)] == [
        (0.1, 0.5, "tau=0.1/lr=0.5/rep=0"), (0.1, 1.0, "tau=0.1/lr=1/rep=0"),
        (0.2, 0.5, "tau=0.2/lr=0.5/rep=0"), (0.2, 1.0, "tau=0.2/lr=1/rep=0"),
    ]  # fmt: skip


# The checks, one line each.


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((*SPHERE, "module.temperature=[0.1,0]"), r"^module\.temperature=\[0\.1, 0\] is not allowed; it must be .*> 0"),
        ((*SPHERE, "module.temperature=[0.2,-1]"), r"^module\.temperature=\[0\.2, -1\] is not allowed"),
        ((*SPHERE, "module.temperature=[]"), r"^module\.temperature=\[\] is not allowed"),
        ((*SPHERE[:2], "module.temperature=[0.1,0.2]"),
         r"^module\.temperature=\[0\.1, 0\.2\] needs module\.loss=cross_entropy \(now sum_squared\)"),
        ((*SPHERE[:2], "module.loss=mean_squared", "module.temperature=[0.1,0.2]"),
         r"^module\.temperature=\[0\.1, 0\.2\] needs module\.loss=cross_entropy \(now mean_squared\)"),
        (("module.loss=cross_entropy", "module.temperature=[0.1,0.2]"),
         r"^module\.temperature=\[0\.1, 0\.2\] applies to the spherical UFM only"),
    ],
)  # fmt: skip
def test_a_bad_temperature_list_is_one_line_naming_its_values(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(compose_train(*overrides))
    assert "\n" not in str(error.value)


def test_a_good_temperature_list_passes() -> None:
    validate_config(compose_train(*SPHERE, "module.temperature=[0.1,0.2,0.5]", "model.replicas=2"))
    validate_config(compose_train(*SPHERE, "module.temperature=[0.1,0.2]", "optimizer.lr=[1,2]"))


@pytest.mark.parametrize(
    ("overrides", "start"),
    [
        ((*SPHERE, "module.temperature=[0.1,-0.5]"), "module.temperature=[0.1, -0.5]"),
        ((*SPHERE[:2], "module.temperature=[0.1,0.2]"), "module.temperature=[0.1, 0.2] needs module.loss="),
    ],
)
def test_ufm_train_refuses_a_bad_temperature_list_with_one_line_and_exit_2(
    tmp_path: Path, overrides: tuple[str, ...], start: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert ufm_train_main(monkeypatch, *overrides, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}/runs/run") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ufm-train")]
    assert len(errors) == 1 and errors[0].startswith(f"ufm-train: error: {start}"), errors
