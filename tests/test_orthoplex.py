"""The orthoplex regime p + 2 ≤ C ≤ 2p (ufm_torch/theory/orthoplex.py): the predicted code's exact properties, the
Radon bound ρ ≤ 1, the block decomposition, the predicted loss against multi-start minimisation, the rival tilted
pairs below their crossover temperature, and a trained spherical UFM ending in the prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import logsumexp

from ufm_torch.metrics.hyperspherical import softmax_code_margin
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.objectives.ufm import Objective
from ufm_torch.theory.orthoplex import (
    best_tilted_pairs,
    block_code_loss,
    code_blocks,
    compare_with_regime,
    cross_entropy_loss,
    orthoplex_regime_code,
    predicted_loss,
    regime_block_sizes,
    tilted_pairs_code,
    tilted_pairs_gram_entries,
    tilted_pairs_loss,
)
from ufm_torch.training.fused_descent import spherical_descent


def random_rotation(dim: int, seed: int) -> torch.Tensor:
    """A random orthogonal matrix (QR of a Gaussian)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64)).Q


def test_the_orthoplex_has_margin_one_and_p_antipodal_pairs() -> None:
    orthoplex = torch.cat([torch.eye(4, dtype=torch.float64), -torch.eye(4, dtype=torch.float64)])
    assert float(softmax_code_margin(orthoplex)) == pytest.approx(1.0, abs=1e-9)
    blocks = code_blocks(orthoplex)
    assert blocks.sizes == (2, 2, 2, 2)
    assert blocks.simplex_error == 0.0 and blocks.cross_cosine == 0.0
    code = orthoplex_regime_code(4, 8)
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(code @ code.T, torch.eye(8, dtype=torch.float64) - torch.block_diag(*[swap] * 4))


@pytest.mark.parametrize(("feature_dim", "num_classes", "sizes"), [(4, 6, (2, 4)), (4, 7, (2, 2, 3)),
                                                                     (5, 8, (2, 2, 4)), (5, 7, (2, 5))])  # fmt: skip
def test_the_predicted_code_is_a_rank_p_code_with_margin_one(feature_dim: int, num_classes: int, sizes: tuple) -> None:
    code = orthoplex_regime_code(feature_dim, num_classes)
    assert code.shape == (num_classes, feature_dim)
    assert regime_block_sizes(feature_dim, num_classes) == sizes
    torch.testing.assert_close(code.norm(dim=-1), torch.ones(num_classes, dtype=torch.float64))
    gram = code @ code.T
    assert float((gram - torch.eye(num_classes, dtype=torch.float64)).max()) <= 1e-12
    assert float(softmax_code_margin(code)) == pytest.approx(1.0, abs=1e-8)
    assert int(torch.linalg.matrix_rank(code)) == feature_dim
    blocks = code_blocks(code)
    assert blocks.sizes == sizes
    assert blocks.simplex_error < 1e-12 and blocks.cross_cosine < 1e-12


def test_outside_the_regime_is_refused() -> None:
    for feature_dim, num_classes in ((4, 5), (4, 9), (1, 3)):
        with pytest.raises(ValueError, match="orthoplex regime"):
            regime_block_sizes(feature_dim, num_classes)


@pytest.mark.parametrize(("feature_dim", "num_classes"), [(2, 4), (3, 5), (3, 8), (4, 6), (5, 10)])
def test_radon_bounds_the_margin_of_random_codes_by_one(feature_dim: int, num_classes: int) -> None:
    generator = torch.Generator().manual_seed(feature_dim * 100 + num_classes)
    codes = torch.randn(200, num_classes, feature_dim, generator=generator, dtype=torch.float64)
    margins = softmax_code_margin(codes)
    assert float(margins.max()) <= 1.0 + 1e-9


def test_code_blocks_recovers_the_blocks_of_a_rotated_permuted_code() -> None:
    code = orthoplex_regime_code(5, 8)
    order = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    moved = (code @ random_rotation(5, 7))[order]
    blocks = code_blocks(moved)
    assert blocks.sizes == (2, 2, 4)
    assert blocks.simplex_error < 1e-12 and blocks.cross_cosine < 1e-12
    original = {frozenset(int(order[row]) for row in block) for block in blocks.members}
    assert original == {frozenset({0, 1}), frozenset({2, 3}), frozenset({4, 5, 6, 7})}


