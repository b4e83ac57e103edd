"""``ufm-train model=deep_ufm``: its keys are checked before training (one line, exit 2), its size is estimated, at
depth 1 it trains exactly as ``model=ufm``, and a default run finishes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.helpers import compose_train, fit_in_process, ufm_train_in_process
from ufm_torch.cli.memory import DEEP_SIZE_KEYS, SIZE_KEYS, estimate_ufm_memory
from ufm_torch.cli.schema import DEEP_UFM_ACTIVATION_NAMES, DEEP_UFM_CLASS
from ufm_torch.cli.validation import validate_config
from ufm_torch.data import class_major_labels
from ufm_torch.errors import ConfigError
from ufm_torch.metrics import nc_metrics
from ufm_torch.metrics.tags import DEEP_COLLAPSE_TAGS
from ufm_torch.models import Activation, DeepUnconstrainedFeatures
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.theory.deep_problem import ACTIVATIONS
from ufm_torch.training.precision import resolve_precision

DEEP = "model=deep_ufm"
DEEP_ACTIVATIONS = "one of linear, relu for model=deep_ufm"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ((DEEP, "model.depth=0"), "model.depth=0 is not allowed; it must be an integer >= 1"),
        ((DEEP, "model.width=0"), "model.width=0 is not allowed; it must be an integer >= 1"),
        ((DEEP, "model.depth=1.5"), "model.depth=1.5 is not allowed; it must be an integer >= 1"),
        ((DEEP, "model.activation=tanh"), f"model.activation='tanh' is not allowed; it must be {DEEP_ACTIVATIONS}"),
        ((DEEP, "model.activation=sigmoid"), "model.activation='sigmoid' is not allowed"),
        ((DEEP, "module.hidden_decay=-0.1"),
         "module.hidden_decay=-0.1 is not allowed; it must be null (module.classifier_decay) or a number >= 0"),
        (("module.hidden_decay=0.1",),
         "module.hidden_decay=0.1 applies to model=deep_ufm only (the decay of its hidden weights); set "
         "module.hidden_decay=null"),
    ],
)  # fmt: skip
def test_a_bad_deep_ufm_key_is_one_line_naming_it_and_what_is_allowed(overrides: tuple[str, ...], message: str):
    with pytest.raises(ConfigError) as error:
        validate_config(compose_train(*overrides))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_good_deep_ufm_keys_pass_and_a_backbone_keeps_its_own_activations() -> None:
    validate_config(compose_train(DEEP))
    validate_config(compose_train(DEEP, "model.activation=linear", "model.depth=1", "module.hidden_decay=0.2"))
    validate_config(compose_train("model=mlp", "data=digits", "model.activation=gelu"))
    with pytest.raises(ConfigError, match=r"model\.activation='linear' is not allowed"):
        validate_config(compose_train("model=mlp", "data=digits", "model.activation=linear"))
    with pytest.raises(ConfigError, match=r"module\.scheduler=torch\.optim\.lr_scheduler\.StepLR applies to backbones"):
        validate_config(compose_train(DEEP, "+module.scheduler={_target_: torch.optim.lr_scheduler.StepLR, "
                                            "_partial_: true, step_size: 10}"))  # fmt: skip


@pytest.mark.parametrize("override", ["model.activation=tanh", "model.depth=0", "module.hidden_decay=-1"])
def test_ufm_train_exits_2_with_one_line_before_training(tmp_path: Path, override: str) -> None:
    result = ufm_train_in_process(DEEP, override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ufm-train: error: {override.split('=')[0]}") and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_schema_names_the_deep_ufms_activations_and_class() -> None:
    assert DEEP_UFM_ACTIVATION_NAMES == tuple(sorted(activation.value for activation in Activation)) == ACTIVATIONS
    assert compose_train(DEEP).model._target_.rsplit(".", 1)[-1] == DEEP_UFM_CLASS == DeepUnconstrainedFeatures.__name__


def test_it_trains_in_its_dtype_as_the_ufm_does() -> None:
    assert resolve_precision(compose_train(DEEP)) == "64-true"
    assert resolve_precision(compose_train(DEEP, "model.dtype=float32")) == "32-true"
    with pytest.raises(ConfigError, match=r"trainer\.precision"):
        resolve_precision(compose_train(DEEP, "trainer.precision=bf16-mixed"))


def test_the_memory_estimate_counts_every_layer_the_model_allocates() -> None:
    cfg = compose_train(DEEP, "model.depth=4", "model.width=7", "model.feature_dim=5", "model.replicas=3",
                        "model.bias=true")  # fmt: skip
    network = instantiate(cfg.model)
    allocated = sum(parameter.numel() * parameter.element_size() for parameter in network.parameters())
    estimate = estimate_ufm_memory(9, 3, 5, 3, depth=4, width=7)
    assert estimate.parameters == 2 * allocated, "parameters and their gradients"
    assert estimate.training_step == 8 * 3 * 9 * (3 * 2 + 3 * 7 + 2 * 7)
    assert estimate.metrics == 8 * 3 * (7 * 9 + 2 * 3 * 7 + 2 * 49 + 3 * 9)
    assert estimate_ufm_memory(9, 3, 5, 3, depth=1) == estimate_ufm_memory(9, 3, 5, 3)


def test_a_deep_run_that_cannot_fit_names_the_deep_size_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    from ufm_torch.cli import memory

    monkeypatch.setattr(memory, "available_memory", lambda cfg: 10**6)
    with pytest.raises(ConfigError) as refused:
        validate_config(compose_train(DEEP, "model.width=2000"))
    assert all(key in str(refused.value) for key in SIZE_KEYS + DEEP_SIZE_KEYS)


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    """The network's parameters and buffers in ``last.ckpt``."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    return {key: value for key, value in checkpoint["state_dict"].items() if key.startswith("network.")}


