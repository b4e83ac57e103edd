"""Training a backbone logs every collapse metric, measured in one pass per evaluation; the comparison runs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_module
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from ufm_torch.callbacks.collapse_monitor import CollapseMonitor

from tests.conftest import run_ufm_train
from ufm_torch.analysis.comparison import comparison_configs, run_comparison
from ufm_torch.cli.train import build_and_fit
from ufm_torch.data import DigitsDataModule
from ufm_torch.metrics import NC_METRIC_NAMES, SNC_METRIC_NAMES
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.models import MLP
from ufm_torch.run_folder.metrics_log import read_metrics
from ufm_torch.training.module import CollapseModule

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
    result = run_ufm_train(
        "model=mlp",
        "data=digits",
        "module.loss=mean_squared",
        "optimizer=momentum",
        "trainer.max_steps=30",
        "trainer.log_every_n_steps=10",
        "callbacks.progress.refresh_rate=0",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    records = read_metrics(run / "metrics.jsonl")
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
    evaluations = len(read_metrics(tmp_path / "metrics.jsonl"))
    assert evaluations == len(evaluation_steps(12, points_per_decade=3))
    assert sum(evaluation_rows) == evaluations * (40 + len(datamodule.splits.heldout_labels))


def test_comparison_trains_backbone_and_ufm_with_the_same_shape_and_draws_both(tmp_path: Path) -> None:
    with initialize_config_module(config_module="ufm_torch.conf", version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=[
                "experiment=compare_digits", f"run_dir={tmp_path}", "data.num_classes=3", "data.samples_per_class=6",
                "data.batch_size=6", "model.feature_dim=4", "model.width=16", "trainer.max_steps=12",
                "comparison.ufm.trainer.max_steps=12", "ufm_torch.callbacks.collapse_monitor.every_n_steps=4",
                "~callbacks.progress", "~callbacks.checkpoint",
            ],
        )
    configs = comparison_configs(cfg)
    shapes = {
        name: (config.model.num_classes, config.data.samples_per_class, config.model.feature_dim)
        for name, config in configs.items()
    }
    assert shapes == {"backbone": (3, 6, 4), "ufm": (3, 6, 4)}
    assert configs["ufm"].module.loss == "sum_squared" and configs["backbone"].module.loss == "mean_squared"
    metrics = run_comparison(cfg, build_and_fit)
    assert {"backbone/train/loss", "ufm/train/loss"} <= set(metrics)
    assert (tmp_path / "figures" / "compare.png").stat().st_size > 0
    for name in ("backbone", "ufm"):
        records = read_metrics(tmp_path / name / "metrics.jsonl")
        assert records[-1]["step"] == 12
