"""The size check (``ufm_torch/cli/memory.py``): a UFM run that cannot fit is refused in one line before anything
is allocated, its estimate counts the tensors the run really holds, and ``allow_large_memory=true`` overrides it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.helpers import compose_train, ufm_train_in_process
from ufm_torch.cli import memory
from ufm_torch.cli.memory import SIZE_KEYS, estimate_ufm_memory
from ufm_torch.cli.validation import validate_config
from ufm_torch.errors import ConfigError

HUGE = ("data.num_classes=100000", "module.loss=mean_squared")


def test_the_estimate_counts_each_tensor_of_the_formula() -> None:
    # n = 12, C = 4, p = 5, R = 3, full batch, heavy ball (one state), float64
    estimate = estimate_ufm_memory(12, 4, 5, 3, itemsize=8, optimizer_states=1)
    assert estimate.parameters == 8 * 3 * (5 * 12 + 4 * 5 + 4) * 3
    assert estimate.training_step == 8 * 3 * 12 * 4 * 2
    assert estimate.metrics == 8 * 3 * (5 * 12 + 2 * 4 * 5 + 2 * 25 + 3 * 16)
    assert estimate_ufm_memory(12, 4, 5, 3, batch_size=6, cross_entropy=True).training_step == 8 * 3 * 6 * 4 * 3
    assert estimate.total == estimate.parameters + estimate.training_step + estimate.metrics


def test_the_parameter_estimate_is_what_the_model_allocates() -> None:
    cfg = compose_train("data.num_classes=6", "data.samples_per_class=[3,3,3,2,2,1]", "model.feature_dim=7",
                        "model.init_scale=[0.1,0.01]", "model.replicas=2")  # fmt: skip
    network = instantiate(cfg.model)
    allocated = sum(parameter.numel() * parameter.element_size() for parameter in network.parameters())
    estimate = estimate_ufm_memory(14, 6, 7, 4, itemsize=8, optimizer_states=0)
    assert estimate.parameters == 2 * allocated, "parameters and their gradients"


def test_a_run_that_cannot_fit_is_refused_naming_keys_estimate_and_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda cfg: 10**9)
    with pytest.raises(ConfigError) as refused:
        validate_config(compose_train(*HUGE))
    line = str(refused.value)
    assert "\n" not in line and "720 GB" in line and "1 GB is available" in line and "allow_large_memory=true" in line
    assert all(key in line for key in SIZE_KEYS)
    validate_config(compose_train(*HUGE, "allow_large_memory=true"))  # opted in: no estimate refuses it
    validate_config(compose_train("data.num_classes=30", "module.loss=mean_squared"))  # a run that fits


def test_ufm_train_refuses_it_with_exit_2_and_leaves_no_folder(tmp_path: Path) -> None:
    result = ufm_train_in_process(*HUGE, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ufm-train: error: this run needs about 720 GB") and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_spherical_ufm_counts_one_chunk_of_logits_not_all_of_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """At C = 10 000, N = 10, p = 512 the logits would take 8 GB; the spherical UFM's steps hold one chunk of
    ``CHUNK_ENTRIES`` (``objectives/sample_chunks.py``), so the run is not refused on 6 GB while the same size with
    unnormalised features is."""
    from ufm_torch.objectives.sample_chunks import CHUNK_ENTRIES

    estimate = estimate_ufm_memory(100_000, 10_000, 512, 1, cross_entropy=True, logit_chunk=CHUNK_ENTRIES)
    assert estimate.training_step == CHUNK_ENTRIES * 8
    size = ("data.num_classes=10000", "data.samples_per_class=10", "model.feature_dim=512", "module.loss=cross_entropy")
    monkeypatch.setattr(memory, "available_memory", lambda cfg: 6 * 10**9)
    validate_config(compose_train(*size, "model.normalize=true", "model.bias=false", "module.temperature=0.1"))
    with pytest.raises(ConfigError, match="training step 24"):
        validate_config(compose_train(*size))
