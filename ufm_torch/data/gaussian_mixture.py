"""A generated data set: C Gaussian classes in ℝᵈ, N training samples per class and a held-out set."""

from __future__ import annotations

import math

import torch

from ufm_torch.data.balanced import BalancedDataModule, Splits
from ufm_torch.data.ufm import class_major_labels


class GaussianMixtureDataModule(BalancedDataModule):
    """Samples ``x = μ_c + σ z`` with ``z ~ N(0, I_d)``, class centres ``μ_c ~ N(0, (s²/d) I_d)`` (E‖μ_c‖² = s²).

    ``input_dim`` is d, ``separation`` is s, ``noise_std`` is σ. The training set has N =
    ``samples_per_class`` samples per class (class-major), the held-out set ``heldout_per_class``; both
    are drawn from one generator seeded with ``seed``, then standardised with training statistics.
    """

    def __init__(
        self,
        num_classes: int = 3,
        samples_per_class: int = 20,
        input_dim: int = 10,
        heldout_per_class: int = 100,
        separation: float = 3.0,
        noise_std: float = 1.0,
        batch_size: int | None = None,
        seed: int = 0,
        eval_batch_size: int = 1000,
    ) -> None:
        super().__init__(num_classes, samples_per_class, batch_size, seed, eval_batch_size)
        self.input_dim = input_dim
        self.heldout_per_class = heldout_per_class
        self.separation = separation
        self.noise_std = noise_std

    def load_splits(self) -> Splits:
        """Class centres, then the training and held-out samples, from one seeded generator."""
        generator = torch.Generator().manual_seed(self.seed)
        scale = self.separation / math.sqrt(self.input_dim)
        centres = scale * torch.randn(self.num_classes, self.input_dim, generator=generator, dtype=torch.float64)

        def draw(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
            labels = class_major_labels(self.num_classes, per_class)
            noise = torch.randn(labels.numel(), self.input_dim, generator=generator, dtype=torch.float64)
            return (centres[labels] + self.noise_std * noise).float(), labels

        train_inputs, train_labels = draw(self.samples_per_class)
        heldout_inputs, heldout_labels = draw(self.heldout_per_class)
        return Splits(train_inputs, train_labels, heldout_inputs, heldout_labels)
