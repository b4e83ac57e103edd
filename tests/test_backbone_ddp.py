"""Two DDP processes measure a backbone exactly as one process does on the same weights."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate

from tests.conftest import run_ufm_train
from ufm_torch.metrics.network import measure_backbone
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


def test_ddp_spawn_metrics_equal_single_process_metrics_on_the_same_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = run_ufm_train(
        *SETTINGS,
        "trainer=ddp_cpu",
        "trainer.precision=64-true",  # float64 like the single-process measurement below (backbones default to 32-true)
        "trainer.max_steps=20",
        "callbacks.checkpoint.every_n_train_steps=20",
        "callbacks.progress.refresh_rate=0",
        f"hydra.run.dir={run}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    final = read_records(run / "metrics.jsonl")[-1]
    assert final["step"] == 20

    with initialize_config_module(config_module="ufm_torch.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*SETTINGS, f"run_dir={run}"])
    network = instantiate(cfg.model).double()
    module = instantiate(cfg.module, network=network, optimizer=None)
    checkpoint = torch.load(run / "checkpoints" / "step=20.ckpt", map_location="cpu", weights_only=False)
    module.load_state_dict(checkpoint["state_dict"])
    single = measure_backbone(module, instantiate(cfg.data)).values

    assert set(single) <= set(final)
    for tag, value in single.items():
        assert abs(float(value) - final[tag]) <= 1e-10, tag
