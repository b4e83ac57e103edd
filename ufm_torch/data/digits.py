"""scikit-learn's 8×8 handwritten digits: a small real data set that needs no download."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from ufm_torch.data.balanced import BalancedDataModule, Splits, balanced_indices, check_declared, complement
from ufm_torch.errors import ConfigError

DIGITS_SHAPE = (1, 8, 8)
DIGITS_CLASSES = 10


class DigitsDataModule(BalancedDataModule):
    """The digits 0 … C−1 of scikit-learn's digits (1797 images of 8×8 pixels, 174 to 183 per class).

    Training set: N = ``samples_per_class`` images of each digit drawn with ``seed``, class-major; the
    other images of those digits are held out. Images have shape ``(1, 8, 8)``, standardised with the
    training set's mean and std. ``input_dim`` (64) and ``in_channels`` (1) describe the images for the
    model config and are checked (None: the data set's).
    """

    def __init__(
        self,
        num_classes: int = DIGITS_CLASSES,
        samples_per_class: int = 50,
        batch_size: int | None = 50,
        seed: int = 0,
        input_dim: int | None = None,
        in_channels: int | None = None,
        eval_batch_size: int = 1000,
    ) -> None:
        super().__init__(num_classes, samples_per_class, batch_size, seed, eval_batch_size)
        self.in_channels = DIGITS_SHAPE[0]
        self.input_dim = DIGITS_SHAPE[0] * DIGITS_SHAPE[1] * DIGITS_SHAPE[2]
        self.declared = {"input_dim": input_dim, "in_channels": in_channels}

    def check_config(self) -> None:
        """At most 10 classes; ``input_dim`` and ``in_channels`` as declared."""
        if self.num_classes > DIGITS_CLASSES:
            raise ConfigError(f"data.num_classes={self.num_classes} is more than the {DIGITS_CLASSES} digits")
        for key, declared in self.declared.items():
            check_declared(key, declared, getattr(self, key), "digits")

    def load_splits(self) -> Splits:
        """N seeded images per digit for training, the rest of those digits held out."""
        digits = load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1)
        labels = torch.as_tensor(digits.target, dtype=torch.long)
        kept = labels < self.num_classes
        images, labels = images[kept], labels[kept]
        generator = torch.Generator().manual_seed(self.seed)
        train = balanced_indices(labels, self.num_classes, self.samples_per_class, generator, "digits")
        heldout = complement(train, labels.numel())
        return Splits(images[train], labels[train], images[heldout], labels[heldout])
