"""Hydra callback that summarises a multirun when its last job returns: CSV, figures, TensorBoard HPARAMS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepAggregator(Callback):
    """At ``on_multirun_end``, runs :func:`ufm_torch.cli.plot.aggregate` on ``hydra.sweep.dir``.

    Runs in the launching process for every launcher (basic, joblib, submitit), after all jobs have written
    their ``status.json``; failed and diverged jobs appear in the summary with their status and error line.
    Registered in ``conf/hydra/default.yaml``; ``ufm-plot <sweep dir>`` does the same later.
    """

    def __init__(self, tensorboard: bool = True) -> None:
        self.tensorboard = tensorboard

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Aggregate the sweep folder and print where the summary is."""
        from ufm_torch.cli.plot import aggregate

        result = aggregate(Path(config.hydra.sweep.dir), tensorboard=self.tensorboard)
        print(result.describe())
