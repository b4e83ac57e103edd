"""Reports of run and sweep folders: every figure and table, drawn after training from the folder's files alone.

This is the one way figures and summaries are made. The Hydra hook :class:`ufm_torch.cli.report_hook.RunReport`
calls :func:`write_run_report` when a job ends and :func:`write_sweep_report` when a multirun ends; ``ufm-plot PATH``
calls :func:`write_report`, which does both for a sweep folder. The same folder always gives the same files. Jobs
hold the main records of ``metrics.jsonl`` (:func:`ufm_torch.run_folder.metrics_log.read_records`); records of other
layers and of the held-out split are read by the figures that draw them.

A run's report (``report`` node of its config):
- ``figures/collapse.png``: NC1–NC4, SNC1–SNC3, dist_S and accuracy against the fraction of training, one line per
  init scale ε (the median over its replicas), for every run;
- with ``report.paper_figures``: Mixon et al.'s Figures 1 and 2 and the ε-scaling figure (``figures/figure1.png``,
  ``figure2.png``, ``scaling.png``) and ``summary.csv`` (:mod:`ufm_torch.analysis.summary`), for UFM runs;
- with ``report.layerwise``: log10 NC1 and CDNV against the layer index with He & Su's fitted line
  (``figures/layerwise.png``, ``figures/layerwise.csv``; :mod:`ufm_torch.analysis.layerwise_figure`), read from
  every layer's records, for runs that measured two layers or more;
- the figures as images in the TensorBoard run ``tb/figures``, with a text panel ``report/overview``: the command
  line, the outcome and the final metrics table (:mod:`ufm_torch.analysis.run_overview`).

A sweep's report: ``sweep_summary.csv`` (one row per job and replica), the sweep figures and TensorBoard HPARAMS
(:mod:`ufm_torch.analysis.sweep_figures`), and with ``report.comparison`` the jobs in one figure,
``figures/compare.png`` (``experiment=compare_digits``); ``report.regularization``, ``report.phase_diagram`` and
``report.minority_collapse`` draw the laboratory figures (:mod:`ufm_torch.analysis.laboratory_figures`).

``report.lazy`` (a multirun of small jobs, whose figures would cost more than their training): when the multirun
ends, only ``sweep_summary.csv``, HPARAMS and the laboratory and comparison figures are drawn; each job's report and
the per-key sweep figures are left to ``ufm-plot`` on the sweep folder, which draws everything.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from ufm_torch.analysis.comparison import collapse_figure
from ufm_torch.analysis.deep_figures import deep_collapse_figure, deep_linear_figure
from ufm_torch.analysis.figure_style import loss_name
from ufm_torch.analysis.laboratory_figures import (
    minority_collapse_figure,
    phase_diagram_figure,
    regularization_figure,
)
from ufm_torch.analysis.layerwise_figure import LAYERWISE_CSV, layer_order, layerwise_figure, write_layerwise_table
from ufm_torch.analysis.many_classes_figure import many_classes_figure
from ufm_torch.analysis.orthoplex_figure import orthoplex_figure
from ufm_torch.analysis.paper_figures import (
    RunSetup,
    TheoryCurve,
    figure1,
    figure2,
    save_figure,
    scaling_figure,
    snc3_theory_curves,
)
from ufm_torch.analysis.run_overview import OVERVIEW_TAG, run_overview
from ufm_torch.analysis.summary import write_summary
from ufm_torch.analysis.sweep_figures import draw_sweep_figures
from ufm_torch.analysis.sweep_hparams import write_sweep_hparams
from ufm_torch.analysis.sweep_table import format_summary_csv, summary_table
from ufm_torch.models import UFM_DEFAULT_LOSS
from ufm_torch.models.ufm import class_sizes
from ufm_torch.objectives.ufm import PAPER_OBJECTIVE
from ufm_torch.run_folder.jobs import Job, read_job, read_jobs
from ufm_torch.run_folder.layout import (
    FIGURES_DIR,
    HPARAMS_DIR,
    METRICS_FILE,
    RUN_SUMMARY_FILE,
    SWEEP_SUMMARY_FILE,
    TENSORBOARD_DIR,
    TENSORBOARD_FIGURES_RUN,
    is_run_folder,
)
from ufm_torch.run_folder.metrics_log import read_records
from ufm_torch.run_folder.tensorboard import write_figure_images


@dataclass(frozen=True)
class ReportSettings:
    """The ``report`` node of a run's config: what its report draws."""

    paper_figures: bool = False
    comparison: bool = False
    regularization: bool = False
    phase_diagram: bool = False
    minority_collapse: bool = False
    layerwise: bool = False
    deep_linear: bool = False
    deep_collapse: bool = False
    many_classes: bool = False
    orthoplex: bool = False
    dpi: int = 150
    snc3_theory: bool = True
    print_summary: bool = True
    lazy: bool = False

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> ReportSettings:
        """The settings of a saved config (``.hydra/config.yaml`` as a dict); defaults for keys it lacks."""
        node = config.get("report") or {}
        return cls(**{item.name: node[item.name] for item in fields(cls) if item.name in node})


