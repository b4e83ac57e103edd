"""Check before Hydra starts that a ``hydra/launcher=…`` override names a launcher whose plugin is installed."""

from __future__ import annotations

import importlib.util

from ufm_torch.errors import ConfigError

SWEEPS_EXTRA = "pip install 'ufm-torch[sweeps]'"
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}


def plugin_installed(module: str) -> bool:
    """True when the plugin module can be imported."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def check_launcher_plugin(overrides: list[str]) -> None:
    """Raise :class:`ConfigError` (one line naming the install command) for a launcher whose plugin is missing."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        launcher = value.strip()
        if key.strip() != "hydra/launcher" or launcher not in LAUNCHER_PLUGINS:
            continue
        module, package = LAUNCHER_PLUGINS[launcher]
        if not plugin_installed(module):
            raise ConfigError(f"hydra/launcher={launcher} needs the {package} plugin; install it with {SWEEPS_EXTRA}")
