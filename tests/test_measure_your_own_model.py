"""The collapse monitor on a LightningModule that knows nothing of ufm-torch: the README's example as written,
every layer and split at true steps in every logger, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ufm_torch.callbacks import CollapseMonitor
from ufm_torch.errors import ConfigError
from ufm_torch.metrics import layer_metrics

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The Python block of the README's "Measure your own model" section."""
    section = README.read_text().split("## Measure your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_readme_example_is_at_most_15_lines() -> None:
    assert len([line for line in readme_example().splitlines() if line.strip()]) <= 15


def test_the_readme_example_runs_as_written_and_logs_every_layer_and_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    run = tmp_path / "lightning_logs" / "version_0"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({record["step"] for record in records})
    assert steps[0] == 0 and steps[-1] == 300 and len(steps) > 20
    kinds = {(record["layer"], record["split"]) for record in records}
    assert kinds == {("net.4", "train"), ("net.1", "train"), ("net.4", "heldout"), ("net.1", "heldout")}
    last = {(r["layer"], r["split"]): r for r in records if r["step"] == 300}
    for name in ("nc1", "cdnv", "gnc2", "unc3", "nc3", "nc4", "ncc_agreement"):
        assert last["net.4", "train"][f"collapse/{name}"] is not None, name
    assert "collapse/nc3" not in last["net.1", "train"] and last["net.1", "train"]["collapse/cdnv"] > 0
    assert set(last["net.4", "heldout"]) >= {"collapse/nc1", "collapse/cdnv", "collapse/nc4", "collapse/ncc_agreement"}
    assert last["net.4", "train"]["train/accuracy"] > 0.98  # the split and the initialisation are not seeded
    assert 0.8 < last["net.4", "train"]["heldout/accuracy"] <= 1.0
    assert last["net.4", "heldout"]["collapse/nc1"] > 0 and 0 <= last["net.4", "heldout"]["collapse/nc4"] <= 1
    runs = {path.parent.relative_to(run).as_posix() for path in run.rglob("events.out.tfevents.*")}
    assert {"backbone", "backbone/layer=net.1", "backbone/heldout", "backbone/layer=net.1/heldout"} <= runs


class Features(Dataset):
    """Random 2-class inputs as dict batches ``{"image": (1, 4, 4), "target": label}``."""

    def __init__(self, labels: list[int]) -> None:
        self.inputs = torch.randn(len(labels), 1, 4, 4, generator=torch.Generator().manual_seed(0))
        self.labels = torch.tensor(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.inputs[index], "target": self.labels[index]}


class ConvModule(L.LightningModule):
    """A small ConvNet with a named head, trained on dict batches."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU())
        self.pool = nn.Flatten()
        self.head = nn.Linear(48, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv(x)))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch["image"]), batch["target"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(tmp_path: Path, monitor: CollapseMonitor, labels: list[int] | None = None, **trainer: object) -> ConvModule:
    """Train :class:`ConvModule` for 8 steps with ``monitor`` on dict batches; returns the trained module."""
    loader = DataLoader(Features(labels or [0, 1] * 8), batch_size=4)
    options = {"max_steps": 8, "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    module = ConvModule()
    L.Trainer(default_root_dir=tmp_path, callbacks=[monitor], **(options | trainer)).fit(module, loader)
    return module


def test_every_evaluation_reaches_every_logger_at_true_steps_whatever_log_every_n_steps(tmp_path: Path) -> None:
    monitor = CollapseMonitor(
        output_dir=tmp_path, layers=["conv.1"], batch_keys=("image", "target"), every_n_steps=1, points_per_decade=1
    )
    loggers = [CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")]
    fit(tmp_path, monitor, logger=loggers, log_every_n_steps=50)
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    logged = {int(row["step"]) for row in rows if row.get("collapse/nc1/backbone")}
    assert logged == set(range(9))
    assert any(row.get("collapse/cdnv/backbone/layer=conv.1") for row in rows)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sorted({record["step"] for record in records}) == list(range(9))


def test_the_monitor_equals_the_pure_metrics_of_the_hooked_features(tmp_path: Path) -> None:
    monitor = CollapseMonitor(output_dir=tmp_path, layers=["conv"], batch_keys=("image", "target"), feature_map="pool")
    module = fit(tmp_path, monitor, labels=[0, 1, 1] * 6)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    last = {record["layer"]: record for record in records if record["step"] == 8}
    data = Features([0, 1, 1] * 6)
    with torch.no_grad():
        pooled = module.conv(data.inputs).mean(dim=(2, 3)).double()
        penultimate = module.pool(module.conv(data.inputs)).double()
    expected_conv = layer_metrics(pooled, data.labels, num_classes=2)
    expected_head = layer_metrics(penultimate, data.labels, module.head.weight.double(), module.head.bias.double())
    for name, value in expected_conv.items():
        assert last["conv"][f"collapse/{name}"] == pytest.approx(float(value), rel=1e-9, abs=1e-12), name
    for name, value in expected_head.items():
        assert last["head"][f"collapse/{name}"] == pytest.approx(float(value), rel=1e-9, abs=1e-12), name


@pytest.mark.parametrize(
    ("monitor", "message"),
    [
        (dict(layers=["conv.3"]), r"layer 'conv.3' is not a module of ConvModule; the closest names .* conv.1"),
        (dict(classifier="conv.0"), r"classifier 'conv.0' is a Conv2d, not an nn.Linear"),
        (dict(batch_keys=("x", "y")), r"a dict batch must hold the keys \['x', 'y'\]"),
        (dict(feature_map="mean"), r"feature_map='mean' is not allowed; it must be one of \['pool', 'flatten'\]"),
    ],
)
def test_bad_input_is_one_line_before_training(tmp_path: Path, monitor: dict, message: str) -> None:
    options = {"output_dir": tmp_path, "batch_keys": ("image", "target")} | monitor
    with pytest.raises(ConfigError, match=message) as error:
        fit(tmp_path, CollapseMonitor(**options))
    assert "\n" not in str(error.value)


def test_labels_outside_the_classes_are_one_line_before_training(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"labels must lie in \[0, 2\) .* got a batch with labels in \[0, 2\]"):
        fit(tmp_path, CollapseMonitor(output_dir=tmp_path, batch_keys=("image", "target")), labels=[0, 1, 2] * 4)


def test_an_unreadable_batch_is_one_line(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)
    module = nn.Sequential(nn.Linear(4, 2))
    monitor = CollapseMonitor(output_dir=tmp_path, train_dataloader=loader)

    class Wrapped(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: list, batch_idx: int) -> torch.Tensor:
            return self(batch[0]).sum()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    with pytest.raises(ConfigError, match="cannot read a batch of type list"):
        L.Trainer(max_steps=2, logger=False, enable_progress_bar=False, callbacks=[monitor]).fit(Wrapped(), loader)
