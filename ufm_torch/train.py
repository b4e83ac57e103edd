"""The Hydra entry point ``ufm-train``: validate the config, build data, network, module and trainer, fit."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig

import conf
from ufm_torch.validation import ConfigError, check_group_choices, validate_config

CONFIG_DIR = Path(conf.__file__).parent


def build_and_fit(cfg: DictConfig) -> dict[str, Any]:
    """Seed, instantiate every object named by ``cfg`` and train; returns the trainer's final logged metrics."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    network = instantiate(cfg.model)
    module = instantiate(cfg.module, network=network, optimizer=instantiate(cfg.optimizer))
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    loggers = [instantiate(logger) for logger in cfg.logger.values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return {key: float(value) for key, value in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="pkg://conf", config_name="train")
def train(cfg: DictConfig) -> dict[str, Any]:
    """Hydra task: one training run in its own run folder."""
    try:
        validate_config(cfg)
    except ConfigError as error:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        print(f"ufm-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    metrics = build_and_fit(cfg)
    print(f"Run folder: {cfg.run_dir}")
    return metrics


def main() -> None:
    """Console script: reject unknown config-group options in one line (exit 2), then hand over to Hydra."""
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        check_group_choices(sys.argv[1:], CONFIG_DIR)
    except ConfigError as error:
        print(f"ufm-train: error: {error}", file=sys.stderr)
        sys.exit(2)
    train()


if __name__ == "__main__":
    main()