@dataclass
class Report:
    """What a report wrote, the printable tables, and the count of jobs per outcome."""

    folder: Path
    written: list[Path] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: the folder, how many files were written, and how the jobs ended."""
        outcome = ", ".join(f"{count} {status}" for status, count in sorted(self.statuses.items()))
        return f"Report of {self.folder}: {len(self.written)} files written (jobs: {outcome})"


def run_setup(config: Mapping[str, Any]) -> RunSetup:
    """C, N, p and the step size η of a UFM run's saved config, for figure titles and theory overlays."""
    data, model, optimizer = config["data"], config["model"], config["optimizer"]
    return RunSetup(data["num_classes"], data["samples_per_class"], model["feature_dim"], float(optimizer["lr"]))


def is_plain_gradient_descent(config: Mapping[str, Any]) -> bool:
    """Full-batch SGD without momentum or weight decay on the paper's summed loss ½‖WH + b1ᵀ − Y‖²_F: the setting of
    Theorem 2's SNC3 predictions (Mixon et al.)."""
    optimizer, data = config["optimizer"], config["data"]
    return (
        optimizer.get("_target_") == "torch.optim.SGD"
        and not optimizer.get("momentum")
        and not optimizer.get("weight_decay")
        and data.get("batch_size") is None
        and ((config.get("module") or {}).get("loss") or UFM_DEFAULT_LOSS) == PAPER_OBJECTIVE.loss
    )


def describe_shape(config: Mapping[str, Any]) -> str:
    """``C = 10, N = 50, p = 32`` of a saved config, for figure titles; ``n_k = 50,50,5,5`` for unbalanced classes."""
    data, model = config.get("data") or {}, config.get("model") or {}
    sizes = data.get("samples_per_class")
    name = "N"
    if data.get("num_classes") is not None and sizes is not None:
        counts = class_sizes(data["num_classes"], sizes, data.get("imbalance_ratio", 1.0), data.get("minority_classes"))
        if len(set(counts)) > 1:
            name, sizes = "n_k", ",".join(map(str, counts))
    shape = {"C": data.get("num_classes"), name: sizes, "p": model.get("feature_dim")}
    return ", ".join(f"${name} = {value}$" for name, value in shape.items() if value is not None)


def paper_figures(job: Job, settings: ReportSettings) -> dict[str, Figure]:
    """Figures 1 and 2 of Mixon et al. and the ε-scaling figure of a UFM run, with the SNC3 theory overlays when the
    run is plain full-batch gradient descent on the summed loss."""
    setup = run_setup(job.config)
    theory: list[TheoryCurve] = []
    if settings.snc3_theory and is_plain_gradient_descent(job.config):
        theory = snc3_theory_curves(setup, max(int(record["step"]) for record in job.records))
    return {
        "figure1": figure1(job.records, setup, theory),
        "figure2": figure2(job.records, setup),
        "scaling": scaling_figure(job.records, setup),
    }


def write_run_report(run_dir: Path, tensorboard: bool = True) -> Report:
    """The report of one run folder (module docstring); nothing is written for a run without records."""
    run_dir = Path(run_dir)
    return draw_run_report(read_job(run_dir, run_dir.parent), tensorboard)


def draw_run_report(job: Job, tensorboard: bool = True) -> Report:
    """The report of a run already read back (:func:`write_run_report`)."""
    run_dir = job.path
    report = Report(run_dir, statuses={str(job.status.get("status")): 1})
    if not job.records:
        return report
    settings = ReportSettings.of(job.config)
    max_steps = int(job.config["trainer"]["max_steps"])
    losses = {job.name: loss_name(job.config, job.records)}
    figures = {
        "collapse": collapse_figure({job.name: job.records}, {job.name: max_steps}, describe_shape(job.config), losses)
    }
    has_init_scales = all(record.get("init_scale") is not None for record in job.records)
    if settings.paper_figures and has_init_scales:
        figures |= paper_figures(job, settings)
        table = write_summary(job.records, run_dir / RUN_SUMMARY_FILE)
        report.written.append(run_dir / RUN_SUMMARY_FILE)
        report.tables.append(f"Final errors per init scale ε ({run_dir / RUN_SUMMARY_FILE}):\n{table}")
    if settings.layerwise:
        figures |= layerwise_figures(job, report)
    pngs = {name: save_figure(figure, run_dir / FIGURES_DIR / f"{name}.png", settings.dpi) for name, figure in
            figures.items()}
    report.written.extend(pngs.values())
    if tensorboard and (run_dir / TENSORBOARD_DIR).is_dir():
        final_step = max(int(record["step"]) for record in job.records)
        images = {f"{'report' if name in ('collapse', 'layerwise') else 'paper'}/{name}": path
                  for name, path in pngs.items()}  # fmt: skip
        texts = {OVERVIEW_TAG: run_overview(job)}
        write_figure_images(run_dir / TENSORBOARD_DIR / TENSORBOARD_FIGURES_RUN, images, final_step, texts)
    if not settings.print_summary:
        report.tables.clear()
    return report


