"""Checkpoints of a run folder: checked before training resumes from one (one readable line per problem), and
written atomically beside their final name."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from ufm_torch.errors import ConfigError
from ufm_torch.run_folder.layout import CHECKPOINTS_DIR, LAST_CHECKPOINT, TEMPORARY_SUFFIX


def resume_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """The file ``ckpt_path`` names: ``last`` is ``<run_dir>/checkpoints/last.ckpt`` (None when a run has none yet,
    so that ``ckpt_path=last`` starts a fresh run), anything else is a path."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = Path(run_dir) / CHECKPOINTS_DIR / LAST_CHECKPOINT
        return last if last.is_file() else None
    return Path(ckpt_path).expanduser()


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dict in ``path``; :class:`ConfigError` naming the file when it is missing, truncated, not a
    torch checkpoint or has no ``state_dict``."""
    if path.is_dir():
        inside = next(
            (file for file in (path / LAST_CHECKPOINT, path / CHECKPOINTS_DIR / LAST_CHECKPOINT) if file.is_file()),
            None,
        )
        hint = f"ckpt_path={inside}" if inside else "a checkpoint file (.ckpt)"
        raise ConfigError(
            f"ckpt_path={path} is a folder, not a checkpoint file; give {hint}, or resume a run with "
            "hydra.run.dir=<its folder> ckpt_path=last"
        )
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path} does not exist; give a checkpoint file or ckpt_path=last")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise ConfigError(f"ckpt_path={path} is not a readable checkpoint ({reason}): damaged or truncated") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"ckpt_path={path} holds no Lightning checkpoint (no state_dict)")
    return checkpoint


def check_compatible(path: Path, checkpoint: dict[str, Any], module: nn.Module) -> None:
    """:class:`ConfigError` when the checkpoint's parameters do not fit ``module`` (another network, or another C, N,
    p or number of replicas): the first key that is missing, unexpected or of another shape, or a nonzero bias for a
    bias-free head (whose ``head.bias`` is a zero buffer of the same key and shape)."""
    saved: dict[str, torch.Tensor] = checkpoint["state_dict"]
    expected = module.state_dict()
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    if missing:
        raise ConfigError(f"ckpt_path={path} does not fit this config: it has no {missing[0]} (another model?)")
    if unexpected:
        raise ConfigError(f"ckpt_path={path} does not fit this config: it has {unexpected[0]}, which this model lacks")
    trained = dict(module.named_parameters())
    for key, tensor in expected.items():
        if key.endswith("head.bias") and key not in trained and bool(saved[key].any()):
            raise ConfigError(
                f"ckpt_path={path} does not fit this config: it has a trained {key}, but model.bias=false here"
            )
        if tuple(saved[key].shape) != tuple(tensor.shape):
            raise ConfigError(
                f"ckpt_path={path} does not fit this config: {key} has shape {tuple(saved[key].shape)} there and "
                f"{tuple(tensor.shape)} here (another C, N, p or number of replicas?)"
            )


def check_resume(ckpt_path: str | None, run_dir: Path, module: nn.Module) -> Path | None:
    """The checkpoint file to resume from, read and checked against ``module`` before training (None: none)."""
    path = resume_path(ckpt_path, run_dir)
    if path is not None:
        check_compatible(path, read_checkpoint(path), module)
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` that writes a local checkpoint to ``<name>.tmp`` in its own folder, flushes
    it to disk and renames it over ``<name>``: a kill or a full disk leaves the previous checkpoint whole, and no
    temporary file behind (it is removed when the write fails).

    Lightning's own writes through an fsspec transaction whose temporary file lies in the system's temporary folder;
    when that is another file system than the run folder (``/tmp`` on tmpfs), the final step is a copy, which a full
    disk or a kill leaves half-written. Other file systems (``s3://``, …) keep Lightning's way.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically."""
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
        try:
            with temporary.open("wb") as file:
                file.write(buffer.getbuffer())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
