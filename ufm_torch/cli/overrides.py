"""Checks on the command-line overrides before Hydra starts, read with Hydra's own override parser.

A config-group override must name options that exist under ``conf/<group>/``; a ``hydra/launcher=…`` or
``hydra/sweeper=…`` override must name a plugin that is installed; an ``interval()`` sweep needs a sweeper that
samples (Optuna, Nevergrad), since the basic sweeper runs grids only. An override the parser cannot read is left to
Hydra, which reports it with its own message.

The grammar is Hydra's: ``key=a,b``, ``choice(a,b)``, ``range(start,stop[,step])``, ``glob(pattern,exclude=…)``
(config groups), ``interval(low,high)`` (sampling sweepers), ``tag()``, ``sort()``, ``shuffle()`` and lists.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Glob, IntervalSweep, Override, QuotedString, RangeSweep
from hydra.errors import OverrideParseException

from ufm_torch.errors import ConfigError

SWEEPS_EXTRA = "pip install 'ufm-torch[sweeps]'"
LAUNCHER_PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
}
SWEEPER_PLUGINS = {
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper"),
    "nevergrad": ("hydra_plugins.hydra_nevergrad_sweeper", "hydra-nevergrad-sweeper"),
}
SAMPLING_SWEEPERS = (
    "hydra/sweeper=optuna (pip install hydra-optuna-sweeper) or hydra/sweeper=nevergrad "
    "(pip install hydra-nevergrad-sweeper)"
)


def parse_overrides(arguments: list[str]) -> Iterator[Override]:
    """Hydra's reading of each command-line argument; one it cannot parse (a flag, a typo) is skipped."""
    parser = OverridesParser.create()
    for argument in arguments:
        try:
            yield from parser.parse_overrides([argument])
        except OverrideParseException:
            continue


def element_names(element: Any) -> list[str]:
    """The option names in one parsed value: a name, a list of names (flattened) or null (none)."""
    if element is None:
        return []
    if isinstance(element, list):
        return [name for item in element for name in element_names(item)]
    if isinstance(element, QuotedString):
        return [element.text]
    return [str(element)]


def selected_options(override: Override, available: list[str]) -> list[str]:
    """Every option an override selects: its value, list or sweep (``a,b``, ``choice``, ``range``) option by
    option, a ``glob`` expanded against the ``available`` option names, an ``interval`` (no option) as written."""
    value = override.value()
    if isinstance(value, Glob):
        return value.filter(available)
    if isinstance(value, ChoiceSweep):
        return element_names(value.list)
    if isinstance(value, RangeSweep):
        return element_names(list(value.range()))
    if isinstance(value, IntervalSweep):
        return [value_text(override)]
    return element_names(value)


def value_text(override: Override) -> str:
    """The value of an override as typed on the command line (after its ``=``)."""
    return str(override.input_line).partition("=")[2]


def config_groups(config_dir: Path) -> dict[str, list[str]]:
    """The config groups under ``config_dir`` (its sub-folders holding ``*.yaml``, ``hydra`` left out), each with
    its option names."""
    groups: dict[str, list[str]] = {}
    for path in config_dir.rglob("*.yaml"):
        group = path.parent.relative_to(config_dir).as_posix()
        if path.parent != config_dir and group.split("/")[0] != "hydra":
            groups.setdefault(group, []).append(path.stem)
    return {group: sorted(options) for group, options in groups.items()}


def check_group_choices(overrides: list[str], config_dir: Path) -> None:
    """Reject group overrides whose options have no file in ``conf/<group>/`` (before Hydra composes).

    ``group=a``, ``+group=a``, ``~group=a``, lists (``group=[a,b]``) and sweeps (``group=a,b``, ``choice(a,b)``,
    ``glob(a*,exclude=…)``) are checked option by option; a glob must match at least one option.
    """
    groups = config_groups(config_dir)
    for override in parse_overrides(overrides):
        group = override.key_or_group
        if group not in groups:
            continue
        choose = f"choose one of {', '.join(groups[group])}"
        options = selected_options(override, groups[group])
        if isinstance(override.value(), Glob) and not options:
            raise ConfigError(f"{group}={value_text(override)} matches no option; {choose}")
        for option in options:
            if option not in groups[group]:
                raise ConfigError(f"{group}={option} is not a known option; {choose}")


def plugin_installed(module: str) -> bool:
    """True when the plugin module can be imported."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def check_plugins(overrides: list[str]) -> None:
    """Raise :class:`ConfigError` (one line) when the overrides need a Hydra plugin that is missing or a sweep the
    sweeper cannot run: a launcher or sweeper whose plugin is not installed (the line names the install command),
    a ``range()`` with no value (it would launch no job), or an ``interval()`` under the basic sweeper."""
    parsed = list(parse_overrides(overrides))
    sweeper = "basic"
    for override in parsed:
        if isinstance(override.value(), RangeSweep) and not list(override.value().range()):
            raise ConfigError(f"{override.key_or_group}={value_text(override)} gives no value, so no job would run")
        if override.key_or_group == "hydra/launcher":
            for launcher in selected_options(override, sorted(LAUNCHER_PLUGINS)):
                check_plugin_installed("launcher", launcher, LAUNCHER_PLUGINS, SWEEPS_EXTRA)
        if override.key_or_group == "hydra/sweeper":
            for sweeper in selected_options(override, sorted(SWEEPER_PLUGINS)):
                check_plugin_installed("sweeper", sweeper, SWEEPER_PLUGINS, None)
    if sweeper != "basic":
        return
    for override in parsed:
        if isinstance(override.value(), IntervalSweep):
            raise ConfigError(
                f"{override.key_or_group}={value_text(override)}: the basic sweeper does not take interval(), it "
                f"runs grids (a,b, choice(), range(), glob()); a sampling sweeper does: {SAMPLING_SWEEPERS}"
            )


def check_plugin_installed(kind: str, name: str, plugins: dict[str, tuple[str, str]], extra: str | None) -> None:
    """Raise :class:`ConfigError` naming the package to install when the plugin of ``hydra/<kind>=<name>`` is
    missing; a name without a known plugin (Hydra's own, a typo) is left to Hydra."""
    if name not in plugins:
        return
    module, package = plugins[name]
    if not plugin_installed(module):
        install = extra or f"pip install {package}"
        raise ConfigError(f"hydra/{kind}={name} needs the {package} plugin; install it with {install}")
