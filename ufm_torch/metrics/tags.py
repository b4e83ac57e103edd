"""The names every metric is logged under (``metrics.jsonl``, TensorBoard, CSV, figures): one list, used everywhere.

A tag is ``<group>/<name>``: ``collapse/`` for NC1–NC4 (Papyan, Han & Donoho 2020), ``strong_collapse/`` for
SNC1–SNC3 and the distance to S (Mixon et al., Figures 1 and 2), ``train/`` and ``heldout/`` for loss and accuracy.
"""

from __future__ import annotations

from ufm_torch.metrics.deep_collapse import DEEP_COLLAPSE_METRIC_NAMES
from ufm_torch.metrics.neural_collapse import NC_METRIC_NAMES
from ufm_torch.metrics.strong_collapse import SNC_METRIC_NAMES

COLLAPSE = "collapse"
STRONG_COLLAPSE = "strong_collapse"

NC_TAGS = ("collapse/nc1", "collapse/nc2_etf", "collapse/nc3", "collapse/nc4")
"""The paper's four neural-collapse measures, in order (the other NC2 variants and ``nc1_quotient`` are logged too)."""
FIELD_TAGS = ("collapse/cdnv", "collapse/gnc2", "collapse/unc3", "collapse/ncc_agreement")
"""The field's newer measures: CDNV (Galanti, György & Hutter 2022), GNC2 (Liu et al. 2023), UNC3 (Wu & Papyan
2024) and the nearest-centre agreement 1 − NC4 (:mod:`ufm_torch.metrics.variability`)."""
DEEP_COLLAPSE_TAGS = tuple(f"{COLLAPSE}/{name}" for name in DEEP_COLLAPSE_METRIC_NAMES if name != "dnc1")
"""Deep neural collapse at every layer of a deep UFM (Súkeník, Mondelli & Lampert 2023: DNC1 of the pre-activations,
DNC2, DNC3) and the layer's ranks (Súkeník, Lampert & Mondelli 2024); DNC1 of the layer itself is ``collapse/nc1``
(:mod:`ufm_torch.metrics.deep_collapse`)."""
LOSS_VS_DNC_TAG = "optimum/loss_vs_dnc"
"""f − f_DNC: a deep ReLU UFM's loss against the best point of the DNC family where no global optimum is known
(K > 2; :func:`ufm_torch.theory.relu_dnc_reference`); negative when training found a lower, low-rank solution."""
HYPERSPHERICAL_TAGS = (
    "collapse/max_cosine", "collapse/softmax_margin", "collapse/hyperspherical_energy",
    "collapse/log_hyperspherical_energy", "collapse/gnc1", "collapse/gnc3",
)  # fmt: skip
"""The spherical UFM (``model.normalize=true``): its classifier's ``max_{j≠k} cos(w_j, w_k)``, softmax-code margin
ρ(W), Riesz (s = 1) and logarithmic hyperspherical energies (Jiang et al. 2024, ICML; Liu et al. 2023), GNC1 of the
features and GNC3 of classifier and class means (Jiang et al. 2024; :mod:`ufm_torch.metrics.hyperspherical`)."""
SNC_TAGS = ("strong_collapse/snc1", "strong_collapse/snc2", "strong_collapse/snc3", "strong_collapse/dist_S")
LOSS_TAG = "train/loss"
TRAIN_ACCURACY_TAG = "train/accuracy"
HELDOUT_ACCURACY_TAG = "heldout/accuracy"
ACCURACY_TAGS = (TRAIN_ACCURACY_TAG, HELDOUT_ACCURACY_TAG)
GRAM_IMAGE_TAG = "collapse/gram_vs_simplex_etf"
OPTIMUM = "optimum"
OPTIMUM_TAGS = ("optimum/loss_gap", "optimum/classifier_gram", "optimum/feature_gram", "optimum/bias")
"""Distances to the global optimum of the regularised UFM (:mod:`ufm_torch.theory.optimum`), logged when
λ_W > 0 and λ_H > 0 (and p ≥ C)."""


def scalar_tags() -> tuple[str, ...]:
    """Every scalar metric tag a run can log: each NC and SNC metric, the losses and accuracies."""
    names = (*NC_METRIC_NAMES, *SNC_METRIC_NAMES)
    return (
        *(metric_tag(name) for name in names), *FIELD_TAGS, *HYPERSPHERICAL_TAGS, *DEEP_COLLAPSE_TAGS, LOSS_TAG,
        *ACCURACY_TAGS, *OPTIMUM_TAGS, LOSS_VS_DNC_TAG,
    )  # fmt: skip


def metric_tag(name: str) -> str:
    """The tag of a metric returned by :func:`ufm_torch.metrics.collapse_metrics`: ``strong_collapse/…`` for SNC1–SNC3
    and dist_S, ``collapse/…`` for the NC metrics."""
    return f"{STRONG_COLLAPSE if name in SNC_METRIC_NAMES else COLLAPSE}/{name}"


def short_name(tag: str) -> str:
    """``strong_collapse/snc1`` → ``snc1``: the legend and column name of a tag."""
    return tag.rsplit("/", 1)[-1]


def is_collapse_tag(tag: str) -> bool:
    """Whether ``tag`` is a (strong) collapse metric, as opposed to a loss or accuracy."""
    return tag.startswith((f"{COLLAPSE}/", f"{STRONG_COLLAPSE}/"))


def is_optimum_tag(tag: str) -> bool:
    """Whether ``tag`` is a distance to the global optimum (``optimum/…``)."""
    return tag.startswith(f"{OPTIMUM}/")
