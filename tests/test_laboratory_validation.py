"""The UFM laboratory's keys (decays, label smoothing, bias, class sizes) are checked before anything is built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import compose_train, ufm_train_in_process
from ufm_torch.cli.validation import ConfigError, validate_config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.samples_per_class=[3,3]"], r"data\.samples_per_class=\[3, 3\] has 2 entries"),
        (["data.samples_per_class=[3,0,3]"], r"data\.samples_per_class"),
        (["data.samples_per_class=[3,3,3]", "data.imbalance_ratio=2"], r"data\."),
        (["data.imbalance_ratio=0.5"], r"data\.imbalance_ratio"),
        (["data.minority_classes=4"], r"data\.minority_classes=4 must be at most"),
        (["module.feature_decay=-0.1"], r"module\.feature_decay"),
        (["module.classifier_decay=-1"], r"module\.classifier_decay"),
        (["module.bias_decay=-1e-3"], r"module\.bias_decay"),
        (["module.loss=cross_entropy", "module.label_smoothing=1.0"], r"module\.label_smoothing"),
        (["module.loss=cross_entropy", "module.label_smoothing=-0.1"], r"module\.label_smoothing"),
        (["module.label_smoothing=0.1"], r"applies to module\.loss=cross_entropy only"),
        (["model.bias=false", "module.bias_decay=0.1"], r"needs a bias, but model\.bias=false"),
        (["model.bias=maybe"], r"model\.bias"),
        (["module.loss=mean_squared", "optimizer.lr=2.5"], r"optimizer\.lr=2\.5 must be < 2 "),
        (["module.bias_decay=9", "optimizer.lr=0.15"], r"optimizer\.lr=0\.15 must be < 0\.111111"),
    ],
)
def test_a_bad_laboratory_setting_is_one_line_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        validate_config(compose_train(*overrides))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["module.loss=mean_squared", "optimizer.lr=1.0"],
        ["module.loss=mean_squared", "optimizer.lr=1.9", "data.samples_per_class=[5,3,1]"],
        ["module.loss=cross_entropy", "optimizer.lr=50", "module.label_smoothing=0.1"],
        ["model.bias=false", "optimizer.lr=0.5"],
        ["data.samples_per_class=10", "data.imbalance_ratio=10", "data.minority_classes=2"],
        ["module.feature_decay=0.01", "module.classifier_decay=0.01", "module.bias_decay=0.5"],
    ],
)
def test_stable_and_well_formed_settings_pass(overrides: list[str]) -> None:
    """The stability bound follows the reduction, the bias and its decay: it refuses only certain divergence."""
    validate_config(compose_train(*overrides))


def test_the_oracle_needing_p_at_least_c_is_said_once() -> None:
    with pytest.warns(UserWarning, match="oracle needs p >= C"):
        validate_config(compose_train("data.num_classes=5", "model.feature_dim=4", "module.feature_decay=0.01",
                                      "module.classifier_decay=0.01"))  # fmt: skip


def test_cli_refuses_a_bias_decay_without_bias_with_exit_2(tmp_path: Path) -> None:
    result = ufm_train_in_process("model.bias=false", "module.bias_decay=0.1", f"hydra.run.dir={tmp_path / 'run'}",
                                  cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "module.bias_decay=0.1" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "status.json").exists()


@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_preset_without_cuda_is_one_line(trainer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"trainer\.accelerator=gpu needs a CUDA device"):
        validate_config(compose_train(f"trainer={trainer}", "model=mlp", "data=digits"))