@pytest.mark.parametrize(
    "settings",
    [(), ("module.loss=mean_squared", "module.feature_decay=0.01", "module.classifier_decay=0.02"),
     ("module.loss=cross_entropy", "module.label_smoothing=0.1", "module.bias_decay=0.01", "optimizer=adam")],
    ids=["paper", "regularised_mse", "cross_entropy_adam"],
)  # fmt: skip
def test_depth_one_trains_as_the_ufm(tmp_path: Path, settings: tuple[str, ...]) -> None:
    """Same start, trajectory and final objective, accuracy and collapse metrics as ``model=ufm``, to 1e-12."""
    common = ("trainer.max_steps=300", "~callbacks.collapse_monitor", "model.init_scale=[0.1,1.0]",
              "model.replicas=2", "data.samples_per_class=[4,3,2]", *settings)  # fmt: skip
    ufm = fit_in_process(tmp_path / "ufm", "model=ufm", *common)
    deep = fit_in_process(tmp_path / "deep", DEEP, "model.depth=1", "model.bias=true", *common)
    assert deep["step"] == ufm["step"] == 300
    for key, value in ufm["trainer"].items():
        assert deep["trainer"][key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    ufm_state, deep_state = final_state(tmp_path / "ufm"), final_state(tmp_path / "deep")
    assert ufm_state.keys() == deep_state.keys()
    for key, value in ufm_state.items():
        torch.testing.assert_close(deep_state[key], value, rtol=0, atol=1e-12, msg=key)
    labels = class_major_labels(3, [4, 3, 2])
    metrics = [nc_metrics(state["network.features"], labels, state["network.head.weight"],
                          state["network.head.bias"]) for state in (ufm_state, deep_state)]  # fmt: skip
    for name, value in metrics[0].items():
        torch.testing.assert_close(metrics[1][name], value, rtol=1e-10, atol=1e-12, msg=name)


def test_a_default_run_without_the_collapse_monitor_finishes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = ufm_train_in_process(DEEP, "trainer.max_steps=200", "~callbacks.collapse_monitor",
                                  f"hydra.run.dir={run}", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "finished" and status["final_metrics"]["step"] == 200
    assert status["final_metrics"]["trainer"]["train/loss"] < 1.0, "½‖Y‖²_F = 4.5 at the start"


def test_a_default_run_records_every_layer(tmp_path: Path) -> None:
    """The monitor measures the deep UFM from its parameters: H_L (the classifier's input) as the main layer, then
    H_1 … H_{L−1}, each with NC1 (DNC1) and the DNC metrics."""
    run = tmp_path / "run"
    result = ufm_train_in_process(DEEP, "trainer.max_steps=200", f"hydra.run.dir={run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = read_records(run / "metrics.jsonl", every_layer=True)
    last = [record for record in records if record["step"] == 200]
    assert [record["layer"] for record in last] == ["network.head", "network.features", "network.layers.0"]
    for record in last:
        assert all(record[tag] is not None for tag in ("collapse/nc1", *DEEP_COLLAPSE_TAGS)), record["layer"]
    status = json.loads((run / "status.json").read_text())
    assert status["final_metrics"]["replicas"][0]["collapse/nc1"] == last[0]["collapse/nc1"]
