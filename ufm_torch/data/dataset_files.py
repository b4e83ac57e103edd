"""The files of MNIST and CIFAR-10 on disk: read and checked by one reader, each mistake one line naming the file.

MNIST comes as IDX files (LeCun et al.): a big-endian magic number ``0x0000TTRR`` (``TT = 0x08``: unsigned bytes,
``RR`` the rank), ``RR`` big-endian 32-bit sizes, then the bytes; images have sizes ``(n, 28, 28)``, labels
``(n,)``, and the file holds exactly ``4 + 4·RR + n·28·28`` (or ``4 + 4 + n``) bytes. torchvision's legacy layout
holds ``(images, labels)`` tensors in ``MNIST/processed/{training,test}.pt``. CIFAR-10 comes as pickled batches
(Krizhevsky 2009): dictionaries with ``data``, a ``(n, 3072)`` uint8 array (1024 red, 1024 green, 1024 blue values
per image, rows first), and ``labels``, n integers in [0, 10); ``batches.meta`` holds the 10 ``label_names``.

Every reader raises :class:`DatasetFileError` for a file that is missing, truncated, padded, of another format or
of other sizes; what is read is exactly what was checked. Pickles are read by an unpickler that builds nothing but
numpy arrays and plain containers, so a damaged or foreign file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ufm_torch.errors import ConfigError

IDX_UBYTE = 0x08
"""The IDX type code of unsigned bytes, the only one MNIST uses."""

CIFAR_IMAGE_SIZE = 3 * 32 * 32
CIFAR_CLASSES = 10

PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}
"""What a CIFAR-10 batch may ask the unpickler to build: numpy arrays and scalars (any numpy version, any pickle
protocol)."""


class DatasetFileError(ConfigError):
    """A file of a data set is missing, damaged or misplaced; the message is one line naming the file and the fix.

    ``path`` is the damaged file when there is one (a download replaces it), else None.
    """

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def damaged(path: Path, problem: str, fix: str) -> DatasetFileError:
    """The one-line error for ``path``: what is wrong with it and how to fix it."""
    return DatasetFileError(f"{path} {problem}; {fix}", path=path)


class IdxHeaderError(ValueError):
    """What is wrong with an IDX file (without its name); :func:`read_idx` adds the name and the fix."""


def idx_header(path: Path, rank: int) -> tuple[int, ...]:
    """The sizes in the header of the IDX file ``path`` of unsigned bytes and rank ``rank``, checked against its
    length; raises :class:`DatasetFileError` (naming the file) for a short, long or foreign file."""
    size = path.stat().st_size
    header_bytes = 4 + 4 * rank
    with path.open("rb") as file:
        head = file.read(header_bytes)
    if len(head) < 4:
        raise IdxHeaderError(f"is truncated ({size} bytes, not even an IDX header)")
    (magic,) = struct.unpack(">I", head[:4])
    expected = (IDX_UBYTE << 8) | rank
    if magic != expected:
        raise IdxHeaderError(
            f"is not an IDX file of {rank}-dimensional unsigned bytes (magic number 0x{magic:08x}, expected "
            f"0x{expected:08x})"
        )
    if len(head) < header_bytes:
        raise IdxHeaderError(f"is truncated ({size} bytes, shorter than its {header_bytes}-byte header)")
    dims = struct.unpack(f">{rank}I", head[4:])
    expected_size = header_bytes + int(np.prod(dims, dtype=np.int64))
    if size != expected_size:
        state = "truncated" if size < expected_size else "longer than its header says"
        shape = "×".join(map(str, dims))
        raise IdxHeaderError(f"is {state} ({size} bytes; its header announces {shape} values, {expected_size} bytes)")
    return dims


def read_idx(path: Path, dims_after_first: Sequence[int], fix: str) -> Tensor:
    """The uint8 tensor in the IDX file ``path``, whose sizes must be ``(n, *dims_after_first)``.

    Raises :class:`DatasetFileError` naming the file, what is wrong and ``fix``.
    """
    if not path.is_file():
        raise damaged(path, "is missing", fix)
    rank = 1 + len(dims_after_first)
    try:
        dims = idx_header(path, rank)
    except IdxHeaderError as problem:
        raise damaged(path, str(problem), fix) from None
    if tuple(dims[1:]) != tuple(dims_after_first):
        expected = "×".join(["n", *map(str, dims_after_first)])
        raise damaged(path, f"holds {'×'.join(map(str, dims))} values, not {expected}", fix)
    data = np.fromfile(path, dtype=np.uint8, offset=4 + 4 * rank)
    return torch.from_numpy(data.reshape(dims))


def check_labels(path: Path, labels: Tensor, count: int, num_classes: int, fix: str) -> None:
    """``labels`` (read from ``path``) must be ``count`` integers in [0, ``num_classes``)."""
    if labels.numel() != count:
        raise damaged(path, f"holds {labels.numel()} labels for {count} images", fix)
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise damaged(path, f"holds labels outside 0…{num_classes - 1}", fix)


def read_mnist_raw(images_path: Path, labels_path: Path, fix: str) -> tuple[Tensor, Tensor]:
    """Images ``(n, 28, 28)`` uint8 and labels ``(n,)`` int64 of one MNIST split in the raw IDX layout."""
    images = read_idx(images_path, (28, 28), fix)
    labels = read_idx(labels_path, (), fix).long()
    check_labels(labels_path, labels, images.shape[0], 10, fix)
    return images, labels


def read_mnist_processed(path: Path, fix: str) -> tuple[Tensor, Tensor]:
    """Images and labels of one MNIST split in torchvision's legacy ``processed/*.pt`` file."""
    if not path.is_file():
        raise damaged(path, "is missing", fix)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = " ".join(str(error).split())[:120] or type(error).__name__
        raise damaged(path, f"cannot be read as torchvision's processed MNIST file ({reason})", fix) from None
    if not (isinstance(content, tuple | list) and len(content) == 2 and all(isinstance(t, Tensor) for t in content)):
        raise damaged(path, "does not hold an (images, labels) pair of tensors", fix)
    images, labels = content
    if images.dtype != torch.uint8 or images.ndim != 3 or tuple(images.shape[1:]) != (28, 28):
        raise damaged(path, f"holds images of shape {tuple(images.shape)} ({images.dtype}), not n×28×28 uint8", fix)
    labels = labels.long()
    check_labels(path, labels, images.shape[0], 10, fix)
    return images, labels


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and plain containers only (:data:`PICKLE_GLOBALS`)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}")
        return super().find_class(module, name)


