"""Resuming a run in its own folder: what a resume may change, the command Hydra runs for it, and what it records.

``ufm-train hydra.run.dir=<run> ckpt_path=last [overrides]`` resumes the run in ``<run>``. It trains with the run's
own config: Hydra composes the original command again (``.hydra/overrides.yaml``) with the resume's overrides on top,
and the composed config is checked against ``.hydra/config.yaml`` before anything is written. A resume never rewrites
``.hydra/`` (``hydra.output_subdir=null``); each one appends what it was given and how it ended to ``resumes.jsonl``
(:mod:`ufm_torch.run_folder.status`).

A resume may change only the keys of :data:`RESUMABLE_KEYS`, none of which changes the trajectory: the number of
steps, the cadence of evaluations, curves and device checks, the progress bar, the report and the sweep objective.
An override of any other key (model, data, module and objective, optimiser, seed, trainer, a config group) that
differs from the run's value is refused with one line naming the keys, before Hydra starts; so is a new run
(no ``ckpt_path``) in a folder that holds a run, and ``ckpt_path=last`` without ``hydra.run.dir``.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from ufm_torch.cli.overrides import config_groups
from ufm_torch.errors import ConfigError
from ufm_torch.run_folder.layout import CONFIG_FILE, HYDRA_FILE, OVERRIDES_FILE, is_run_folder

RESUMABLE_KEYS = (
    "ckpt_path",
    "trainer.max_steps",
    "trainer.log_every_n_steps",
    "callbacks.collapse_monitor.every_n_steps",
    "callbacks.collapse_monitor.points_per_decade",
    "callbacks.collapse_monitor.gram_images",
    "callbacks.training_curves.every_n_steps",
    "callbacks.divergence_guard.check_every_n_steps",
    "callbacks.progress.*",
    "report.*",
    "objective",
)
"""The keys a resume may change (``fnmatch`` patterns): the run's length, logging cadence, progress bar, report and
sweep objective. Each change is recorded in ``resumes.jsonl``. ``trainer.max_steps`` extends (or ends) a run."""

INFORMATION_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
"""Hydra's flags that print something and run nothing: no resume is planned for them."""

RESUME_SETTINGS = ("hydra.output_subdir=null", "hydra.mode=RUN")
"""Hydra settings added to a resume's command: keep ``.hydra/`` as the run wrote it; one job, in the run folder."""


@dataclass(frozen=True)
class Resume:
    """A resume of the run in ``run_dir``: the arguments as given, the changes they make (key: [the run's value, the
    new value]) and the full argument list Hydra gets (the run's overrides, then the given ones, then
    :data:`RESUME_SETTINGS`)."""

    run_dir: Path
    given: list[str]
    changed: dict[str, list[Any]] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)


def is_resumable(key: str) -> bool:
    """Whether a resume may change ``key``."""
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)


def parse(arguments: list[str]) -> list[Override]:
    """Hydra's reading of the overrides among ``arguments`` (flags such as ``-m`` and their values are skipped; an
    override Hydra cannot parse is left for Hydra to report)."""
    parser = OverridesParser.create()
    parsed = []
    for argument in arguments:
        if argument.startswith("-") or ("=" not in argument and not argument.startswith("~")):
            continue
        try:
            parsed.extend(parser.parse_overrides([argument]))
        except OverrideParseException:
            continue
    return parsed


def plan_resume(arguments: list[str], config_dir: Path) -> Resume | None:
    """The resume the command-line ``arguments`` ask for (None for a new run), or :class:`ConfigError` (one line)
    when they ask for something a resume cannot do. Reads the run folder and changes nothing."""
    if any(argument in INFORMATION_FLAGS for argument in arguments):
        return None
    overrides = parse(arguments)
    values = {override.key_or_group: override for override in overrides}
    ckpt_path = values.get("ckpt_path")
    run_dir_override = values.get("hydra.run.dir")
    if ckpt_path is not None and _text(ckpt_path) == "last" and run_dir_override is None:
        if "hydra.sweep.dir" not in values:
            raise ConfigError(
                "ckpt_path=last resumes the run of a folder: add hydra.run.dir=<the run folder to resume> (its "
                "checkpoints/last.ckpt is read); without it a new folder would start from scratch"
            )
        return None
    if run_dir_override is None:
        return None
    run_dir = Path(_text(run_dir_override)).expanduser()
    if not is_run_folder(run_dir):
        return None
    if ckpt_path is None or ckpt_path.value() is None:
        raise ConfigError(
            f"hydra.run.dir={run_dir} holds a run already (.hydra/config.yaml); resume it with ckpt_path=last, or "
            "give a new folder for a new run"
        )
    return _resume(run_dir, arguments, overrides, config_dir)


