"""Lightning callbacks of ufm-torch (installed as ``ufm_torch.callbacks``): collapse monitor, divergence guard,
interrupt checkpoint, step progress bar."""
