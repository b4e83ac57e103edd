"""Per-replica hyperparameters (issue 24): lists of λ, s and η form a grid of replica groups in one batched tensor,
every replica trains exactly as it would alone, knows its values everywhere a run is read, and is checked per
replica."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import compose_train, fit_in_process, quiet_trainer
from ufm_torch.analysis.report import write_report
from ufm_torch.analysis.sweep_table import summary_table
from ufm_torch.cli.validation import validate_config
from ufm_torch.data import UFMDataModule
from ufm_torch.errors import ConfigError
from ufm_torch.hyperparameters import HyperparameterGrid, HyperparameterSetting, hyperparameter_grid
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.run_folder.jobs import expected_replicas, read_jobs
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.training.module import CollapseModule
from ufm_torch.training.replica_sgd import ReplicaSGD

SHAPE = ("data.num_classes=4", "data.samples_per_class=5", "model.feature_dim=8", "model.init_scale=0.1")


def test_lists_on_several_keys_form_their_cartesian_product_first_key_outermost() -> None:
    grid = HyperparameterGrid.of({"optimizer.lr": [0.5, 1.0], "module.classifier_decay": [0.1, 0.2, 0.3]})
    settings = grid.settings()
    assert len(grid) == len(settings) == 6
    assert [dict(setting) for setting in settings[:3]] == [
        {"module.classifier_decay": 0.1, "optimizer.lr": 0.5},
        {"module.classifier_decay": 0.1, "optimizer.lr": 1.0},
        {"module.classifier_decay": 0.2, "optimizer.lr": 0.5},
    ]
    assert settings[0].run_name_parts() == ["lam_W=0.1", "lr=0.5"]
    assert HyperparameterGrid().settings() == [HyperparameterSetting()]


def test_keys_of_one_interpolation_vary_together_and_separate_lists_multiply() -> None:
    tied = compose_train("+decay=[0.1,0.2]", "module.feature_decay=${decay}", "module.classifier_decay=${decay}")
    assert [axis.keys for axis in hyperparameter_grid(tied).axes] == [
        ("module.classifier_decay", "module.feature_decay")
    ]
    follows = compose_train("module.feature_decay=[0.1,0.2]", "module.classifier_decay=${module.feature_decay}")
    assert len(hyperparameter_grid(follows)) == 2
    product = compose_train("module.feature_decay=[0.1,0.2]", "module.classifier_decay=[0.1,0.2]")
    assert len(hyperparameter_grid(product)) == 4


def test_replicas_are_setting_major_and_copy_k_of_every_setting_starts_alike() -> None:
    grid = HyperparameterGrid.of({"module.feature_decay": [0.1, 0.2]})
    network = UnconstrainedFeatures(4, 5, 8, init_scale=[1.0, 0.1], replicas=2, hyperparameters=grid)
    identities = network.replica_identities()
    assert [(identity.hyperparameters["module.feature_decay"], identity.init_scale, identity.copy)
            for identity in identities] == [(lam, scale, copy) for lam in (0.1, 0.2) for scale in (1.0, 0.1)
                                            for copy in (0, 1)]  # fmt: skip
    assert torch.equal(network.features[0], network.features[4])
    assert torch.equal(network.features[3], network.features[7])
    assert not torch.equal(network.features[0], network.features[1])
    assert UnconstrainedFeatures(4, 5, 8).replica_identities()[0].hyperparameters == HyperparameterSetting()


# Parity: a replica group trains exactly as a run of its own.


def train(loss: str, lists: dict[str, list[float]], momentum: float, steps: int = 200) -> list[torch.Tensor]:
    """F, W and b after ``steps`` full-batch steps of a UFM whose replica groups take ``lists`` (a number when a
    list holds one value), C = 4, N = 5, p = 8, on the CPU in float64."""
    grid = HyperparameterGrid.of({key: value for key, value in lists.items() if len(value) > 1})
    network = UnconstrainedFeatures(4, 5, 8, init_scale=0.1, hyperparameters=grid)
    values = {key.rpartition(".")[2]: value if len(value) > 1 else value[0] for key, value in lists.items()}
    optimizer = partial(torch.optim.SGD, lr=values.pop("lr"), momentum=momentum)
    module = CollapseModule(network, optimizer, loss=loss, **values)
    L.seed_everything(0, verbose=False)
    quiet_trainer(Path("unused"), steps).fit(module, datamodule=UFMDataModule(num_classes=4, samples_per_class=5))
    return [network.features.detach(), network.head.weight.detach(), network.head.bias.detach()]


def separate_runs(loss: str, lists: dict[str, list[float]], momentum: float) -> list[list[torch.Tensor]]:
    """The parameters of the batched run, and of each of its replica groups trained alone."""
    batched = train(loss, lists, momentum)
    settings = HyperparameterGrid.of({key: value for key, value in lists.items() if len(value) > 1}).settings()
    single = [train(loss, {key: [setting.get(key, value[0])] for key, value in lists.items()}, momentum)
              for setting in settings]  # fmt: skip
    return [[parameter[r] for parameter in batched] for r in range(len(settings))], [
        [parameter[0] for parameter in alone] for alone in single
    ]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_per_replica_decays_of_the_squared_error_train_bit_for_bit_as_separate_runs(momentum: float) -> None:
    lists = {"module.classifier_decay": [1e-3, 5e-2], "module.feature_decay": [2e-3, 3e-2],
             "module.bias_decay": [0.0, 1e-2], "optimizer.lr": [0.4]}  # fmt: skip
    batched, single = separate_runs("mean_squared", lists, momentum)
    assert len(batched) == 8
    for replica, alone in zip(batched, single, strict=True):
        assert all(torch.equal(ours, theirs) for ours, theirs in zip(replica, alone, strict=True))


@pytest.mark.parametrize(
    ("loss", "momentum", "lists"),
    [
        ("mean_squared", 0.0, {"optimizer.lr": [0.2, 0.4], "module.feature_decay": [2e-3, 3e-2]}),
        ("sum_squared", 0.9, {"optimizer.lr": [0.005, 0.02], "module.classifier_decay": [0.1, 2.0]}),
        ("cross_entropy", 0.0, {"optimizer.lr": [0.5, 2.0], "module.label_smoothing": [0.0, 0.1],
                                "module.classifier_decay": [1e-3, 5e-2]}),
        ("cross_entropy", 0.9, {"optimizer.lr": [0.2, 0.4], "module.bias_decay": [0.0, 1e-2],
                                "module.feature_decay": [2e-3, 3e-2]}),
    ],
)  # fmt: skip
def test_per_replica_step_sizes_and_smoothing_train_as_separate_runs_to_1e_12(
    loss: str, momentum: float, lists: dict[str, list[float]]
) -> None:
    batched, single = separate_runs(loss, lists, momentum)
    for replica, alone in zip(batched, single, strict=True):
        for ours, theirs in zip(replica, alone, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_replica_sgd_is_torchs_sgd_with_a_step_size_per_replica() -> None:
    torch.manual_seed(0)
    start = torch.randn(3, 4, 5, dtype=torch.float64)
    gradients = [torch.randn(3, 4, 5, dtype=torch.float64) for _ in range(5)]
    step_sizes = (0.1, 0.2, 0.05)
    settings = {"momentum": 0.9, "weight_decay": 0.01, "nesterov": True}
    ours = start.clone().requires_grad_()
    optimizer = ReplicaSGD([ours], lr=step_sizes, **settings)
    for gradient in gradients:
        ours.grad = gradient.clone()
        optimizer.step()
    for r, step_size in enumerate(step_sizes):
        theirs = start[r].clone().requires_grad_()
        reference = torch.optim.SGD([theirs], lr=step_size, **settings)
        for gradient in gradients:
            theirs.grad = gradient[r].clone()
            reference.step()
        torch.testing.assert_close(ours[r], theirs, rtol=1e-14, atol=1e-15)


# Every replica knows its own values.


def test_records_runs_summary_and_hparams_name_each_replica_by_its_values(tmp_path: Path) -> None:
    run = tmp_path / "run"
    final = fit_in_process(
        run, *SHAPE, "module.loss=mean_squared", "module.feature_decay=[0.01,0.3]",
        "module.classifier_decay=${module.feature_decay}", "model.replicas=2", "optimizer.lr=1.0",
        "trainer.max_steps=3000", "callbacks.progress.refresh_rate=0",
    )  # fmt: skip
    replicas = final["replicas"]
    assert [(r["module.feature_decay"], r["module.classifier_decay"], r["copy"]) for r in replicas] == [
        (0.01, 0.01, 0), (0.01, 0.01, 1), (0.3, 0.3, 0), (0.3, 0.3, 1)
    ]  # fmt: skip
    assert all(r["optimum/classifier_gram"] < 1e-9 for r in replicas)
    records = read_records(run / "metrics.jsonl")
    assert {record["module.feature_decay"] for record in records} == {0.01, 0.3}
    runs = sorted(path.relative_to(run / "tb").as_posix() for path in (run / "tb").rglob("events.out.tfevents.*"))
    groups = ("lam_W=0.01/lam_H=0.01", "lam_W=0.3/lam_H=0.3")
    expected = [f"{group}/rep={copy}" for group in groups for copy in (0, 1)] + list(groups)
    assert sorted(str(Path(name).parent) for name in runs if "lam_" in name) == sorted(expected)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_train(*SHAPE)))
    write_report(run, tensorboard=False)
    rows = summary_table(read_jobs(run)).rows
    assert [(row["module.feature_decay"], row["run"]) for row in rows] == [
        (0.01, f"{groups[0]}/rep=0"), (0.01, f"{groups[0]}/rep=1"), (0.3, f"{groups[1]}/rep=0"),
        (0.3, f"{groups[1]}/rep=1"),
    ]  # fmt: skip
    assert (run / "figures" / "collapse.png").stat().st_size > 0


def test_a_failed_job_summarises_the_replicas_its_grid_asks_for() -> None:
    config = OmegaConf.to_container(compose_train("module.classifier_decay=[0.1,0.2]", "optimizer.lr=[0.5,1]"))
    expected = expected_replicas(config)
    assert [(row["module.classifier_decay"], row["optimizer.lr"], row["run"]) for row in expected] == [
        (0.1, 0.5, "lam_W=0.1/lr=0.5/rep=0"), (0.1, 1.0, "lam_W=0.1/lr=1/rep=0"),
        (0.2, 0.5, "lam_W=0.2/lr=0.5/rep=0"), (0.2, 1.0, "lam_W=0.2/lr=1/rep=0"),
    ]  # fmt: skip


# The checks, one line each.


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.num_classes=[3,4]"], r"^data\.num_classes=\[3, 4\] is not allowed: it sets the shapes .* -m "
                                     r"data\.num_classes=3,4\)$"),
        (["model.feature_dim=[8,16]"], r"^model\.feature_dim=\[8, 16\] is not allowed: it sets the shapes"),
        (["optimizer=adam", "optimizer.lr=[0.1,0.2]"],
         r"optimizer\.lr=\[0\.1, 0\.2\] gives each replica group its own step size, which needs optimizer=sgd"),
        (["model=mlp", "data=digits", "module.feature_decay=[0.1,0.2]"],
         r"module\.feature_decay=\[0\.1, 0\.2\] gives each replica group its own value, but model .*MLP trains no "
         r"replica groups"),
        (["module.bias_decay=[-1,0.1]"], r"module\.bias_decay=\[-1, 0\.1\] is not allowed; it must be a number >= 0 "
                                         r"or a non-empty list"),
        (["module.loss=mean_squared", "optimizer.lr=[0.5,2.5,3]"],
         r"but 2 groups are not: optimizer\.lr=2\.5 with module\.bias_decay=0 \(limit 2\); optimizer\.lr=3 with "
         r"module\.bias_decay=0 \(limit 2\); set allow_unstable=true"),
        (["module.loss=mean_squared", "optimizer.lr=1.9", "module.bias_decay=[0,0.5]"],
         r"optimizer\.lr=1\.9 with module\.bias_decay=0\.5 \(limit 1\.33333\)"),
    ],
)  # fmt: skip
def test_a_bad_per_replica_setting_is_one_line_naming_its_values(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(compose_train(*overrides))
    assert "\n" not in str(error.value)


def test_stable_per_replica_settings_pass() -> None:
    validate_config(compose_train("module.loss=mean_squared", "optimizer.lr=[0.5,1.5]", "module.bias_decay=[0,0.1]"))
    validate_config(compose_train("optimizer=momentum", "optimizer.lr=[0.01,0.02]", "module.label_smoothing=0"))


def test_a_replica_without_a_decay_has_no_optimum_and_the_others_do(tmp_path: Path) -> None:
    final = fit_in_process(
        tmp_path / "run", *SHAPE, "module.loss=mean_squared", "module.feature_decay=[0,0.05]",
        "module.classifier_decay=0.05", "optimizer.lr=1.0", "trainer.max_steps=2000", "logger=none",
        "callbacks.progress.refresh_rate=0",
    )  # fmt: skip
    without, with_decay = final["replicas"]
    assert without["optimum/classifier_gram"] is None and with_decay["optimum/classifier_gram"] < 1e-9
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert line["module.feature_decay"] == 0.05