def layerwise_figures(job: Job, report: Report) -> dict[str, Figure]:
    """``report.layerwise``: the layer-by-layer figure from every record of the run's ``metrics.jsonl``, and
    ``figures/layerwise.csv`` with its printed table; nothing for a run that measured fewer than two layers."""
    records = read_records(job.path / METRICS_FILE, every_layer=True)
    if len(layer_order(records)) < 2:
        return {}
    path = job.path / FIGURES_DIR / LAYERWISE_CSV
    table = write_layerwise_table(records, path)
    report.written.append(path)
    report.tables.append(f"log10 NC1 and CDNV against the layer: fitted slope per layer and R² ({path}):\n{table}")
    return {"layerwise": layerwise_figure(records, describe_shape(job.config))}


def comparison_figure(jobs: Sequence[Job]) -> Figure:
    """The jobs of a comparison in one figure, a line per job and ε in each metric's panel
    (:func:`ufm_torch.analysis.comparison.collapse_figure`)."""
    with_records = [job for job in jobs if job.records]
    histories = {job.name: job.records for job in with_records}
    lengths = {job.name: int(job.config["trainer"]["max_steps"]) for job in with_records}
    losses = {job.name: loss_name(job.config, job.records) for job in with_records}
    return collapse_figure(histories, lengths, describe_shape(with_records[0].config), losses)


def write_sweep_report(sweep_dir: Path, tensorboard: bool = True, runs: bool = False, lazy: bool = False) -> Report:
    """The report of a sweep folder (module docstring); with ``runs`` also every job's own report first; ``lazy``
    leaves out the per-key sweep figures (the end of a multirun whose jobs say ``report.lazy``: ``ufm-plot`` draws
    them, and every job's report, later)."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    report = Report(sweep_dir, statuses=dict(Counter(str(job.status.get("status")) for job in jobs)))
    if runs:
        for job in jobs:
            run_report = draw_run_report(job, tensorboard)
            report.written += run_report.written
            report.tables += run_report.tables
    table = summary_table(jobs)
    (sweep_dir / SWEEP_SUMMARY_FILE).write_text(format_summary_csv(table))
    report.written.append(sweep_dir / SWEEP_SUMMARY_FILE)
    if not lazy:
        report.written += draw_sweep_figures(jobs, table, sweep_dir / FIGURES_DIR)
    if tensorboard:
        report.written += write_sweep_hparams(table, sweep_dir / HPARAMS_DIR)
    settings = [ReportSettings.of(job.config) for job in jobs]
    dpi = settings[0].dpi if settings else ReportSettings.dpi
    drawn = [job for job in jobs if job.records]
    laboratory = (
        ("compare.png", "comparison", comparison_figure),
        ("regularization.png", "regularization", regularization_figure),
        ("phase_diagram.png", "phase_diagram", phase_diagram_figure),
        ("minority_collapse.png", "minority_collapse", minority_collapse_figure),
        ("deep_linear.png", "deep_linear", deep_linear_figure),
        ("deep_collapse.png", "deep_collapse", deep_collapse_figure),
        ("many_classes.png", "many_classes", many_classes_figure),
        ("orthoplex.png", "orthoplex", orthoplex_figure),
    )
    for name, flag, draw in laboratory:
        if drawn and any(getattr(setting, flag) for setting in settings):
            report.written.append(save_figure(draw(drawn), sweep_dir / FIGURES_DIR / name, dpi))
    return report


def write_report(folder: Path, tensorboard: bool = True) -> Report:
    """The report of a run folder, or of a sweep folder and each of its jobs: what the automatic path writes."""
    folder = Path(folder)
    if is_run_folder(folder):
        return write_run_report(folder, tensorboard)
    return write_sweep_report(folder, tensorboard, runs=True)
