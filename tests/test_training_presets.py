"""The presets: Papyan, Han & Donoho's protocol on MNIST and CIFAR-10, backbone defaults that train, several GPUs."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from tests.helpers import compose_train, fit_in_process, write_cifar10, write_mnist
from ufm_torch.callbacks.collapse_monitor import CollapseMonitor
from ufm_torch.cli.overrides import LAUNCHER_PLUGINS
from ufm_torch.cli.validation import validate_config
from ufm_torch.data import DigitsDataModule
from ufm_torch.errors import ConfigError
from ufm_torch.metrics.schedule import evaluation_steps
from ufm_torch.models import MLP
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.training.module import CollapseModule
from ufm_torch.training.precision import resolve_precision

PRESETS = ["papyan_mnist", "papyan_cifar10"]
STEPS_PER_EPOCH = 391  # ceil(50 000 / 128)
EPOCHS = 350


@pytest.fixture
def cuda_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """Config checks as on a machine with CUDA: the GPU presets are refused without one (one line)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


# Papyan, Han & Donoho (2020)


@pytest.mark.parametrize("preset", PRESETS)
def test_papyan_preset_is_their_protocol(preset: str, cuda_present: None) -> None:
    cfg = compose_train(f"experiment={preset}")
    validate_config(cfg)
    assert cfg.model._target_ == "ufm_torch.models.resnet18_small" and cfg.model.feature_dim == 512
    assert cfg.data.samples_per_class * cfg.data.num_classes == 50_000 and cfg.data.batch_size == 128
    assert (cfg.optimizer._target_, cfg.optimizer.momentum) == ("torch.optim.SGD", 0.9)
    assert (cfg.module.loss, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("cross_entropy", 0.0679, 5e-4)
    assert cfg.trainer.max_steps == EPOCHS * STEPS_PER_EPOCH == -(-50_000 // 128) * EPOCHS
    scheduler = cfg.module.scheduler
    assert (scheduler._target_, scheduler._partial_, scheduler.gamma) == ("torch.optim.lr_scheduler.MultiStepLR", True,
                                                                          0.1)  # fmt: skip
    assert list(scheduler.milestones) == [EPOCHS // 3 * STEPS_PER_EPOCH, 2 * EPOCHS // 3 * STEPS_PER_EPOCH]
    assert cfg.trainer.accelerator == "gpu" and resolve_precision(cfg) == "bf16-mixed"
    monitor = cfg.callbacks.collapse_monitor
    steps = evaluation_steps(cfg.trainer.max_steps, monitor.points_per_decade, monitor.every_n_steps, STEPS_PER_EPOCH)
    assert monitor.in_epochs and len(steps) == 50 and steps[-1] == cfg.trainer.max_steps
    assert all(step % STEPS_PER_EPOCH == 0 for step in steps)


@pytest.mark.parametrize("preset", PRESETS)
def test_papyan_preset_with_mse_takes_their_nn_mse_loss_step(preset: str, cuda_present: None) -> None:
    cfg = compose_train(f"experiment={preset}", "module.loss=mean_squared")
    validate_config(cfg)
    num_classes = cfg.data.num_classes
    # nn.MSELoss (mean over n·C entries) = (2/C)·mean_squared: lr × 2/C and weight decay × C/2 give the same steps
    assert cfg.optimizer.lr == pytest.approx(0.0184 * 2 / num_classes)
    assert cfg.optimizer.weight_decay == pytest.approx(5e-4 * num_classes / 2)


@pytest.mark.parametrize("preset", PRESETS)
def test_papyan_preset_runs_on_the_cpu_in_float32_when_asked(preset: str) -> None:
    cfg = compose_train(f"experiment={preset}", "trainer=default", "trainer.precision=32-true", "trainer.max_steps=2")
    validate_config(cfg)
    assert cfg.trainer.accelerator == "auto" and resolve_precision(cfg) == "32-true"
    assert cfg.module.scheduler.milestones[0] == 45356  # the preset's values stay


@pytest.mark.slow
@pytest.mark.vision
@pytest.mark.parametrize(
    ("preset", "write", "sizes"),
    [
        ("papyan_mnist", write_mnist, {"train_per_class": 10, "test_per_class": 1}),
        ("papyan_cifar10", write_cifar10, {"train_per_class": 10, "test_per_class": 1}),  # 5 batches of 20
    ],
)
def test_papyan_preset_trains_on_small_files(tmp_path: Path, preset: str, write, sizes: dict[str, int]) -> None:
    pytest.importorskip("torchvision")
    write(tmp_path / "data", **sizes)
    run = tmp_path / "run"
    fit_in_process(
        run, f"experiment={preset}", "trainer=default", "trainer.max_steps=6", f"data.root={tmp_path / 'data'}",
        "data.samples_per_class=10", "data.batch_size=4", "data.eval_batch_size=50",
        "module.scheduler.milestones=[2,4]", "callbacks.progress.refresh_rate=0",
    )  # fmt: skip
    # 100 images in batches of 4: 25 steps an epoch, so in 6 steps only step 0 and the last are epochs' ends
    assert [record["step"] for record in read_records(run / "metrics.jsonl")] == [0, 6]
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    (group,) = checkpoint["optimizer_states"][0]["param_groups"]
    assert group["lr"] == pytest.approx(0.0679 * 0.01) and group["momentum"] == 0.9
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 6


# The learning-rate scheduler and the monitor's epochs


class LearningRates(L.Callback):
    """The learning rate each optimiser step takes, by the step it starts from."""

    def __init__(self) -> None:
        self.rates: dict[int, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.rates[trainer.global_step] = trainer.optimizers[0].param_groups[0]["lr"]


def test_scheduler_milestones_count_optimiser_steps(tmp_path: Path) -> None:
    torch.manual_seed(0)
    datamodule = DigitsDataModule(num_classes=3, samples_per_class=8, batch_size=6)
    network = MLP(64, 3, feature_dim=4, width=8, depth=2)
    scheduler = partial(torch.optim.lr_scheduler.MultiStepLR, milestones=[3, 6], gamma=0.1)
    module = CollapseModule(network, partial(torch.optim.SGD, lr=0.1), loss="mean_squared", scheduler=scheduler)
    rates = LearningRates()
    trainer = L.Trainer(max_steps=8, callbacks=[rates], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    expected = [0.1] * 3 + [0.01] * 3 + [0.001] * 2
    assert list(rates.rates) == list(range(8))
    assert list(rates.rates.values()) == pytest.approx(expected)


def test_module_without_scheduler_keeps_a_plain_optimiser() -> None:
    module = CollapseModule(MLP(4, 2, feature_dim=2), partial(torch.optim.SGD, lr=0.1))
    assert isinstance(module.configure_optimizers(), torch.optim.SGD)


def test_epoch_schedule_evaluates_log_spaced_epochs_at_their_last_step() -> None:
    assert evaluation_steps(100, points_per_decade=2, steps_per_epoch=10) == [0, 10, 30, 100]
    assert evaluation_steps(35, points_per_decade=1, steps_per_epoch=3) == [0, 3, 30, 35]
    assert evaluation_steps(100, points_per_decade=2, steps_per_epoch=10, every_n_steps=45) == [0, 10, 30, 45, 90, 100]


def test_monitor_in_epochs_reads_the_loaders_length(tmp_path: Path) -> None:
    torch.manual_seed(0)
    datamodule = DigitsDataModule(num_classes=3, samples_per_class=9, batch_size=4)  # 27 samples: 7 steps an epoch
    module = CollapseModule(MLP(64, 3, feature_dim=4, width=8, depth=2), partial(torch.optim.SGD, lr=0.05))
    monitor = CollapseMonitor(str(tmp_path), points_per_decade=3, in_epochs=True)
    trainer = L.Trainer(max_steps=30, callbacks=[monitor], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    assert monitor.steps == [0, 7, 14, 30]  # epochs 1, 2 (5 would end at step 35), and the last step
    assert [record["step"] for record in read_records(tmp_path / "metrics.jsonl")] == [0, 7, 14, 30]


STEP_LR = "module.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:10}"
IN_EPOCHS = "callbacks.collapse_monitor.in_epochs"


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ([STEP_LR], "module.scheduler"),
        ([f"{IN_EPOCHS}=true"], IN_EPOCHS),
        (["model=mlp", "data=digits", f"{IN_EPOCHS}=maybe"], IN_EPOCHS),
        (["model=mlp", "data=digits", "module.scheduler=7"], "module.scheduler"),
    ],
)
def test_backbone_only_keys_are_refused_on_the_ufm_and_checked(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        validate_config(compose_train(*overrides))
    assert "\n" not in str(error.value)


# Backbone defaults that train on the shipped data


@pytest.mark.parametrize(("model", "lr"), [("mlp", 0.05), ("convnet", 0.05), ("resnet18", 0.005)])
def test_each_backbone_has_a_default_sgd_step_size(model: str, lr: float) -> None:
    cfg = compose_train(f"model={model}", "data=digits")
    validate_config(cfg)
    assert cfg.optimizer.lr == lr
    assert compose_train(f"model={model}", "data=digits", "optimizer.lr=0.02").optimizer.lr == 0.02
    assert compose_train(f"model={model}", "data=digits", "optimizer=adam").optimizer.lr == 1e-3


def test_the_ufm_keeps_the_papers_step_size() -> None:
    cfg = compose_train()
    assert cfg.optimizer.lr == 0.05 and "sgd_lr" not in cfg


@pytest.mark.slow
@pytest.mark.parametrize(
    "model", ["mlp", "convnet", pytest.param("resnet18", marks=pytest.mark.vision)]
)
def test_backbone_default_command_on_digits_trains_without_diverging(tmp_path: Path, model: str) -> None:
    if model == "resnet18":
        pytest.importorskip("torchvision")
    run = tmp_path / "run"
    # η = 0.05 on ResNet-18 diverged by step 6 (a DivergenceError here, exit 3 from ufm-train)
    fit_in_process(run, f"model={model}", "data=digits", "trainer.max_steps=40", "callbacks.progress.refresh_rate=0")
    records = read_records(run / "metrics.jsonl")
    assert records[-1]["step"] == 40
    assert records[-1]["train/loss"] < 0.8 * records[0]["train/loss"]
    assert records[-1]["train/accuracy"] > 0.3


# Several devices


def test_ddp_preset_uses_every_visible_gpu_over_nccl(cuda_present: None) -> None:
    cfg = compose_train("model=mlp", "data=digits", "trainer=ddp")
    validate_config(cfg)
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("gpu", -1)
    strategy = OmegaConf.to_container(cfg.trainer.strategy)
    assert strategy == {"_target_": "lightning.pytorch.strategies.DDPStrategy", "start_method": "spawn",
                        "process_group_backend": "nccl"}  # fmt: skip
    assert instantiate(cfg.trainer.strategy).process_group_backend == "nccl"
    assert resolve_precision(cfg) == "bf16-mixed"
    assert compose_train("model=mlp", "data=digits", "trainer=ddp_cpu").trainer.strategy.process_group_backend == "gloo"


def test_the_readmes_slurm_launcher_is_a_known_plugin() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "hydra/launcher=submitit_slurm" in readme
    assert LAUNCHER_PLUGINS["submitit_slurm"] == ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher")
