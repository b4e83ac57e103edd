"""Save ``last.ckpt`` when training ends, so that a finished run's last checkpoint holds its final state."""

from __future__ import annotations

from pathlib import Path

import lightning as L

from ufm_torch.run_folder.layout import LAST_CHECKPOINT


class FinalCheckpoint(L.Callback):
    """At ``on_train_end`` (``max_steps`` reached, or an early stop), write ``<dirpath>/last.ckpt``.

    ``ModelCheckpoint`` with ``every_n_train_steps = k`` saves only at multiples of k, so without this a 7 300-step
    run with k = 5 000 would end with a ``last.ckpt`` of step 5 000. A run that fails or diverges raises before
    ``on_train_end`` and keeps its last periodic checkpoint; a killed and resumed run ends with the same file as an
    uninterrupted one. Written through the trainer's checkpoint IO, so atomically.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Checkpoint the final state."""
        trainer.save_checkpoint(self.dirpath / LAST_CHECKPOINT, weights_only=False)
