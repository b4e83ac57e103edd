"""What a run minimises: the losses (one registry, :mod:`ufm_torch.objectives.losses`) and the regularised UFM
objective with its closed-form gradients (:mod:`ufm_torch.objectives.ufm`), shared by training and the theory.

Importing this package imports no torch: the config schema reads the loss registry before torch is loaded.
"""
