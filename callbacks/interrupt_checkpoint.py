"""Save ``last.ckpt`` when a run is stopped by SIGTERM or Ctrl-C, so ``ckpt_path=last`` resumes where it stopped."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException


class InterruptCheckpoint(L.Callback):
    """On SIGTERM (Lightning stops between batches) or KeyboardInterrupt, write ``<dirpath>/last.ckpt``.

    The state is consistent: Lightning raises the interruption after a batch has finished. The file is written
    through the trainer's checkpoint IO (Lightning serialises the whole checkpoint before it opens the file).
    A SIGKILL cannot be caught; the periodic checkpoints cover it.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Checkpoint the finished batches when the run was interrupted (not when it failed)."""
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            trainer.save_checkpoint(self.dirpath / "last.ckpt")