def unpickle(path: Path, fix: str) -> dict[str, Any]:
    """The dictionary pickled in the CIFAR-10 file ``path`` (Python 2 or 3 pickle), with ``str`` keys."""
    if not path.is_file():
        raise damaged(path, "is missing", fix)
    try:
        content = ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as error:
        reason = " ".join(str(error).split())[:120] or type(error).__name__
        raise damaged(path, f"is not a readable CIFAR-10 pickle ({type(error).__name__}: {reason})", fix) from None
    if not isinstance(content, dict):
        raise damaged(path, f"holds a {type(content).__name__}, not a CIFAR-10 dictionary", fix)
    return {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in content.items()}


def read_cifar_batch(path: Path, fix: str) -> tuple[Tensor, Tensor]:
    """Images ``(n, 3, 32, 32)`` uint8 and labels ``(n,)`` int64 of one pickled CIFAR-10 batch."""
    content = unpickle(path, fix)
    data, labels = content.get("data"), content.get("labels")
    if not isinstance(data, np.ndarray) or labels is None:
        raise damaged(path, "lacks the 'data' array or the 'labels' of a CIFAR-10 batch", fix)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_IMAGE_SIZE:
        raise damaged(path, f"holds data of shape {data.shape} ({data.dtype}), not n×{CIFAR_IMAGE_SIZE} uint8", fix)
    try:
        label_tensor = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError):
        raise damaged(path, "holds labels that are not integers", fix) from None
    check_labels(path, label_tensor.flatten(), data.shape[0], CIFAR_CLASSES, fix)
    images = torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32)
    return images, label_tensor.flatten()


def check_cifar_meta(path: Path, fix: str) -> None:
    """``batches.meta`` must name the 10 classes."""
    names = unpickle(path, fix).get("label_names")
    if not isinstance(names, list) or len(names) != CIFAR_CLASSES:
        raise damaged(path, f"does not name the {CIFAR_CLASSES} CIFAR-10 classes ('label_names')", fix)


def misplaced_copy(root: Path, relative: str, depth: int = 3) -> Path | None:
    """A file named like ``relative``'s last part somewhere under ``root`` (at most ``depth`` folders deep) or in
    the folders above it that could hold the layout, other than ``root / relative``; None if there is none."""
    name = Path(relative).name
    candidates: list[Path] = []
    if root.is_dir():
        for level in range(depth + 1):
            candidates += sorted(root.glob("/".join(["*"] * level + [name])))
    for parent in root.parents[:2]:
        candidates += [parent / relative]
    target = root / relative
    return next((path for path in candidates if path.is_file() and path != target), None)


def root_for(found: Path, relative: str) -> Path | None:
    """The ``data.root`` under which ``found`` sits at ``relative`` (None if its folders are named otherwise)."""
    parts = Path(relative).parts
    if len(found.parts) < len(parts) or found.parts[-len(parts):] != parts:
        return None
    return found.parents[len(parts) - 1]
