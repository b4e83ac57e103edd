"""Two DDP processes measure a backbone exactly as one process does on the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import compose_train, run_ufm_train
from tests.test_backbones import measure_backbone
from ufm_torch.cli.train import final_metrics
from ufm_torch.run_folder.metrics_log import read_records

# 9 classes of 25 images: 225 samples, so the two processes hold shards of 113 and 112.
SETTINGS = (
    "model=mlp",
    "data=digits",
    "data.num_classes=9",
    "data.samples_per_class=25",
    "data.batch_size=25",
    "model.batch_norm=true",
    "model.feature_dim=12",
    "model.width=32",
    "module.loss=mean_squared",
    "optimizer=momentum",
)


@pytest.mark.slow
def test_ddp_spawn_metrics_equal_single_process_metrics_on_the_same_weights(tmp_path: Path) -> None:
    """``ufm-train`` in a process of its own, which spawns the two DDP processes."""
    run = tmp_path / "run"
    result = run_ufm_train(
        *SETTINGS,
        "trainer=ddp_cpu",
        "trainer.precision=64-true",  # float64 like the single-process measurement below (backbones default to 32-true)
        "trainer.max_steps=20",
        "callbacks.checkpoint.every_n_train_steps=20",
        "callbacks.progress.refresh_rate=0",
        "callbacks.collapse_monitor.layers=[network.body.3]",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    final = read_records(run / "metrics.jsonl")[-1]
    assert final["step"] == 20
    # status.json holds the whole final evaluation under DDP too (read from what rank 0 wrote), not only the trainer's
    status = json.loads((run / "status.json").read_text())
    assert status["final_metrics"] == final_metrics(read_records(run / "metrics.jsonl"))
    assert status["final_metrics"]["replicas"][0]["collapse/nc1"] == final["collapse/nc1"]

    cfg = compose_train(*SETTINGS, run_dir=run)
    network = instantiate(cfg.model).double()
    module = instantiate(cfg.module, network=network, optimizer=None)
    checkpoint = torch.load(run / "checkpoints" / "step=20.ckpt", map_location="cpu", weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    single = measure_backbone(module, instantiate(cfg.data), "network.body.3")

    records = read_records(run / "metrics.jsonl", every_layer=True)
    last = {(record["layer"], record["split"]): record for record in records if record["step"] == 20}
    assert set(last) == {(entry.layer, entry.split) for entry in single.layers}
    for entry in single.layers:
        recorded = last[entry.layer, entry.split]
        assert set(entry.values) <= set(recorded)
        for tag, value in entry.values.items():
            assert abs(float(value) - recorded[tag]) <= 1e-10, (entry.layer, entry.split, tag)