def _resume(run_dir: Path, arguments: list[str], given: list[Override], config_dir: Path) -> Resume:
    """The checked :class:`Resume` of ``run_dir`` with the ``given`` overrides."""
    original_arguments = [str(entry) for entry in yaml.safe_load((run_dir / OVERRIDES_FILE).read_text()) or []]
    original = {override.key_or_group: override for override in parse(original_arguments)}
    config = OmegaConf.load(run_dir / CONFIG_FILE)
    hydra_config = yaml.safe_load((run_dir / HYDRA_FILE).read_text()) or {}
    choices = ((hydra_config.get("hydra") or {}).get("runtime") or {}).get("choices") or {}
    groups = config_groups(config_dir)
    changed: dict[str, list[Any]] = {}
    refused: dict[str, list[Any]] = {}
    for override in given:
        key = override.key_or_group
        if key.startswith("hydra.") or key.startswith("hydra/"):
            continue
        if override.is_sweep_override():
            raise ConfigError(f"{key}={_text(override)} is a sweep; a resume continues one run")
        before = original.get(key)
        if before is not None and _text(before) == _text(override) and before.type == override.type:
            continue
        old = choices.get(key) if key in groups else _config_value(config, key)
        new = None if override.is_delete() else override.value()
        if not override.is_delete() and _same(old, new):
            continue
        if key == "ckpt_path" or (is_resumable(key) and not override.is_delete() and key not in groups):
            if key != "ckpt_path":
                changed[key] = [old, new]
            continue
        refused[key] = [old, new]
    if refused:
        was = ", ".join(f"{key}={_shown(old)}" for key, (old, _) in refused.items())
        raise ConfigError(
            f"a resume cannot change {', '.join(refused)}: that changes the trajectory of the run in {run_dir} "
            f"(trained with {was}); a resume may change only {', '.join(RESUMABLE_KEYS)}; start a new run in "
            "another folder to change the others"
        )
    given_keys = {override.key_or_group for override in given}
    kept = [argument for argument, override in _pairs(original_arguments) if override.key_or_group not in given_keys]
    return Resume(run_dir, list(arguments), changed, [*kept, *arguments, *RESUME_SETTINGS])


def _pairs(arguments: list[str]) -> list[tuple[str, Override]]:
    """Each parsable override argument with its parse."""
    return [(argument, override) for argument in arguments for override in parse([argument])]


def _text(override: Override) -> str:
    """The value of an override as typed (after its ``=``)."""
    return str(override.input_line).partition("=")[2]


_ABSENT = object()


def _config_value(config: DictConfig, key: str) -> Any:
    """The value of ``key`` in the run's saved config: resolved where it can be outside Hydra, else as written."""
    value = OmegaConf.select(config, key, default=_ABSENT, throw_on_resolution_failure=False)
    if value is None:
        raw = OmegaConf.to_container(config, resolve=False)
        for part in key.split("."):
            raw = raw.get(part, _ABSENT) if isinstance(raw, dict) else _ABSENT
        value = None if raw is _ABSENT else raw
    if value is _ABSENT:
        return None
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _same(old: Any, new: Any) -> bool:
    """Whether a value as the run saved it and as an override gives it are the same (``1e3`` and 1000 are)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return old is new
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new, strict=True))
    return old == new


def _shown(value: Any) -> str:
    """A value as an override would write it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def changed_in_config(run_dir: Path, config: DictConfig) -> list[str]:
    """The keys whose values in the composed task ``config`` differ from the run's ``.hydra/config.yaml``, beside
    the keys a resume may change: not empty only when the package's config files changed since the run began."""
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / CONFIG_FILE), resolve=False)
    composed = OmegaConf.to_container(config, resolve=False)
    composed.pop("hydra", None)
    return [key for key in _differences(saved, composed) if not is_resumable(key)]


def _differences(saved: Any, composed: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two plain configs differ."""
    if isinstance(saved, dict) and isinstance(composed, dict):
        keys = sorted(set(saved) | set(composed), key=str)
        return [found for key in keys for found in _differences(saved.get(key), composed.get(key), f"{prefix}{key}.")]
    return [] if _same(saved, composed) else [prefix.rstrip(".")]
