"""LightningDataModules: the UFM's sample indices and real data sets for backbones."""

from ufm_torch.data.ufm import RepeatedBatch, UFMDataModule, class_major_labels

__all__ = ["RepeatedBatch", "UFMDataModule", "class_major_labels"]
