"""The size check before anything is allocated: an estimate of a run's peak memory against what the machine has.

A run whose estimate exceeds the memory available is refused with one line (exit 2) naming the keys that set its
size, the estimate and the memory available; ``allow_large_memory=true`` runs it anyway. The estimate counts the
tensors of the unconstrained features model, whose sizes the config fixes (Mixon et al., Section 2: H is p × n,
W is C × p, b is C, for each of R replicas, n = Σ_k n_k):

- parameters ``R(pn + Cp + C)``, their gradients as many again, and the optimiser's state (heavy ball: one copy;
  Adam: two);
- the training step: the logits ``Z = WH + b1ᵀ`` and the residual ∂D/∂Z of one batch, ``2RBC`` for a batch of B
  samples (B = n in full batch), plus the softmax ``RBC`` for cross-entropy; the spherical UFM (``model.normalize``)
  computes them over chunks of samples (:mod:`ufm_torch.objectives.sample_chunks`), ``min(RnC, K)`` for a chunk of
  at most K = ``CHUNK_ENTRIES`` logits, the residual written over them;
- the metrics of one evaluation: a centred copy of the features ``Rpn``, class means and classifier ``2RCp``,
  within- and between-class covariances ``2Rp²`` and the Gram matrices ``3RC²``.

The deep UFM (``model=deep_ufm``: depth L, width d; L = 1 is the UFM above) has the weights ``W_1 … W_L`` instead
of W, ``R(dp + (L − 2)d² + Cd)`` numbers for L ≥ 2 (with their gradients and optimiser state); its training step
adds the rows of H_2 … H_L kept for backpropagation, ``(L − 1)RBd``, and the two gradient rows of the widest layer,
``2RB·max(p, d)``; its metrics are those above for the classifier's input, d wide. Each counts ``itemsize`` bytes
(``model.dtype``). A backbone's activations depend on its architecture and batch, not
on these keys, and are not estimated: only its metrics' C × C and p × p matrices are. The memory available is
Linux's ``MemAvailable`` (``/proc/meminfo``), or a CUDA device's free memory when the run trains on one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ufm_torch.errors import ConfigError
from ufm_torch.hyperparameters import hyperparameter_grid
from ufm_torch.objectives.losses import Link, Loss

SIZE_KEYS = ("data.num_classes", "data.samples_per_class", "model.feature_dim", "model.init_scale", "model.replicas")
"""The keys that set the size of a UFM run, named by the refusal."""
DEEP_SIZE_KEYS = ("model.width", "model.depth")
"""The deep UFM's further size keys."""

ITEMSIZES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a run's parameters (with gradients and optimiser state), of one training step and of one
    evaluation of the metrics."""

    parameters: int
    training_step: int
    metrics: int

    @property
    def total(self) -> int:
        """The peak estimate: everything above held at once."""
        return self.parameters + self.training_step + self.metrics


def estimate_ufm_memory(
    num_samples: int,
    num_classes: int,
    feature_dim: int,
    replicas: int,
    batch_size: int | None = None,
    itemsize: int = 8,
    optimizer_states: int = 0,
    cross_entropy: bool = False,
    depth: int = 1,
    width: int | None = None,
    logit_chunk: int | None = None,
) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of a UFM run (module docstring): n samples, C classes, p features, R replicas,
    batch B (None: full batch), ``optimizer_states`` copies of the parameters kept by the optimiser; a deep UFM of
    ``depth`` L and ``width`` d (None: p); ``logit_chunk`` K: the most logits a step holds when it works over chunks
    of samples (None: all of them)."""
    n, c, p, r = num_samples, num_classes, feature_dim, replicas
    d = p if width is None else width
    batch = min(batch_size or n, n)
    dims = [p] + [d] * (depth - 1) + [c]
    weights = sum(dims[layer] * dims[layer + 1] for layer in range(depth))
    parameters = r * (p * n + weights + c) * (2 + optimizer_states)
    if logit_chunk is None:
        training_step = r * batch * c * (3 if cross_entropy else 2)
    else:
        training_step = min(r * batch * c, logit_chunk)
    if depth > 1:
        training_step += r * batch * ((depth - 1) * d + 2 * max(p, d))
    q = dims[-2]
    metrics = r * (q * n + 2 * c * q + 2 * q * q + 3 * c * c)
    return MemoryEstimate(parameters * itemsize, training_step * itemsize, metrics * itemsize)