def test_the_predicted_loss_is_the_loss_of_the_predicted_code() -> None:
    for feature_dim, num_classes, temperature in ((4, 6, 0.2), (5, 9, 0.3), (4, 8, 0.5)):
        code = orthoplex_regime_code(feature_dim, num_classes)
        labels = torch.arange(num_classes).repeat_interleave(3)
        loss = cross_entropy_loss(code, code[labels], labels, temperature)
        assert float(loss) == pytest.approx(predicted_loss(feature_dim, num_classes, temperature), rel=1e-13)
    assert block_code_loss((2, 4), 0.2) < block_code_loss((3, 3), 0.2)  # the prediction beats the other split
    assert block_code_loss((3, 3), 1.0) < block_code_loss((2, 4), 1.0)  # but not at large τ


def test_the_tilted_pairs_code_has_the_inner_products_and_loss_of_its_closed_form() -> None:
    for feature_dim, num_classes, sine, lift in ((4, 7, 0.12, 0.7), (5, 8, 0.16, 0.65), (4, 6, 0.2, 0.4)):
        code = tilted_pairs_code(feature_dim, num_classes, sine, lift)
        torch.testing.assert_close(code.norm(dim=-1), torch.ones(num_classes, dtype=torch.float64))
        gram, entries = code @ code.T, tilted_pairs_gram_entries(feature_dim, num_classes, sine, lift)
        assert float(gram[0, 1]) == pytest.approx(entries["partner"], abs=1e-14)
        assert float(gram[0, 2]) == pytest.approx(entries["pairs"], abs=1e-14)
        assert float(gram[0, -1]) == pytest.approx(entries["lone"], abs=1e-14)
        labels = torch.arange(num_classes)
        closed_form = tilted_pairs_loss(feature_dim, num_classes, 0.2, sine, lift)
        assert float(cross_entropy_loss(code, code, labels, 0.2)) == pytest.approx(closed_form, rel=1e-13)
    assert float(softmax_code_margin(tilted_pairs_code(4, 7, 0.12, 1.0))) < 1.0 - 1e-3


def unconstrained_loss(point: np.ndarray, num_classes: int, feature_dim: int, temperature: float):
    """The spherical UFM's loss (N = 1) and its gradient in the parametrisation ``w = v/‖v‖``, ``h = u/‖u‖``."""
    raw = point.reshape(2, num_classes, feature_dim)
    norms = np.linalg.norm(raw, axis=-1, keepdims=True)
    weight, features = raw / norms
    logits = features @ weight.T / temperature
    totals = logsumexp(logits, axis=1)
    residual = (np.exp(logits - totals[:, None]) - np.eye(num_classes)) / (num_classes * temperature)
    gradient = np.stack([residual.T @ features, residual @ weight])
    unit = raw / norms
    gradient = (gradient - (gradient * unit).sum(-1, keepdims=True) * unit) / norms
    return float(np.mean(totals - np.diag(logits))), gradient.ravel()


def multi_start_losses(feature_dim: int, num_classes: int, temperature: float, starts: int) -> np.ndarray:
    """The final losses of L-BFGS from ``starts`` Gaussian starts (seed 0)."""
    generator = np.random.default_rng(0)
    options = {"maxiter": 5000, "gtol": 1e-14, "ftol": 1e-16, "maxcor": 30}
    return np.array([
        minimize(unconstrained_loss, generator.standard_normal(2 * num_classes * feature_dim), jac=True,
                 args=(num_classes, feature_dim, temperature), method="L-BFGS-B", options=options).fun
        for _ in range(starts)
    ])  # fmt: skip


def test_multi_start_minimisation_finds_nothing_below_the_prediction_at_4_6() -> None:
    losses = multi_start_losses(4, 6, 0.2, starts=6)
    optimum = predicted_loss(4, 6, 0.2)
    assert losses.min() >= optimum - 1e-9
    assert losses.min() == pytest.approx(optimum, abs=1e-8)


