"""Hydra configs of ufm-torch (installed as ``ufm_torch.conf``): ``train.yaml`` and its config groups."""