def available_memory(cfg: DictConfig) -> int | None:
    """Bytes the run can use: a CUDA device's free memory when it trains on one (``trainer.accelerator`` gpu or
    cuda, or auto with a device visible), else ``MemAvailable`` from ``/proc/meminfo``; None when unknown."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto"))
    if accelerator in ("gpu", "cuda", "auto"):
        import torch

        if torch.cuda.is_available():
            try:
                return int(torch.cuda.mem_get_info()[0])
            except (RuntimeError, AssertionError):  # a device torch lists but cannot query: the host's memory
                pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def check_memory(cfg: DictConfig, num_samples: int | None, free_features: bool, loss: Loss) -> None:
    """Refuse (:class:`ConfigError`) a UFM run whose :func:`estimate_ufm_memory` exceeds :func:`available_memory`,
    unless ``allow_large_memory``. ``num_samples`` is n (None: no class sizes, nothing to estimate); the softmax of a
    cross-entropy ``loss`` (its :class:`~ufm_torch.objectives.losses.Link`) is one more n × C tensor."""
    if cfg.get("allow_large_memory") or num_samples is None or not free_features:
        return
    replicas = _replica_count(cfg)
    momentum = float(OmegaConf.select(cfg, "optimizer.momentum", default=0.0) or 0.0)
    target = str(OmegaConf.select(cfg, "optimizer._target_", default=""))
    states = 2 if target.endswith("Adam") or target.endswith("AdamW") else int(momentum > 0)
    depth = int(OmegaConf.select(cfg, "model.depth", default=1))
    estimate = estimate_ufm_memory(
        num_samples,
        int(cfg.data.num_classes),
        int(cfg.model.feature_dim),
        replicas,
        OmegaConf.select(cfg, "data.batch_size"),
        ITEMSIZES.get(str(OmegaConf.select(cfg, "model.dtype", default="float64")), 8),
        states,
        cross_entropy=loss.link is Link.SOFTMAX,
        depth=depth,
        width=OmegaConf.select(cfg, "model.width", default=None),
        logit_chunk=_logit_chunk(cfg),
    )
    available = available_memory(cfg)
    if available is None or estimate.total <= available:
        return
    raise ConfigError(
        f"this run needs about {_size(estimate.total)} (parameters {_size(estimate.parameters)}, training step "
        f"{_size(estimate.training_step)}, metrics {_size(estimate.metrics)}; n={num_samples}, "
        f"C={cfg.data.num_classes}, p={cfg.model.feature_dim}, {replicas} replica(s)) but {_size(available)} is "
        f"available; lower {', '.join(SIZE_KEYS + (DEEP_SIZE_KEYS if depth > 1 else ()))} or set data.batch_size, "
        "or set allow_large_memory=true to try"
    )


def _logit_chunk(cfg: DictConfig) -> int | None:
    """K of the spherical UFM's chunked steps (``model.normalize``), None for every other network."""
    if not OmegaConf.select(cfg, "model.normalize", default=False):
        return None
    from ufm_torch.objectives.sample_chunks import CHUNK_ENTRIES

    return CHUNK_ENTRIES


def _replica_count(cfg: DictConfig) -> int:
    """R: the settings of the per-replica hyperparameters (:mod:`ufm_torch.hyperparameters`) times the number of
    init scales times ``model.replicas``."""
    scales = OmegaConf.select(cfg, "model.init_scale", default=None)
    count = len(scales) if OmegaConf.is_list(scales) else 1
    return len(hyperparameter_grid(cfg)) * count * int(OmegaConf.select(cfg, "model.replicas", default=1) or 1)


def _size(count: int) -> str:
    """Bytes in the largest unit (kB … TB, powers of 1000) with three significant digits."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} TB"