def test_the_tilted_pairs_beat_the_prediction_at_c_2p_minus_1_and_small_tau() -> None:
    # (4, 7) at τ = 0.2: below the crossover τ* ≈ 0.23, the tilted pairs are better and minimisation finds them
    tilted, sine, _ = best_tilted_pairs(4, 7, 0.2)
    assert tilted < predicted_loss(4, 7, 0.2) - 9e-5 and 0.1 < sine < 0.15
    assert multi_start_losses(4, 7, 0.2, starts=4).min() == pytest.approx(tilted, abs=1e-7)
    # (4, 6): the prediction wins at τ = 0.2, the tilted pairs at τ = 0.1 (τ* ≈ 0.10)
    assert best_tilted_pairs(4, 6, 0.2)[0] > predicted_loss(4, 6, 0.2) + 5e-4
    assert best_tilted_pairs(4, 6, 0.09)[0] < predicted_loss(4, 6, 0.09)
    assert best_tilted_pairs(4, 8, 0.2)[0] == pytest.approx(predicted_loss(4, 8, 0.2), rel=1e-12)  # the orthoplex


def test_a_trained_spherical_ufm_ends_in_the_predicted_blocks_at_4_6() -> None:
    temperature, replicas = 0.2, 4
    network = UnconstrainedFeatures(6, 1, 4, replicas=replicas, seed=0, bias=False, normalize=True)
    objective = Objective("cross_entropy", temperature=temperature)
    labels = torch.arange(6)
    with torch.no_grad():
        spherical_descent(network, labels, 8000, 1.0, objective)
    for replica in range(replicas):
        comparison = compare_with_regime(network.head.weight[replica], network.features[replica], labels, temperature)
        assert comparison.found_sizes == comparison.predicted_sizes == (2, 4)
        assert comparison.cross_cosine < 1e-9 and comparison.simplex_error < 1e-9
        assert comparison.margin == pytest.approx(1.0, abs=1e-8)
        assert abs(comparison.loss_gap) < 1e-8
        assert comparison.duality_gap < 1e-12


def test_the_orthoplex_figure_draws_every_case(tmp_path: Path) -> None:
    from ufm_torch.analysis.orthoplex_figure import orthoplex_figure
    from ufm_torch.run_folder.jobs import Job
    from ufm_torch.run_folder.layout import CHECKPOINTS_DIR, LAST_CHECKPOINT

    def job(feature_dim: int, num_classes: int, weight: torch.Tensor, temperature: object = 0.2) -> Job:
        path = tmp_path / f"{feature_dim}-{num_classes}"
        (path / CHECKPOINTS_DIR).mkdir(parents=True)
        state = {"network.head.weight": weight, "network.features": weight.clone()}
        torch.save({"state_dict": state}, path / CHECKPOINTS_DIR / LAST_CHECKPOINT)
        config = {"data": {"num_classes": num_classes}, "model": {"feature_dim": feature_dim},
                  "module": {"temperature": temperature}}  # fmt: skip
        taus = temperature if isinstance(temperature, list) else [temperature] * weight.shape[0]
        records = [{"step": 5, "replica": r, "module.temperature": tau} for r, tau in enumerate(taus)]
        return Job(path.name, path, {}, config, {"status": "finished"}, records)

    predicted = orthoplex_regime_code(4, 7)
    tilted = tilted_pairs_code(4, 7, *best_tilted_pairs(4, 7, 0.2)[1:])
    jobs = [job(4, 7, torch.stack([predicted, tilted])), job(4, 6, orthoplex_regime_code(4, 6)[None]),
            job(4, 9, torch.randn(1, 9, 4, dtype=torch.float64)),
            job(4, 8, orthoplex_regime_code(4, 8).expand(2, 8, 4).clone(), temperature=[0.2, 0.3])]  # fmt: skip
    match_axes, _, _, gap_axes = orthoplex_figure(jobs).axes
    ticks = [label.get_text() for label in match_axes.get_xticklabels()]
    assert ticks == ["τ=0.2", "τ=0.2", "τ=0.2", "τ=0.3"]  # (4, 9) is outside the regime: left out
    groups = [text.get_text() for text in match_axes.texts]
    assert groups == ["p=4, C=6\n2+4", "p=4, C=7\n2+2+3", "p=4, C=8\n2+2+2+2"]
    heights = [patch.get_height() for patch in match_axes.patches]  # predicted, then below, then above; per case
    assert heights == [1.0, 0.5, 1.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    legend = {text.get_text() for text in gap_axes.get_legend().get_texts()}
    assert {"in the predicted blocks", "other geometry, loss below the prediction's"} <= legend
