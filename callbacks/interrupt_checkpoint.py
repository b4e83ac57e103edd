"""Save ``last.ckpt`` when a run is stopped by SIGTERM or Ctrl-C, so ``ckpt_path=last`` resumes where it stopped."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ufm_torch.run_folder.layout import LAST_CHECKPOINT


class InterruptCheckpoint(L.Callback):
    """On SIGTERM (Lightning stops between batches) or KeyboardInterrupt, write ``<dirpath>/last.ckpt``.

    The state is consistent: Lightning raises the interruption after a batch has finished. Under ``ufm-train`` a
    Ctrl-C arrives the same way: its SIGINT handler sends SIGTERM during ``fit``
    (:class:`ufm_torch.cli.process.StopSignal`); in another program a KeyboardInterrupt may come in the middle of a
    batch. The file is written through the trainer's checkpoint IO (under ``ufm-train`` beside its final name, then
    renamed: :class:`ufm_torch.run_folder.checkpoints.AtomicCheckpointIO`). A SIGKILL cannot be caught; the periodic
    checkpoints cover it.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Checkpoint the finished batches when the run was interrupted (not when it failed)."""
        if isinstance(exception, SIGTERMException | KeyboardInterrupt):
            trainer.save_checkpoint(self.dirpath / LAST_CHECKPOINT, weights_only=False)
