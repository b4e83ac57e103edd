"""LightningDataModules: the UFM's sample indices and real data sets for backbones."""

from ufm_torch.data.balanced import BalancedDataModule, Splits
from ufm_torch.data.dataset_files import DatasetFileError
from ufm_torch.data.digits import DigitsDataModule
from ufm_torch.data.gaussian_mixture import GaussianMixtureDataModule
from ufm_torch.data.torchvision_sets import CIFAR10DataModule, DatasetNotFoundError, MNISTDataModule
from ufm_torch.data.ufm import RepeatedBatch, UFMDataModule, class_major_labels, class_sizes

__all__ = [
    "BalancedDataModule",
    "CIFAR10DataModule",
    "DatasetFileError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "GaussianMixtureDataModule",
    "MNISTDataModule",
    "RepeatedBatch",
    "Splits",
    "UFMDataModule",
    "class_major_labels",
    "class_sizes",
]
