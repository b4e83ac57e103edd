"""A rejected config answers fast and leaves nothing: its checks import neither torch nor Lightning, and no run folder
is left behind, also when the mistake is found after Hydra made one. Integral floats (``1e3``) are integers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import compose_train, ufm_train_main
from ufm_torch.cli.schema import ACTIVATION_NAMES, LOSS_NAMES, PRECISIONS
from ufm_torch.cli.validation import validate_config
from ufm_torch.errors import ConfigError

HEAVY = ("torch", "lightning", "matplotlib")


@pytest.mark.parametrize(
    "override", ["model.init_scale=-1", "optimizer.lr=0", "trainer.max_steps=1.5", "data.samples_per_class=[3,3]"]
)
def test_a_rejected_config_imports_neither_torch_nor_lightning_and_leaves_nothing(
    tmp_path: Path, override: str
) -> None:
    program = (
        "import atexit, sys\n"
        f"atexit.register(lambda: print([name for name in {HEAVY!r} if name in sys.modules]))\n"
        f"sys.argv = ['ufm-train', {override!r}]\n"
        "from ufm_torch.cli.train import main\n"
        "main()\n"
    )
    environment = os.environ | {"PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=120
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ufm-train: error: {override.split('=')[0]}")
    assert result.stdout.strip() == "[]", "the checks imported " + result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["+trainer.max_step=10"], ["trainer.max_step is not an argument of", "did you mean trainer.max_steps?"]),
        (["model=mlp", "data=mnist", "data.root=nowhere"], ["data.download=true"]),
    ],
)
def test_a_mistake_found_after_hydra_made_the_run_folder_leaves_nothing(
    tmp_path: Path, overrides: list[str], words: list[str], monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    assert ufm_train_main(monkeypatch, *overrides, "trainer.max_steps=2", f"hydra.run.dir={tmp_path}/runs/a/run") == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ufm-train")]
    assert len(errors) == 1 and all(word in errors[0] for word in words), errors
    assert list(tmp_path.iterdir()) == []


def test_a_rejected_config_leaves_an_existing_folder_and_its_neighbours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runs" / "neighbour").mkdir(parents=True)
    assert ufm_train_main(monkeypatch, "+trainer.max_step=10", f"hydra.run.dir={tmp_path}/runs/run") == 2
    assert [path.name for path in (tmp_path / "runs").iterdir()] == ["neighbour"]


def test_integral_floats_are_accepted_for_integer_keys_and_become_integers() -> None:
    cfg = compose_train("trainer.max_steps=1e3", "seed=3.0", "data.samples_per_class=[3.0,2e0,3]")
    validate_config(cfg)
    assert cfg.trainer.max_steps == 1000 and type(cfg.trainer.max_steps) is int
    assert cfg.seed == 3 and type(cfg.seed) is int
    assert list(cfg.data.samples_per_class) == [3, 2, 3] and type(cfg.data.samples_per_class[1]) is int
    assert list(cfg.model.samples_per_class) == [3, 2, 3], "an interpolation follows the key it names"
    for override in ("trainer.max_steps=1.5", "model.feature_dim=2.5e0", "seed=true"):
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
            validate_config(compose_train(override))


def test_the_schema_names_the_values_of_the_registries() -> None:
    from ufm_torch.models.backbones import ACTIVATIONS
    from ufm_torch.training.precision import PRECISIONS as POLICY_PRECISIONS

    assert LOSS_NAMES == ("cross_entropy", "mean_squared", "sum_squared"), "module.loss values are public"
    assert tuple(sorted(ACTIVATIONS)) == ACTIVATION_NAMES
    assert PRECISIONS == POLICY_PRECISIONS
