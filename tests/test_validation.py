"""Bad input ends ufm-train with exit code 2 and one readable line, before anything is trained."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import compose_train, run_ufm_train, ufm_train_in_process
from ufm_torch.cli.overrides import check_group_choices
from ufm_torch.cli.train import CONFIG_DIR
from ufm_torch.cli.validation import ConfigError, check_schema, validate_config

OPTIMIZERS = "choose one of adam, momentum, sgd"

BAD_OVERRIDES = [
    ("model.init_scale=-1", "model.init_scale"),
    ("model.init_scale=0", "model.init_scale"),
    ("model.init_scale=[1.0,-0.1]", "model.init_scale"),
    ("data.num_classes=1", "data.num_classes"),
    ("data.num_classes=two", "data.num_classes"),
    ("model.feature_dim=0", "model.feature_dim"),
    ("model.feature_dim=1.5", "model.feature_dim"),
    ("model.replicas=0", "model.replicas"),
    ("optimizer.lr=0", "optimizer.lr"),
    ("optimizer.lr=-0.1", "optimizer.lr"),
    ("optimizer.momentum=1.0", "optimizer.momentum"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("seed=-3", "seed"),
    ("seed=abc", "seed"),
    ("seed=null", "seed"),
    ("module.loss=hinge", "module.loss"),
    ("optimizer.lr=0.25", "optimizer.lr"),
    ("trainer.precision=8", "trainer.precision"),
    ("seed=true", "seed"),
    ("data.num_classes=true", "data.num_classes"),
    ("trainer.max_steps=1.5", "trainer.max_steps"),
    ("data.samples_per_class='3'", "data.samples_per_class"),
    ("optimizer.lr=inf", "optimizer.lr"),
    ("optimizer.lr='0.1'", "optimizer.lr"),
    ("allow_unstable=1", "allow_unstable"),
    ("module.loss=[1]", "module.loss"),
    ("callbacks.collapse_monitor.points_per_decade=0", "callbacks.collapse_monitor.points_per_decade"),
    ("~optimizer.lr", "optimizer.lr"),
]


@pytest.mark.parametrize(("override", "key"), BAD_OVERRIDES)
def test_bad_value_is_rejected_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        validate_config(compose_train(override))
    assert "\n" not in str(error.value)


def test_default_config_is_valid() -> None:
    validate_config(compose_train())


def test_unstable_step_size_runs_only_when_allowed() -> None:
    validate_config(compose_train("optimizer.lr=0.25", "allow_unstable=true"))


def test_momentum_widens_the_stable_step_size() -> None:
    validate_config(compose_train("optimizer=momentum", "optimizer.lr=0.3"))
    with pytest.raises(ConfigError, match=r"optimizer\.lr"):
        validate_config(compose_train("optimizer=momentum", "optimizer.lr=0.43"))


def test_feature_dim_below_c_minus_one_warns_about_theorem_3() -> None:
    with pytest.warns(UserWarning, match="Theorem 3"):
        validate_config(compose_train("data.num_classes=5", "model.feature_dim=2"))


@pytest.mark.parametrize(
    ("override", "key"),
    [("model.init_scale=-1", "model.init_scale"), ("data.num_classes=1", "data.num_classes"),
     ("model.feature_dim=0", "model.feature_dim"), ("optimizer=rmsprop", "optimizer=rmsprop"),
     ("seed=abc", "seed"), ("model.feature_dims=3", "no such key"), ("model.feature_dim=[1,2", "cannot parse"),
     ("seed=", "seed"), ("optimizer.lr=0.25", "allow_unstable")],
)
def test_cli_exits_2_with_one_line_and_trains_nothing(tmp_path: Path, override: str, key: str) -> None:
    result = ufm_train_in_process(override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_exit_2_with_one_line_and_nothing_trained(result, key, tmp_path / "run")


@pytest.mark.parametrize(
    ("override", "key"), [("optimizer.lr=0.25", "allow_unstable"), ("model.feature_dims=3", "no such key")]
)
def test_the_ufm_train_process_exits_2_with_one_line_and_trains_nothing(tmp_path: Path, override: str, key: str):
    """End to end: the console script in a process of its own, for a mistake of the config checks and one of
    Hydra's composition."""
    result = run_ufm_train(override, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert_exit_2_with_one_line_and_nothing_trained(result, key, tmp_path / "run")


def assert_exit_2_with_one_line_and_nothing_trained(result, key: str, run: Path) -> None:
    """Exit code 2, one line on stderr naming ``key``, no traceback, no checkpoint and no metrics in ``run``."""
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and key in lines[0] and "Traceback" not in result.stderr
    assert not (run / "checkpoints").exists()
    assert not (run / "metrics.jsonl").exists()


def test_group_option_lists_and_sweeps_are_checked_option_by_option() -> None:
    check_group_choices(["callbacks=[collapse_monitor,progress]", "optimizer=sgd,adam"], CONFIG_DIR)
    with pytest.raises(ConfigError, match=r"optimizer=lbfgs"):
        check_group_choices(["optimizer=sgd,lbfgs"], CONFIG_DIR)
    with pytest.raises(ConfigError, match="callbacks=nonsense"):
        check_group_choices(["callbacks=[collapse_monitor,nonsense]"], CONFIG_DIR)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("seed=true", "seed=True is not allowed; it must be an integer >= 0"),
        ("model.feature_dim=1.5", "model.feature_dim=1.5 is not allowed; it must be an integer >= 1"),
        ("trainer.max_steps='1'", "trainer.max_steps='1' is not allowed; it must be an integer >= 1"),
        (
            "model.init_scale=[1.0,-0.1]",
            "model.init_scale=[1.0, -0.1] is not allowed; it must be a number > 0 or a non-empty list of numbers > 0",
        ),
        ("~trainer.max_steps", "trainer.max_steps is missing; it must be an integer >= 1"),
        ("~optimizer", "optimizer.lr is missing; it must be a number > 0 or a non-empty list of numbers > 0"),
        (
            "model.feature_dim=${data.nope}",
            "model.feature_dim cannot be resolved: Interpolation key 'data.nope' not found",
        ),
    ],
)
def test_message_names_the_whole_key_its_value_and_the_allowed_range(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        validate_config(compose_train(override))
    assert str(error.value) == message


def test_strict_types_but_ints_for_floats_and_unknown_keys_allowed() -> None:
    validate_config(compose_train("optimizer.lr=0.001", "optimizer.weight_decay=0", "model.init_scale=[1,2]"))
    validate_config(compose_train("+model.note=anything", "+data.extra=[1,2]", "+notes.owner=me"))
    validate_config(compose_train("trainer.precision=64", "threads=null", "module.loss=null"))
    check_schema({"seed": 0, "optimizer": {"lr": 1}, "trainer": {"max_steps": 1}})
    with pytest.raises(ConfigError, match=r"^seed is missing; it must be an integer >= 0$"):
        check_schema({"optimizer": {"lr": 1}, "trainer": {"max_steps": 1}})


@pytest.mark.parametrize(
    "override",
    [
        "optimizer=choice(sgd,momentum)",
        "optimizer=tag(fast,choice(sgd,adam))",
        "optimizer=glob(*)",
        "optimizer=glob(*,exclude=s*)",
        "callbacks=choice([collapse_monitor,progress],[none])",
        "+optimizer=adam",
        "~optimizer",
        "optimizer=null",
        "data@comparison.ufm.data=ufm",
        "hydra/launcher=basic",
        "optimizer=[sgd",
    ],
)
def test_good_group_sweeps_and_unparsable_overrides_pass(override: str) -> None:
    check_group_choices(["-m", override, "model.init_scale=1e-3,1e-2"], CONFIG_DIR)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer=choice(sgd,lbfgs)", f"optimizer=lbfgs is not a known option; {OPTIMIZERS}"),
        ("optimizer=sgd,'rmsprop'", f"optimizer=rmsprop is not a known option; {OPTIMIZERS}"),
        ("+optimizer=lbfgs", f"optimizer=lbfgs is not a known option; {OPTIMIZERS}"),
        ("optimizer=glob(x*)", f"optimizer=glob(x*) matches no option; {OPTIMIZERS}"),
        (
            "optimizer=glob(*,exclude=[adam,momentum,sgd])",
            f"optimizer=glob(*,exclude=[adam,momentum,sgd]) matches no option; {OPTIMIZERS}",
        ),
        ("callbacks=choice([collapse_monitor],[nope])", "callbacks=nope is not a known option; choose one of "),
    ],
)
def test_bad_group_options_in_sweeps_are_rejected(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        check_group_choices(["-m", override], CONFIG_DIR)
    assert str(error.value).startswith(message)
