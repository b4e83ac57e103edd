"""Training a backbone logs every collapse metric, measured in one pass per evaluation; the comparison runs."""

from __future__ import annotations

import csv
import shutil
import subprocess
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import UFM_PLOT, fit_in_process, run_ufm_train
from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
from ufm_torch.data import DigitsDataModule
from ufm_torch.metrics import NC_METRIC_NAMES, SNC_METRIC_NAMES
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.models import MLP
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.training.module import CollapseModule

SIDES = ("backbone", "ufm", "ufm_regularized")
METRIC_TAGS = (
    {f"collapse/{name}" for name in NC_METRIC_NAMES}
    | {f"strong_collapse/{name}" for name in SNC_METRIC_NAMES}
    | {"train/loss", "train/accuracy", "heldout/accuracy"}
)


def scalar_tags(log_dir: Path) -> set[str]:
    """Scalar tags in the TensorBoard events of one run folder."""
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def test_mlp_on_digits_logs_every_metric_tag(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit_in_process(
        run,
        "model=mlp",
        "data=digits",
        "module.loss=mean_squared",
        "optimizer=momentum",
        "trainer.max_steps=30",
        "trainer.log_every_n_steps=10",
        "callbacks.progress.refresh_rate=0",
    )
    records = read_records(run / "metrics.jsonl")
    assert [record["step"] for record in records] == evaluation_steps(30)
    for record in records:
        assert set(record) >= METRIC_TAGS
        assert (record["replica"], record["init_scale"], record["copy"], record["seed"]) == (0, None, 0, 0)
    assert scalar_tags(run / "tb" / "backbone") >= METRIC_TAGS
    assert "train/loss" in scalar_tags(run / "tb")


def test_training_features_are_computed_once_per_evaluation(tmp_path: Path) -> None:
    datamodule = DigitsDataModule(num_classes=4, samples_per_class=10, batch_size=10, eval_batch_size=16)
    network = MLP(64, 4, feature_dim=8, width=16, depth=2)
    module = CollapseModule(network, optimizer=partial(torch.optim.SGD, lr=0.05), loss="mean_squared")
    evaluation_rows: list[int] = []
    network.body.register_forward_hook(
        lambda layer, inputs, output: None if layer.training else evaluation_rows.append(inputs[0].shape[0])
    )
    trainer = L.Trainer(
        max_steps=12, callbacks=[CollapseMonitor(str(tmp_path), points_per_decade=3)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
        precision="64-true",
    )
    trainer.fit(module, datamodule=datamodule)
    evaluations = len(read_records(tmp_path / "metrics.jsonl"))
    assert evaluations == len(evaluation_steps(12, points_per_decade=3))
    assert sum(evaluation_rows) == evaluations * (40 + len(datamodule.splits.heldout_labels))


@pytest.mark.slow
def test_comparison_is_one_multirun_of_backbone_and_both_ufms_with_the_same_shape(tmp_path: Path) -> None:
    folder = tmp_path / "compare"
    result = run_ufm_train(
        "experiment=compare_digits", f"hydra.run.dir={folder}", "data.num_classes=3", "data.samples_per_class=6",
        "model.feature_dim=4", "trainer.max_steps=12", "callbacks.collapse_monitor.every_n_steps=4",
        "~callbacks.progress", "~callbacks.checkpoint", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    configs = {name: yaml.safe_load((folder / name / ".hydra" / "config.yaml").read_text()) for name in SIDES}
    shapes = {
        name: (config["data"]["num_classes"], config["data"]["samples_per_class"], config["model"]["feature_dim"])
        for name, config in configs.items()
    }
    assert shapes == dict.fromkeys(SIDES, (3, 6, 4))
    assert configs["ufm"]["module"]["loss"] == "sum_squared" and configs["backbone"]["module"]["loss"] == "mean_squared"
    regularized, backbone_decay = configs["ufm_regularized"]["module"], configs["backbone"]["optimizer"]["weight_decay"]
    assert regularized["loss"] == "mean_squared"
    assert regularized["feature_decay"] == regularized["classifier_decay"] == backbone_decay
    for name in SIDES:
        assert read_records(folder / name / "metrics.jsonl")[-1]["step"] == 12
    assert "optimum/loss_gap" in read_records(folder / "ufm_regularized" / "metrics.jsonl")[-1]
    assert (folder / "figures" / "compare.png").stat().st_size > 0
    summary = list(csv.DictReader((folder / "sweep_summary.csv").open()))
    assert [row["job"] for row in summary] == list(SIDES)
    assert all(float(row["collapse/nc1"]) >= 0 for row in summary)


@pytest.mark.slow
def test_ufm_plot_on_a_comparison_folder_writes_both_models_metrics(tmp_path: Path) -> None:
    folder = tmp_path / "compare"
    trained = run_ufm_train(
        "experiment=compare_digits", f"hydra.run.dir={folder}", "data.num_classes=3", "data.samples_per_class=6",
        "model.feature_dim=4", "trainer.max_steps=6", "~callbacks.progress", "~callbacks.checkpoint", cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    written = (folder / "sweep_summary.csv").read_bytes()
    for path in (folder / "sweep_summary.csv", folder / "figures" / "compare.png", folder / "ufm" / "figures"):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    plotted = subprocess.run([str(UFM_PLOT), str(folder)], capture_output=True, text=True, cwd=tmp_path)
    assert plotted.returncode == 0, plotted.stderr
    assert (folder / "sweep_summary.csv").read_bytes() == written
    assert (folder / "figures" / "compare.png").stat().st_size > 0
    assert (folder / "ufm" / "figures" / "collapse.png").stat().st_size > 0
