"""Lightning callbacks of ufm-torch (installed as ``ufm_torch.callbacks``): collapse monitor, divergence guard,
interrupt checkpoint, step progress bar. ``CollapseMonitor`` works in any ``lightning.Trainer``."""

from ufm_torch.callbacks.collapse_monitor import CollapseMonitor

__all__ = ["CollapseMonitor"]
