"""TensorBoard views of the collapse metrics: one run per replica, chart layout, HPARAMS and Gram images."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from torch.utils.tensorboard.summary import custom_scalars, hparams, image

from ufm_torch.run_folder.event_writer import EventFileWriter, ScalarEventEncoder

NC_TAGS = ["collapse/nc1", "collapse/nc2_etf", "collapse/nc3", "collapse/nc4"]
SNC_TAGS = ["strong_collapse/snc1", "strong_collapse/snc2", "strong_collapse/snc3", "strong_collapse/dist_S"]
CUSTOM_SCALARS_LAYOUT = {
    "Neural collapse": {"NC1–NC4": ["Multiline", NC_TAGS]},
    "Strong neural collapse": {"SNC1–SNC3 and distance to S": ["Multiline", SNC_TAGS]},
}


def open_replica_writers(log_dir: Path, run_names: list[str]) -> list[EventFileWriter]:
    """One synchronous event writer per replica run under ``log_dir``, each with the custom-scalars layout."""
    writers = [EventFileWriter(log_dir / name) for name in run_names]
    layout = custom_scalars(CUSTOM_SCALARS_LAYOUT)
    for writer in writers:
        writer.add_summary(layout, step=0)
    return writers


@functools.lru_cache(maxsize=16)
def _scalar_event_encoder(tags: tuple[str, ...]) -> ScalarEventEncoder:
    """The encoder for ``tags``, built once: every evaluation writes the same tags."""
    return ScalarEventEncoder(tags)


def add_scalar_rows(
    writers: Sequence[EventFileWriter], tags: Sequence[str], rows: Sequence[Sequence[float]], step: int
) -> None:
    """Row ``r`` of ``rows`` (one value per tag) as one event in ``writers[r]``, all at one wall time.

    Rows beyond the last writer are not written.
    """
    encoder = _scalar_event_encoder(tuple(tags))
    wall_time = time.time()
    for writer, row in zip(writers, rows, strict=False):
        writer.write_event(encoder.encode(row, step, wall_time))


def add_scalars_event(writer: EventFileWriter, values: dict[str, float], step: int) -> None:
    """All ``tag: value`` pairs of one evaluation as a single event (one summary with many values)."""
    add_scalar_rows([writer], list(values), [list(values.values())], step)


def add_image(writer: EventFileWriter, tag: str, image_hwc: np.ndarray, step: int) -> None:
    """An RGB image (height × width × 3, uint8) as a PNG image summary."""
    writer.add_summary(image(tag, image_hwc, dataformats="HWC"), step)


def write_hparams(
    writer: EventFileWriter, hyperparameters: dict[str, Any], final_metrics: dict[str, float], step: int
) -> None:
    """An HPARAMS entry in ``writer``'s own run (not a new sub-run): hyperparameters against ``hp/…`` metrics."""
    metric_dict = {f"hp/{name.split('/')[-1]}": value for name, value in final_metrics.items()}
    for summary in hparams(hyperparameters, metric_dict):
        writer.add_summary(summary, step=0)
    add_scalars_event(writer, metric_dict, step)


def simplex_etf_gram(num_classes: int) -> np.ndarray:
    """Gram matrix of the simplex ETF: ``C/(C−1) I − 1/(C−1) 11ᵀ`` (Papyan et al., NC2)."""
    return (num_classes * np.eye(num_classes) - np.ones((num_classes, num_classes))) / (num_classes - 1)


GRAM_IMAGE_PIXELS = 256
"""Height of a Gram-matrix image when every class gets at least one pixel: cells shrink as C grows (16 pixels at
most), so that encoding the image stays cheap for many classes."""


def gram_comparison_image(gram: np.ndarray, cell_pixels: int | None = None) -> np.ndarray:
    """HWC uint8 image: ``gram`` (M̃ᵀM̃) and the simplex ETF side by side, colours on [−1, 1] (coolwarm).

    ``cell_pixels`` per matrix entry; by default ``min(16, max(1, GRAM_IMAGE_PIXELS // C))``.
    """
    num_classes = gram.shape[0]
    cell_pixels = cell_pixels or min(16, max(1, GRAM_IMAGE_PIXELS // num_classes))
    separator = np.full((num_classes, 1), np.nan)
    panel = np.concatenate([gram, separator, simplex_etf_gram(num_classes)], axis=1)
    colours = colormaps["coolwarm"]((np.nan_to_num(panel, nan=0.0) + 1.0) / 2.0)[..., :3]
    colours[np.isnan(panel)] = 1.0
    image = np.kron(colours, np.ones((cell_pixels, cell_pixels, 1)))
    return (255 * image).astype(np.uint8)

