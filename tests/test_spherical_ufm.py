"""The spherical UFM (``model.normalize=true``, ``module.temperature``): Riemannian descent on the product of spheres
matches autograd with the same projection and retraction, reaches the simplex ETF for C ≤ p + 1, and its bad
configs are refused in one line."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch

from tests.helpers import compose_train
from ufm_torch.cli.validation import validate_config
from ufm_torch.errors import ConfigError
from ufm_torch.metrics.hyperspherical import gnc1, gnc3, max_pairwise_cosine, softmax_code_margin
from ufm_torch.models import UnconstrainedFeatures
from ufm_torch.objectives.ufm import Objective
from ufm_torch.training.fused_descent import spherical_descent

SPHERE = ("model.normalize=true", "model.bias=false", "module.loss=cross_entropy", "module.temperature=0.2")


def spherical_ufm(num_classes: int, feature_dim: int, replicas: int, seed: int = 0) -> UnconstrainedFeatures:
    """A spherical UFM with two samples per class."""
    return UnconstrainedFeatures(num_classes, 2, feature_dim, replicas=replicas, seed=seed, bias=False, normalize=True)


def test_the_initial_rows_lie_on_the_unit_sphere() -> None:
    network = spherical_ufm(5, 3, replicas=2)
    for rows in (network.features, network.head.weight):
        torch.testing.assert_close(rows.norm(dim=-1), torch.ones(rows.shape[:-1], dtype=torch.float64))


def test_fused_riemannian_descent_matches_autograd_with_projection_and_retraction() -> None:
    network = spherical_ufm(5, 3, replicas=3, seed=4)
    objective = Objective("cross_entropy", feature_decay=0.1, temperature=0.3)
    labels = torch.arange(5).repeat_interleave(2)
    step_sizes = (0.5, 1.0, 2.0)
    features = network.features.detach().clone().requires_grad_(True)
    weight = network.head.weight.detach().clone().requires_grad_(True)
    rate = torch.tensor(step_sizes, dtype=torch.float64).view(-1, 1, 1)
    for _ in range(300):
        objective.value(features, weight, None, labels).sum().backward()
        with torch.no_grad():
            for point in (features, weight):
                gradient = point.grad - (point.grad * point).sum(-1, keepdim=True) * point
                moved = point - rate * gradient
                point.copy_(moved / moved.norm(dim=-1, keepdim=True))
                point.grad = None
    with torch.no_grad():
        spherical_descent(network, labels, 300, step_sizes, objective)
    torch.testing.assert_close(network.features, features.detach(), rtol=0, atol=1e-10)
    torch.testing.assert_close(network.head.weight, weight.detach(), rtol=0, atol=1e-10)


def test_trained_spherical_ufm_reaches_the_simplex_etf_when_c_is_at_most_p_plus_1() -> None:
    num_classes = 4
    network = spherical_ufm(num_classes, 5, replicas=3)
    objective = Objective("cross_entropy", temperature=0.2)
    labels = torch.arange(num_classes).repeat_interleave(2)
    with torch.no_grad():
        spherical_descent(network, labels, 20000, 2.0, objective)
    weight, features = network.head.weight.detach(), network.features.detach()
    torch.testing.assert_close(max_pairwise_cosine(weight), torch.full((3,), -1 / 3, dtype=torch.float64),
                               rtol=0, atol=1e-6)  # fmt: skip
    cosines = weight @ weight.transpose(-1, -2)
    off_diagonal = cosines[:, ~torch.eye(num_classes, dtype=torch.bool)]
    torch.testing.assert_close(off_diagonal, torch.full_like(off_diagonal, -1 / 3), rtol=0, atol=1e-6)
    torch.testing.assert_close(softmax_code_margin(weight), torch.full((3,), 4 / 3, dtype=torch.float64),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert float(gnc1(features, labels, num_classes).max()) < 1e-6
    means = features.view(3, num_classes, 2, 5).mean(dim=-2)
    assert float(gnc3(means, weight).max()) < 1e-6


def test_a_spherical_run_trains_through_the_cli_path(tmp_path: Path) -> None:
    from tests.helpers import fit_in_process

    final = fit_in_process(tmp_path, *SPHERE, "data.num_classes=4", "model.feature_dim=5", "model.replicas=2",
                           "optimizer.lr=2.0", "trainer.max_steps=2000")  # fmt: skip
    assert final["step"] == 2000
    for replica in final["replicas"]:
        assert replica["collapse/max_cosine"] == pytest.approx(-1 / 3, abs=1e-3)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model.normalize=true", "model.bias=true"), "model.bias=false"),
        (("model.normalize=true", "model.bias=false", "module.bias_decay=0.1"), "module.bias_decay=0.1"),
        (("model.normalize=true", "model.bias=false", "module.feature_decay=0.1"), "module.feature_decay=0.1"),
        (("model.normalize=true", "model.bias=false", "optimizer=adam"), "plain or with momentum"),
        (("model.normalize=true", "model.bias=false", "optimizer.weight_decay=0.1"), "weight_decay=0.1"),
        (("model.normalize=true", "model.bias=false", "data.batch_size=3"), "data.batch_size=null"),
        ((*SPHERE[:3], "module.temperature=0"), "module.temperature"),
        ((*SPHERE[:3], "module.temperature=-1"), "module.temperature"),
        ((*SPHERE[:2], "module.temperature=0.5"), "module.loss=cross_entropy"),
        (("module.loss=cross_entropy", "module.temperature=0.5"), "model.normalize=true"),
    ],
)
def test_bad_spherical_configs_are_refused_in_one_line(overrides: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as error:
        validate_config(compose_train(*overrides))
    assert "\n" not in str(error.value)


def test_the_many_classes_figure_draws_every_temperature_with_its_references() -> None:
    from ufm_torch.analysis.many_classes_figure import many_classes_figure
    from ufm_torch.run_folder.jobs import Job

    def job(num_classes: int, temperature: float, cosine: float, margin: float) -> Job:
        config = {"data": {"num_classes": num_classes}, "model": {"feature_dim": 3},
                  "module": {"temperature": temperature}}  # fmt: skip
        records = [{"step": 10, "replica": r, "collapse/max_cosine": cosine, "collapse/softmax_margin": margin}
                   for r in range(2)]  # fmt: skip
        return Job(f"{num_classes}-{temperature}", Path("."), {}, config, {"status": "finished"}, records)

    jobs = [job(4, 0.2, -1 / 3, 4 / 3), job(6, 0.2, 0.0, 1.0), job(6, 0.1, 0.0, 1.0)]
    angle_axes, margin_axes = many_classes_figure(jobs).axes
    labels = {text.get_text() for text in angle_axes.get_legend().get_texts()}
    assert {"trained, τ = 0.2", "trained, τ = 0.1", "simplex ETF, cos = −1/(C−1)", "Tammes optimum (p = 3)"} <= labels
    assert "softmax_code's best code" in {text.get_text() for text in margin_axes.get_legend().get_texts()}


def test_a_run_in_chunks_of_samples_records_what_a_run_with_whole_logits_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With chunks of at most 16 logits (``CHUNK_ENTRIES`` lowered) the training steps, ``train/loss``,
    ``train/accuracy`` and every collapse metric equal those of the run that holds its logits whole."""
    from tests.helpers import fit_in_process
    from ufm_torch.objectives import sample_chunks

    overrides = (*SPHERE, "data.num_classes=6", "model.feature_dim=3", "model.replicas=2",
                 "module.temperature=[0.2,0.5]", "optimizer.lr=1.0", "trainer.max_steps=300")  # fmt: skip
    whole = fit_in_process(tmp_path / "whole", *overrides)
    monkeypatch.setattr(sample_chunks, "CHUNK_ENTRIES", 16)
    chunked = fit_in_process(tmp_path / "chunked", *overrides)
    assert chunked["step"] == whole["step"] == 300
    assert len(whole["replicas"]) == 4
    for expected, measured in zip(whole["replicas"], chunked["replicas"], strict=True):
        assert measured.keys() == expected.keys()
        for key in ("train/loss", "train/accuracy", "collapse/max_cosine", "collapse/gnc1", "collapse/nc1"):
            assert measured[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize("nesterov", [False, True])
def test_riemannian_heavy_ball_matches_autograd_with_transported_momentum(nesterov: bool, tmp_path: Path) -> None:
    """``optimizer=momentum`` on the spherical UFM: 200 steps through the optimiser equal a hand-written Riemannian
    heavy ball (buffer projected onto the new tangent space, ``b ← μb + g``, ``x ← (x − ηb)/‖x − ηb‖``) on autograd's
    gradients."""
    from tests.test_fused_descent import fused_trajectory

    network = spherical_ufm(5, 3, replicas=2, seed=6)
    objective = Objective("cross_entropy", temperature=0.5)
    labels = torch.arange(5).repeat_interleave(2)
    momentum, rate = 0.8, 0.3
    points = [network.features.detach().clone(), network.head.weight.detach().clone()]
    buffers: list[torch.Tensor | None] = [None, None]
    for _ in range(200):
        leaves = [point.clone().requires_grad_(True) for point in points]
        objective.value(leaves[0], leaves[1], None, labels).sum().backward()
        for index, (point, leaf) in enumerate(zip(points, leaves, strict=True)):
            gradient = leaf.grad - (leaf.grad * point).sum(-1, keepdim=True) * point
            buffer = buffers[index]
            if buffer is None:
                buffer = gradient.clone()
            else:
                buffer = buffer - (buffer * point).sum(-1, keepdim=True) * point
                buffer = momentum * buffer + gradient
            buffers[index] = buffer
            direction = gradient + momentum * buffer if nesterov else buffer
            moved = point - rate * direction
            points[index] = moved / moved.norm(dim=-1, keepdim=True)
    fused_trajectory(
        network, partial(torch.optim.SGD, lr=rate, momentum=momentum, nesterov=nesterov), steps=200,
        tmp_path=tmp_path, loss="cross_entropy", temperature=0.5,
    )
    torch.testing.assert_close(network.features.detach(), points[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(network.head.weight.detach(), points[1], rtol=0, atol=1e-10)
