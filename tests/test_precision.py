"""The precision policy: the UFM trains in model.dtype, backbones in float32 unless asked; mistakes exit 2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from lightning.fabric import connector as lightning_precision

from tests.helpers import compose_train, fit_in_process, ufm_train_in_process
from ufm_torch.cli.validation import validate_config
from ufm_torch.errors import ConfigError
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.training.precision import PRECISIONS, canonical_precision, resolve_precision

MIXED_OR_HALF = ("16-mixed", "bf16-mixed", "16", "bf16", "16-true", "bf16-true")
SHORT_BACKBONE = (
    "model=mlp", "data=digits", "data.num_classes=4", "data.samples_per_class=20", "data.batch_size=20",
    "model.width=32", "trainer.max_steps=8", "callbacks.progress.refresh_rate=0", "logger=none",
)


@pytest.mark.parametrize(
    ("overrides", "precision"),
    [
        ((), "64-true"),
        (("model.dtype=float32",), "32-true"),
        (("model=mlp", "data=digits"), "32-true"),
        (("model=convnet", "data=digits"), "32-true"),
        (("model=mlp", "data=digits", "trainer=ddp_cpu"), "32-true"),
        (("trainer.precision=64-true",), "64-true"),
        (("trainer.precision=64",), "64-true"),
        (("model.dtype=float32", "trainer.precision=32-true"), "32-true"),
        (("model.dtype=float32", "trainer.precision=32"), "32-true"),
        (("model=mlp", "data=digits", "trainer.precision=64-true"), "64-true"),
        (("model=mlp", "data=digits", "trainer.precision=bf16-mixed"), "bf16-mixed"),
        (("model=mlp", "data=digits", "trainer.precision=16"), "16-mixed"),
        (("model=mlp", "data=digits", "trainer.precision=bf16-true"), "bf16-true"),
        (("experiment=paper",), "64-true"),
        (("experiment=paper", "model.dtype=float32"), "32-true"),
    ],
)
def test_policy_gives_the_ufm_its_dtype_and_backbones_float32_or_what_they_ask(
    overrides: tuple[str, ...], precision: str
) -> None:
    cfg = compose_train(*overrides)
    validate_config(cfg)
    assert resolve_precision(cfg) == precision


def test_default_trainer_leaves_precision_to_the_policy() -> None:
    assert compose_train().trainer.precision is None


@pytest.mark.parametrize(
    ("overrides", "allowed"),
    [
        (("model.dtype=float32", "trainer.precision=64-true"), "32-true"),
        (("model.dtype=float32", "trainer.precision=64"), "32-true"),
        (("trainer.precision=32-true",), "64-true"),
    ],
)
def test_ufm_precision_that_disagrees_with_its_dtype_names_both_keys(
    overrides: tuple[str, ...], allowed: str
) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(compose_train(*overrides))
    message = str(error.value)
    assert "trainer.precision=" in message and "model.dtype=" in message and allowed in message
    assert "\n" not in message


@pytest.mark.parametrize("precision", MIXED_OR_HALF)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_mixed_or_half_precision_on_the_ufm_is_refused(precision: str, dtype: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(compose_train(f"trainer.precision={precision}", f"model.dtype={dtype}"))
    message = str(error.value)
    assert message.startswith(f"trainer.precision={precision} is not allowed for the UFM")
    assert f"closed-form steps run in model.dtype={dtype}" in message and "trainer.precision=null" in message
    assert "\n" not in message


@pytest.mark.filterwarnings("ignore:.*supported for historical reasons")
def test_every_accepted_precision_is_one_lightning_accepts() -> None:
    for precision in PRECISIONS:
        assert lightning_precision._convert_precision_to_unified_args(precision) == canonical_precision(precision)
    with pytest.raises(ConfigError, match=r"^trainer\.precision=8 is not allowed"):
        canonical_precision(8)


@pytest.mark.parametrize("precision", ["bf16-mixed", "64-true"])
def test_cli_refuses_a_ufm_precision_mistake_with_one_line_and_exit_2(tmp_path: Path, precision: str) -> None:
    run = tmp_path / "run"
    result = ufm_train_in_process(
        f"trainer.precision={precision}", "model.dtype=float32", f"hydra.run.dir={run}", cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainer.precision" in lines[0] and "Traceback" not in result.stderr
    assert not (run / "status.json").exists() or json.loads((run / "status.json").read_text())["status"] != "running"
    assert not (run / "checkpoints").exists() and not (run / "metrics.jsonl").exists()


def test_backbone_trains_in_float32_by_default(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fit_in_process(run, *SHORT_BACKBONE)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert {tensor.dtype for tensor in checkpoint["state_dict"].values() if tensor.is_floating_point()} == {
        torch.float32
    }


def test_backbone_in_bf16_mixed_precision_finishes_with_finite_float64_metrics(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = ufm_train_in_process(*SHORT_BACKBONE, "trainer.precision=bf16-mixed", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "status.json").read_text())["status"] == "finished"
    records = read_records(run / "metrics.jsonl")
    assert records and records[-1]["step"] == 8
    for record in records:
        metrics = {tag: value for tag, value in record.items() if "/" in tag}
        assert len(metrics) >= 15 and all(value is not None and math.isfinite(value) for value in metrics.values())


def test_the_gpu_preset_gives_backbones_bf16_mixed_and_the_ufm_its_dtype() -> None:
    backbone = compose_train("trainer=gpu", "model=mlp", "data=digits")
    ufm = compose_train("trainer=gpu", "model.dtype=float32")
    older_gpu = compose_train("trainer=gpu", "model=mlp", "data=digits", "trainer.precision=16-mixed")
    assert resolve_precision(backbone) == "bf16-mixed"
    assert resolve_precision(ufm) == "32-true"
    assert resolve_precision(older_gpu) == "16-mixed"
