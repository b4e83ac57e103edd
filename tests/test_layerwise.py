"""experiment=layerwise: the law of data separation (He & Su 2023) fitted layer by layer, its figure, its report
wiring and its config, on synthetic records and on a short real run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from ufm_torch.analysis.layerwise_figure import (
    CDNV_TAG,
    FIT_GID,
    NC1_TAG,
    chosen_steps,
    data_separation_fit,
    layer_order,
    layerwise_figure,
    layerwise_fits,
)
from ufm_torch.analysis.report import write_report, write_run_report
from ufm_torch.cli.train import build_and_fit
from ufm_torch.cli.validation import validate_config
from ufm_torch.run_folder.metrics_log import read_records

STEPS = (0, 1, 3, 10, 32, 100, 316, 1000)
DEPTH = 9
SLOPE_AT_END = -0.25


def synthetic_records(steps: tuple[int, ...] = STEPS, depth: int = DEPTH, heldout: bool = True) -> list[dict]:
    """Every-layer records as the monitor writes them (main layer ``network.head`` first, then the hidden layers by
    depth; the training split, then the held-out one), with log10 NC1 exactly linear in the layer index: slope 0 at
    step 0 and ``SLOPE_AT_END`` at the last step; CDNV = NC1 / 5."""
    hidden = [f"network.body.{3 * index}" for index in range(1, depth)]
    depth_of = {name: index for index, name in enumerate(hidden, 1)} | {"network.head": depth}
    records = []
    for step in steps:
        slope = SLOPE_AT_END * math.log1p(step) / math.log1p(steps[-1])
        for split in ("train", "heldout") if heldout else ("train",):
            for layer in ["network.head", *hidden]:
                nc1 = 10 ** (slope * depth_of[layer] + (0.5 if split == "heldout" else 0.0))
                record = {"step": step, "replica": 0, "init_scale": None, "copy": 0, "seed": 0, "layer": layer,
                          "split": split, NC1_TAG: nc1, CDNV_TAG: nc1 / 5}  # fmt: skip
                if layer == "network.head" and split == "train":
                    record["train/accuracy"] = min(1.0, 0.1 + step / 100)
                records.append(record)
    return records


def write_run_folder(path: Path, layerwise: bool = True, records: list[dict] | None = None) -> Path:
    """A finished backbone run folder with every-layer records, as ``ufm-plot`` reads it."""
    (path / ".hydra").mkdir(parents=True)
    config = {"trainer": {"max_steps": STEPS[-1]}, "data": {"num_classes": 10, "samples_per_class": 100},
              "model": {"feature_dim": 32}, "optimizer": {"lr": 0.01}, "module": {"loss": "cross_entropy"},
              "report": {"layerwise": layerwise, "print_summary": True, "dpi": 40}}  # fmt: skip
    (path / ".hydra" / "config.yaml").write_text(json.dumps(config))
    (path / "status.json").write_text(json.dumps({"status": "finished", "error": None, "wall_time_s": 1.0}))
    lines = records if records is not None else synthetic_records()
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def compose_layerwise(*overrides: str):
    """The composed config of ``experiment=layerwise`` with ``overrides``."""
    with initialize_config_module(config_module="ufm_torch.conf", version_base="1.3"):
        return compose(config_name="train", overrides=["experiment=layerwise", *overrides])


# The fit


def test_fit_of_an_exact_geometric_decay_has_its_slope_and_r2_of_one() -> None:
    layers = np.arange(1, 10)
    slope, intercept, r2 = data_separation_fit(layers, 10.0 ** (-0.5 * layers + 2))
    assert slope == pytest.approx(-0.5, abs=1e-12) and intercept == pytest.approx(2.0, abs=1e-12)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_r2_is_that_of_the_least_squares_line_in_log10() -> None:
    layers = np.arange(1, 8)
    logs = -0.3 * layers + np.array([0.1, -0.2, 0.05, 0.0, 0.15, -0.1, 0.02])
    slope, intercept, r2 = data_separation_fit(layers, 10.0**logs)
    expected_slope, expected_intercept = np.polyfit(layers, logs, 1)
    assert (slope, intercept) == pytest.approx((expected_slope, expected_intercept), abs=1e-12)
    assert r2 == pytest.approx(np.corrcoef(layers, logs)[0, 1] ** 2, abs=1e-12)


def test_fit_skips_undefined_layers_and_needs_two() -> None:
    assert data_separation_fit([1, 2, 3, 4], [10.0, None, math.nan, 0.1])[0] == pytest.approx(-2 / 3)
    assert all(math.isnan(value) for value in data_separation_fit([1, 2], [1.0, None]))
    assert data_separation_fit([1, 2, 3], [2.0, 2.0, 2.0]) == pytest.approx((0.0, math.log10(2.0), 1.0))


def test_chosen_steps_keep_the_first_and_last_and_spread_over_log_steps() -> None:
    assert chosen_steps([0, 5, 10]) == [0, 5, 10]
    steps = chosen_steps(list(range(0, 3001)))
    assert steps[0] == 0 and steps[-1] == 3000 and len(steps) == 5
    assert np.all(np.diff(np.log(steps[1:])) > 1.0)  # log-spaced, not crowded at the end


# The figure


def test_layers_are_ordered_by_depth_with_the_classifier_input_last() -> None:
    order = layer_order(synthetic_records())
    assert order[-1] == "network.head" and order[:2] == ["network.body.3", "network.body.6"] and len(order) == DEPTH


def test_figure_draws_log10_values_per_step_against_the_layer_with_the_final_fit() -> None:
    records = synthetic_records()
    figure = layerwise_figure(records, "$C = 10$")
    nc1_axes, cdnv_axes = figure.axes
    assert "NC1" in nc1_axes.get_title() and "CDNV" in cdnv_axes.get_title()
    assert "layer" in nc1_axes.get_xlabel() and "log" in nc1_axes.get_ylabel()
    steps = chosen_steps(list(STEPS))
    for axes, scale in ((nc1_axes, 1.0), (cdnv_axes, 5.0)):
        solid = {line.get_label(): line for line in axes.get_lines() if line.get_linestyle() == "-"}
        assert list(solid) == [f"step {step}" for step in steps]  # one line per chosen step
        last = solid[f"step {STEPS[-1]}"]
        assert list(last.get_xdata()) == list(range(1, DEPTH + 1))
        np.testing.assert_allclose(last.get_ydata(), SLOPE_AT_END * np.arange(1, DEPTH + 1) - math.log10(scale))
        (fit,) = [line for line in axes.get_lines() if line.get_gid() == FIT_GID]
        assert fit.get_linestyle() == "--" and f"step {STEPS[-1]}" in fit.get_label()
        assert f"slope {SLOPE_AT_END:+.3f}" in fit.get_label() and "= 1.000" in fit.get_label()
        assert axes.get_legend() is not None
    colours = [line.get_color() for line in nc1_axes.get_lines() if line.get_linestyle() == "-"]
    assert len({tuple(np.round(colour, 6)) for colour in colours}) == len(steps)
    dotted = [line for line in nc1_axes.get_lines() if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert len(dotted) == len(steps)  # the held-out split, NC1 panel only
    assert not [line for line in cdnv_axes.get_lines() if line.get_linestyle() == ":"]


def test_fits_at_every_step_give_the_slope_of_the_synthetic_law() -> None:
    fits = {(fit.step, fit.split, fit.metric): fit for fit in layerwise_fits(synthetic_records())}
    final = fits[STEPS[-1], "train", NC1_TAG]
    assert final.slope == pytest.approx(SLOPE_AT_END) and final.r2 == pytest.approx(1.0)
    assert final.rho == pytest.approx(-SLOPE_AT_END * math.log(10)) and final.layers == DEPTH
    assert fits[0, "train", NC1_TAG].slope == pytest.approx(0.0, abs=1e-12)
    assert fits[STEPS[-1], "heldout", NC1_TAG].slope == pytest.approx(SLOPE_AT_END)


# The report


def test_report_layerwise_draws_the_figure_and_the_table_of_fits(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "run")
    report = write_report(run, tensorboard=False)
    png, table = run / "figures" / "layerwise.png", run / "figures" / "layerwise.csv"
    assert png.stat().st_size > 0 and {png, table} <= set(report.written)
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == 3 * len(STEPS)  # NC1 and CDNV on the training split, NC1 held out
    final = next(row for row in rows if row["step"] == str(STEPS[-1]) and row["metric"] == NC1_TAG)
    assert float(final["slope"]) == pytest.approx(SLOPE_AT_END, abs=1e-5) and float(final["r2"]) == pytest.approx(1)
    assert any("slope per layer and R²" in text for text in report.tables)


def test_report_without_the_flag_or_with_one_layer_draws_no_layerwise_figure(tmp_path: Path) -> None:
    run = write_run_folder(tmp_path / "off", layerwise=False)
    write_run_report(run, tensorboard=False)
    assert (run / "figures" / "collapse.png").exists() and not (run / "figures" / "layerwise.png").exists()
    single = [record for record in synthetic_records() if record["layer"] == "network.head"]
    run = write_run_folder(tmp_path / "single", records=single)
    write_run_report(run, tensorboard=False)
    assert not (run / "figures" / "layerwise.png").exists()


# The experiment


def test_layerwise_experiment_measures_every_hidden_activation_of_a_deep_mlp() -> None:
    cfg = compose_layerwise("run_dir=unused")
    validate_config(cfg)
    assert cfg.report.layerwise is True and cfg.model.depth == DEPTH and cfg.model._target_ == "ufm_torch.models.MLP"
    module = instantiate(cfg.module, network=instantiate(cfg.model), optimizer=instantiate(cfg.optimizer))
    names = dict(module.named_modules())
    body = module.network.body
    activations = [f"network.body.{index}" for index, layer in enumerate(body) if isinstance(layer, nn.ReLU)]
    assert len(activations) == DEPTH and isinstance(body[-1], nn.ReLU)
    # every hidden block's activation, in depth order; the feature block's is the classifier's input, measured anyway
    assert list(cfg.callbacks.collapse_monitor.layers) == activations[:-1]
    assert all(name in names for name in cfg.callbacks.collapse_monitor.layers)


@pytest.mark.slow
def test_a_short_layerwise_run_records_every_layer_and_draws_its_figure(tmp_path: Path) -> None:
    cfg = compose_layerwise(f"run_dir={tmp_path}", "trainer.max_steps=40", "logger=none",
                            "callbacks.progress.refresh_rate=0")  # fmt: skip
    assert build_and_fit(cfg).final_metrics["step"] == 40
    records = read_records(tmp_path / "metrics.jsonl", every_layer=True)
    layers = {(record["layer"], record["split"]) for record in records if record["step"] == 40}
    assert len(layers) == 2 * DEPTH
    assert layer_order(records) == [*cfg.callbacks.collapse_monitor.layers, "network.head"]
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")
    report = write_run_report(tmp_path, tensorboard=False)
    assert tmp_path / "figures" / "layerwise.png" in report.written
