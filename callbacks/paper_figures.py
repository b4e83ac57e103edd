"""Paper figures at the end of a run: Figures 1 and 2, the ε-scaling figure and the per-ε summary table."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.image import imread

from ufm_torch.analysis.paper_figures import (
    RunSetup,
    TheoryCurve,
    figure1,
    figure2,
    save_figure,
    scaling_figure,
    snc3_theory_curves,
)
from ufm_torch.analysis.summary import write_summary
from ufm_torch.run_folder.metrics_log import read_metrics
from ufm_torch.training.fused_descent import plain_gradient_descent_rate


class PaperFigures(L.Callback):
    """Draws Mixon et al.'s Figures 1 and 2 and writes the per-ε summary when fitting ends (rank 0).

    Reads ``<output_dir>/metrics.jsonl`` (written by :class:`ufm_torch.callbacks.collapse_monitor.CollapseMonitor`,
    which must run too) and writes, in ``output_dir``: ``figures/figure1.png`` (SNC1–SNC3 errors),
    ``figures/figure2.png`` (distance to S), ``figures/scaling.png`` (final errors against ε with fitted
    slopes) and ``summary.csv`` (:mod:`ufm_torch.analysis.summary`); prints the summary table and adds the PNGs as
    images to every TensorBoard logger (tags ``paper/figure1``, ``paper/figure2``, ``paper/scaling``; read
    back from disk, so each figure is rendered once). The SNC3 theory overlays
    (:func:`ufm_torch.analysis.paper_figures.snc3_theory_curves`) are drawn when ``snc3_theory`` is set and the run is
    plain full-batch gradient descent on the summed squared loss, the setting they describe.
    """

    def __init__(self, output_dir: str, dpi: int = 150, snc3_theory: bool = True, print_summary: bool = True) -> None:
        super().__init__()
        self.output_dir = Path(output_dir)
        self.dpi = dpi
        self.snc3_theory = snc3_theory
        self.print_summary = print_summary

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Figures, summary table and TensorBoard images from the run's metric history."""
        if not trainer.is_global_zero:
            return
        metrics_path = self.output_dir / "metrics.jsonl"
        if not metrics_path.exists():
            print(f"PaperFigures: no {metrics_path}; is the collapse monitor enabled?")
            return
        records = read_metrics(metrics_path)
        if not records:
            return
        setup = run_setup(trainer, pl_module)
        theory: list[TheoryCurve] = []
        if self.snc3_theory and setup is not None and is_plain_gradient_descent(trainer, pl_module):
            theory = snc3_theory_curves(setup, max(int(record["step"]) for record in records))
        figures = {
            "figure1": figure1(records, setup, theory),
            "figure2": figure2(records, setup),
            "scaling": scaling_figure(records, setup),
        }
        paths = {
            name: save_figure(figure, self.output_dir / "figures" / f"{name}.png", dpi=self.dpi)
            for name, figure in figures.items()
        }
        table = write_summary(records, self.output_dir / "summary.csv")
        if self.print_summary:
            print(f"Final errors per init scale ε ({self.output_dir / 'summary.csv'}):\n{table}")
        images = {name: imread(path)[..., :3] for name, path in paths.items()}
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for name, image in images.items():
                    logger.experiment.add_image(f"paper/{name}", image, trainer.global_step, dataformats="HWC")
                logger.experiment.flush()


def run_setup(trainer: L.Trainer, pl_module: L.LightningModule) -> RunSetup | None:
    """C, N, p and the step size of the run, or None when the network is not a UFM (no ``samples_per_class``)."""
    network = pl_module.network
    if not hasattr(network, "samples_per_class") or not trainer.optimizers:
        return None
    lr = float(trainer.optimizers[0].param_groups[0]["lr"])
    return RunSetup(network.num_classes, network.samples_per_class, network.feature_dim, lr)


def is_plain_gradient_descent(trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
    """Full-batch SGD without momentum or weight decay on the paper's summed loss ½‖WH + b1ᵀ − Y‖²_F."""
    return (
        len(trainer.optimizers) == 1
        and plain_gradient_descent_rate(trainer.optimizers[0]) is not None
        and getattr(trainer.datamodule, "is_full_batch", False)
        and getattr(pl_module, "loss_name", None) == "sum_squared"
    )
