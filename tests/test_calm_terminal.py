"""What a default run prints: one progress bar over steps, no library tip or warning (issue 22, item 6 in part)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.helpers import UFM_TRAIN, fit_in_process
from ufm_torch.callbacks import CollapseMonitor
from ufm_torch.cli.process import LIBRARY_WARNINGS, no_product_tips, quiet_library_warnings
from ufm_torch.metrics import CollapseMetricWarning


def test_lightning_product_tips_are_dropped_and_other_lines_kept() -> None:
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, "", 0, message, None, None)

    assert not no_product_tips(record("💡 Tip: For seamless cloud logging and experiment tracking, try installing"))
    assert no_product_tips(record("`Trainer.fit` stopped: `max_steps=30` reached."))


@pytest.mark.slow
def test_a_backbone_run_prints_one_bar_and_no_library_tip_or_warning(tmp_path: Path) -> None:
    arguments = [
        "model=mlp", "data=digits", "data.num_classes=3", "data.samples_per_class=10", "data.batch_size=10",
        "trainer.max_steps=30", "callbacks.progress.refresh_rate=10", f"hydra.run.dir={tmp_path / 'run'}",
    ]  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}  # as a user runs it
    result = subprocess.run(
        [str(UFM_TRAIN), *arguments], cwd=tmp_path, capture_output=True, text=True, env=environment, timeout=240
    )
    assert result.returncode == 0, result.stderr
    printed = (result.stdout + result.stderr).replace("\r", "\n")
    for noise in ("Tip:", "Epoch", "Training:", "weights_only", "Warning", "log_every_n_steps"):
        assert noise not in printed, noise
    bars = [line for line in printed.splitlines() if line.startswith("Steps")]
    assert bars and all("/30 " in line or "/? " in line for line in bars)


def test_undefined_metrics_are_reported_once_per_run_in_one_line(caplog: pytest.LogCaptureFixture) -> None:
    monitor = CollapseMonitor()
    for replicas in (3, 5, 30):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn(f"nc3 set to NaN for {replicas} of 30 replicas: W = 0", CollapseMetricWarning, stacklevel=1)
            warnings.warn("nc1 set to NaN: the class means coincide", CollapseMetricWarning, stacklevel=1)
        monitor._note_undefined(caught)
    with pytest.warns(UserWarning, match="another library's warning"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn("another library's warning", UserWarning, stacklevel=1)
        monitor._note_undefined(caught)
    with caplog.at_level(logging.INFO):
        monitor._report_undefined()
    (line,) = [record.getMessage() for record in caplog.records]
    assert line == (
        "Collapse metrics undefined (null in metrics.jsonl): nc3: W = 0 (3 evaluations); "
        "nc1: the class means coincide (3 evaluations)"
    )
    assert monitor.undefined == {}


def test_library_warnings_are_silenced_in_the_processes_a_run_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP's spawned workers import Lightning afresh: they inherit the filters through ``PYTHONWARNINGS``."""
    monkeypatch.setenv("PYTHONWARNINGS", "default")
    with warnings.catch_warnings():
        quiet_library_warnings()
        assert all("," not in prefix and ":" not in prefix for prefix in LIBRARY_WARNINGS)
        messages = [
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead.",
            "The 'train_dataloader' does not have many workers which may be a bottleneck.",
        ]
        script = "import warnings\n" + "".join(f"warnings.warn({m!r}, UserWarning)\n" for m in messages)
        script += "warnings.warn('a warning of our own', UserWarning)\n"
        child = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, check=True
        )
    assert "Invalid -W option" not in child.stderr
    assert "LeafSpec" not in child.stderr and "many workers" not in child.stderr
    assert "a warning of our own" in child.stderr, "only the listed warnings are silenced"


def test_a_full_batch_ufm_resumes_mid_epoch_without_lightnings_warning(tmp_path: Path) -> None:
    """The full batch is the same at every position of an epoch: Lightning's "dataloader is not resumable" warning
    would be wrong (the resume is bit-exact), so ``RepeatedBatch`` has a state and it is not printed."""
    short = ("callbacks.progress.refresh_rate=0", "logger=none", "module.fused_steps=5")
    fit_in_process(tmp_path, *short, "trainer.max_steps=20")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit_in_process(tmp_path, *short, "trainer.max_steps=40", "ckpt_path=last")
    assert not [w for w in caught if "not resumable" in str(w.message)]
