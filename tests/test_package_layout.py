"""One namespace, units that import only what docs/architecture.md allows (so no cycles), and every config option
composable."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import ufm_torch
import ufm_torch.conf
from ufm_torch.cli.validation import validate_config
from ufm_torch.errors import ConfigError

PACKAGE_DIRS = {"ufm_torch": Path(ufm_torch.__file__).parent}
CONFIG_DIR = Path(ufm_torch.conf.__file__).parent
UNITS = (
    "models", "objectives", "data", "training", "metrics", "theory", "run_folder", "analysis", "cli", "callbacks",
    "conf",
)  # fmt: skip
ALLOWED_IMPORTS = {
    "models": set(),
    "conf": set(),
    "objectives": set(),
    "metrics": {"models"},
    "data": {"models"},
    "training": {"models", "metrics", "objectives"},
    "theory": {"models", "objectives", "metrics"},
    "run_folder": {"metrics"},
    "analysis": {"run_folder", "metrics", "models", "objectives", "theory"},
    "callbacks": {"metrics", "models", "run_folder", "training", "theory"},
    "cli": {"analysis", "callbacks", "data", "metrics", "models", "objectives", "run_folder", "training"},
}
"""The units each unit may import: the table of docs/architecture.md ("Layout")."""


IMPORT_CHECK = (
    "import importlib.util, ufm_torch.callbacks.collapse_monitor, ufm_torch.conf\n"
    "print(importlib.util.find_spec('callbacks'), importlib.util.find_spec('conf'))\n"
    "from hydra import compose, initialize_config_module\n"
    "with initialize_config_module(config_module='ufm_torch.conf', version_base='1.3'):\n"
    "    print(compose(config_name='train', overrides=['run_dir=x']).model._target_)\n"
)
EXPECTED = ["None", "None", "ufm_torch.models.UnconstrainedFeatures"]


def test_installed_package_has_no_top_level_callbacks_or_conf(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", IMPORT_CHECK], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == EXPECTED


def test_a_regular_wheel_holds_callbacks_and_configs_inside_the_package(tmp_path: Path) -> None:
    repository, source = CONFIG_DIR.parent, tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repository / name, source / name)
    for folder in ("ufm_torch", "callbacks", "conf"):
        shutil.copytree(repository / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source), "-w",
         str(tmp_path / "wheel")], cwd=tmp_path, check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    assert {name.split("/")[0] for name in names} == {"ufm_torch", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    assert "ufm_torch/conf/experiment/paper.yaml" in names and "ufm_torch/callbacks/collapse_monitor.py" in names
    environment = os.environ | {"PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK + "print(ufm_torch.conf.__file__)"], cwd=tmp_path, capture_output=True,
        text=True, env=environment,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == EXPECTED and result.stdout.split()[3].startswith(str(tmp_path / "site"))


def unit_of(module: str) -> str | None:
    """The unit of ``ufm_torch.<unit>.…`` (None outside the package; ``errors`` and the root are shared leaves)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "ufm_torch" and len(parts) > 1 and parts[1] in UNITS else None


def source_files() -> dict[str, Path]:
    """Module name → file, for the package and for callbacks/ (installed as ``ufm_torch.callbacks``)."""
    files = {}
    root = PACKAGE_DIRS["ufm_torch"]
    for path in root.rglob("*.py"):
        files["ufm_torch." + ".".join(path.relative_to(root).with_suffix("").parts)] = path
    for path in (CONFIG_DIR.parent / "callbacks").glob("*.py"):
        files[f"ufm_torch.callbacks.{path.stem}"] = path
    return files


def imported_modules(path: Path) -> set[str]:
    """Every module imported anywhere in the file, function-level imports included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def unit_imports() -> dict[str, set[str]]:
    """The units each unit imports, function-level imports included."""
    edges: dict[str, set[str]] = {unit: set() for unit in UNITS}
    for module, path in source_files().items():
        source = unit_of(module)
        for imported in imported_modules(path):
            target = unit_of(imported)
            if source and target and target != source:
                edges[source].add(target)
    return edges


def test_units_import_only_what_the_architecture_allows() -> None:
    forbidden = {unit: sorted(targets - ALLOWED_IMPORTS[unit]) for unit, targets in unit_imports().items()}
    assert not {unit: targets for unit, targets in forbidden.items() if targets}, "imports outside the table"


def test_units_import_each_other_without_a_cycle() -> None:
    edges = unit_imports()
    assert not any(name.split(".")[0] in ("callbacks", "conf") for p in source_files().values() for name in
                   imported_modules(p)), "an import of the top-level names callbacks or conf"
    visiting, done = set(), set()

    def visit(unit: str, trail: list[str]) -> None:
        assert unit not in visiting, f"import cycle: {' -> '.join([*trail, unit])}"
        if unit in done:
            return
        visiting.add(unit)
        for target in sorted(edges[unit]):
            visit(target, [*trail, unit])
        visiting.discard(unit)
        done.add(unit)

    for unit in UNITS:
        visit(unit, [])


def group_options() -> list[tuple[str, str]]:
    """``(group, option)`` for every YAML file of every config group except Hydra's own."""
    return sorted(
        (path.parent.relative_to(CONFIG_DIR).as_posix(), path.stem)
        for path in CONFIG_DIR.glob("*/*.yaml")
        if path.parent.name != "hydra"
    )


NEEDS_CUDA = {("trainer", "gpu"), ("trainer", "ddp"), ("experiment", "papyan_mnist"), ("experiment", "papyan_cifar10")}
"""The options that train on GPUs: refused on a machine without CUDA, in one line."""
NO_CUDA = (
    f"trainer.accelerator=gpu needs a CUDA device and torch sees none (torch {torch.__version__}, CUDA build: "
    f"{torch.version.cuda is not None}); use trainer=default on this machine"
)


def overrides_for(group: str, option: str) -> list[str]:
    """``group=option`` with the choices it is used with: a backbone's data set, a data set's backbone, a comparison
    side's experiment."""
    primary = {"data", "model", "optimizer", "trainer", "callbacks", "logger", "experiment"}
    choice = f"[{option}]" if group == "callbacks" else option
    overrides = [f"{'' if group in primary | {'compare_digits'} else '+'}{group}={choice}"]
    if group == "model" and option != "ufm":
        overrides.append("data=digits")
    if group == "data" and option != "ufm":
        overrides.append("model=mlp")
    if group == "compare_digits":
        overrides.insert(0, "experiment=compare_digits")
    return overrides


@pytest.mark.parametrize(("group", "option"), group_options())
def test_every_option_of_every_config_group_composes_and_passes_the_config_checks(
    group: str, option: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine with CUDA every option passes ``validate_config``; without one the GPU presets are refused with
    the line that says so, and every other option passes."""
    with initialize_config_module(config_module="ufm_torch.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides_for(group, option), "run_dir=unused"],
                      return_hydra_config=True)  # fmt: skip
    try:
        HydraConfig.instance().set_config(cfg)
        if group != "callbacks":
            assert HydraConfig.get().runtime.choices[group] == option
        with open_dict(cfg):
            del cfg["hydra"]
        assert cfg.model._target_ and cfg.data._target_ and cfg.trainer._target_
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        validate_config(cfg)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        if (group, option) in NEEDS_CUDA:
            with pytest.raises(ConfigError) as error:
                validate_config(cfg)
            assert str(error.value) == NO_CUDA
        else:
            validate_config(cfg)
    finally:
        HydraConfig.instance().cfg = None
