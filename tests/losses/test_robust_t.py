"""Robust T-loss (Gonzalez-Jimenez et al.) against hand-derived values, its limits and its trainable nu."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import blob_labels, make_labels, make_logits

from scripts.losses import build_loss
from scripts.losses.region.t_loss import NU_TILDE_RANGE

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
EPSILON = 1e-8


def t_nll(squared_sum: float, voxels: int, nu_tilde: float = 1.0, log_precision: float = 1.0) -> float:
    """The paper's formula for one channel, in Python floats (float64)."""
    nu = math.exp(nu_tilde) + EPSILON
    return (
        -math.lgamma((nu + voxels) / 2)
        + math.lgamma(nu / 2)
        - voxels * log_precision / 2
        + voxels / 2 * math.log(math.pi)
        + voxels / 2 * math.log(nu)
        + (nu + voxels) / 2 * math.log1p(math.exp(log_precision) * squared_sum / nu)
    )


def test_robust_t_reference_value():
    # delta = p - t = [-.1, -.4, .2, .1], sum delta^2 = .22, D = 4, nu = e + 1e-8, lambda = 1 so e^lambda / nu = 1:
    # -lnG(3.359141) + lnG(1.359141) - 2 + 2 ln(pi) + 2 ln(nu) + 3.359141 ln(1.22)
    # = -1.048913 - 0.116237 - 2 + 2.289460 + 2.000000 + 0.667968 = 1.792277 (the authors' code gives the same
    # to 2e-9).
    loss = build_loss("robust_t", normalize=False)

    raw = loss(torch.logit(PROBS)[None, None], TARGET)
    normalized = build_loss("robust_t")(torch.logit(PROBS)[None, None], TARGET)

    assert raw.item() == pytest.approx(1.792277, abs=1e-6)
    assert raw.item() == pytest.approx(t_nll(0.22, 4), abs=1e-12)
    assert normalized.item() == pytest.approx(1.792277 / 4, abs=1e-6)


def test_robust_t_3d_hand_value():
    # A 2 x 1 x 2 volume with one sigmoid channel: p = [.7, .3, .8, .4], t = [1, 0, 1, 1], so
    # sum delta^2 = .09 + .09 + .04 + .36 = .58 and the last term is 3.359141 ln(1.58) = 1.536555:
    # -1.048913 - 0.116237 - 2 + 2.289460 + 2.000000 + 1.536555 = 2.660864.
    probs = torch.tensor([0.7, 0.3, 0.8, 0.4], dtype=torch.float64).reshape(1, 1, 2, 1, 2)
    labels = torch.tensor([1, 0, 1, 1]).reshape(1, 1, 2, 1, 2)

    value = build_loss("robust_t", normalize=False)(torch.logit(probs), labels)

    assert value.item() == pytest.approx(2.660864, abs=1e-6)
    assert value.item() == pytest.approx(t_nll(0.58, 4), abs=1e-12)


def test_robust_t_multiclass_averages_the_channels():
    shape = (2, 3, 5, 4, 3)
    logits = make_logits(shape, dtype=torch.float64)
    labels = make_labels(shape, 3)
    residual = torch.softmax(logits, 1) - torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3)
    squared = (residual**2).sum(dim=(2, 3, 4))
    voxels = 5 * 4 * 3
    expected = [sum(t_nll(squared[b, c].item(), voxels) for c in range(3)) / 3 / voxels for b in range(2)]
    foreground = [sum(t_nll(squared[b, c].item(), voxels) for c in (1, 2)) / 2 / voxels for b in range(2)]

    value = build_loss("robust_t", reduction="none")(logits, labels)
    without_background = build_loss("robust_t", reduction="none", include_background=False)(logits, labels)

    torch.testing.assert_close(value, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(without_background, torch.tensor(foreground, dtype=torch.float64))


def test_robust_t_two_channel_softmax_equals_sigmoid():
    logits = make_logits((2, 1, 6, 5, 4), dtype=torch.float64)
    labels = blob_labels((2, 2, 6, 5, 4), 2)

    sigmoid = build_loss("robust_t")(logits, labels)
    softmax = build_loss("robust_t")(torch.cat([torch.zeros_like(logits), logits], dim=1), labels)

    torch.testing.assert_close(softmax, sigmoid)


def test_robust_t_large_3d_volume_keeps_precision():
    # D = 64^3 = 262,144: lnGamma((nu + D) / 2) is about 1.4e6, where float32 rounds in the first decimal.
    shape = (1, 1, 64, 64, 64)
    logits = make_logits(shape, scale=1.0)
    labels = blob_labels((1, 2, 64, 64, 64), 2)
    residual = torch.sigmoid(logits.double()) - labels.double()
    voxels = 64**3

    raw = build_loss("robust_t", normalize=False)(logits, labels)
    normalized = build_loss("robust_t")(logits, labels)

    expected = t_nll((residual**2).sum().item(), voxels)
    assert raw.item() == pytest.approx(expected, rel=1e-6)
    assert normalized.item() == pytest.approx(expected / voxels, abs=1e-6)


def test_robust_t_normalized_value_approaches_log_mse():
    # For D >> nu the per-voxel value tends to (1/2) ln(2 pi e MSE), the Gaussian likelihood at the fitted scale.
    shape = (1, 1, 48, 48, 48)
    logits = make_logits(shape, scale=1.0)
    labels = blob_labels((1, 2, 48, 48, 48), 2)
    mse = ((torch.sigmoid(logits.double()) - labels.double()) ** 2).mean().item()

    value = build_loss("robust_t")(logits, labels)

    assert value.item() == pytest.approx(0.5 * math.log(2 * math.pi * math.e * mse), abs=1e-3)


def test_robust_t_large_nu_is_the_gaussian_likelihood():
    # As nu grows the Student-t becomes the Gaussian: L -> (D/2) ln(2 pi) - (D/2) lambda + e^lambda S / 2, whose
    # gradient in the residuals is that of the squared error (the survey states the opposite).
    logits = torch.logit(PROBS)[None, None].clone().requires_grad_()
    loss = build_loss("robust_t", normalize=False, nu_tilde_init=NU_TILDE_RANGE[1])
    value = loss(logits, TARGET)
    value.backward()
    residual = PROBS - TARGET[0, 0]
    gaussian = 2 * math.log(2 * math.pi) - 2 + math.e * 0.22 / 2
    squared_error_gradient = math.e * residual * PROBS * (1 - PROBS)

    assert value.item() == pytest.approx(gaussian, abs=1e-6)
    torch.testing.assert_close(logits.grad[0, 0], squared_error_gradient, rtol=1e-6, atol=1e-9)


def test_robust_t_small_nu_gradient_scaling():
    # For small nu the gradient on every residual is (nu + D) e^lambda delta / (nu + e^lambda S): the whole vector
    # is scaled down as the squared sum S grows, unlike the squared error.
    logits = torch.logit(PROBS)[None, None].clone().requires_grad_()
    build_loss("robust_t", normalize=False, nu_tilde_init=-5.0)(logits, TARGET).backward()
    nu = math.exp(-5.0) + EPSILON
    residual = PROBS - TARGET[0, 0]
    expected = (nu + 4) * math.e * residual / (nu + math.e * 0.22) * PROBS * (1 - PROBS)

    torch.testing.assert_close(logits.grad[0, 0], expected, rtol=1e-9, atol=1e-12)


def test_robust_t_ignored_voxels_reduce_d():
    logits = torch.logit(PROBS)[None, None]
    labels = TARGET.clone()
    labels[0, 0, 1, 1] = 255
    # The three remaining residuals: -.1, -.4, .2, so S = .21 and D = 3.

    value = build_loss("robust_t", ignore_index=255, normalize=False)(logits, labels)

    assert value.item() == pytest.approx(t_nll(0.21, 3), abs=1e-12)


def test_robust_t_every_voxel_ignored_is_zero():
    logits = make_logits((2, 3, 4, 4, 4)).requires_grad_()
    value = build_loss("robust_t", ignore_index=255)(logits, torch.full((2, 1, 4, 4, 4), 255))
    value.backward()

    assert value.item() == 0.0
    assert logits.grad.abs().sum() == 0


def test_robust_t_batch_is_one_vector():
    logits = make_logits((2, 3, 5, 4, 3), dtype=torch.float64)
    labels = blob_labels((2, 3, 5, 4, 3), 3)
    joined_logits = torch.cat([logits[0], logits[1]], dim=1)[None]
    joined_labels = torch.cat([labels[0], labels[1]], dim=1)[None]

    pooled = build_loss("robust_t", batch=True, reduction="none")(logits, labels)
    joined = build_loss("robust_t")(joined_logits, joined_labels)

    assert pooled.shape == (1,)
    torch.testing.assert_close(pooled[0], joined)


def test_robust_t_nu_tilde_is_a_trainable_parameter():
    loss = build_loss("robust_t")

    assert [name for name, _ in loss.named_parameters()] == ["nu_tilde"]
    assert any(parameter is loss.nu_tilde for parameter in loss.parameters())
    assert loss.nu_tilde.requires_grad
    assert loss.nu_tilde.item() == 1.0
    assert "nu_tilde" in loss.state_dict()
    assert loss.nu == pytest.approx(math.e + EPSILON, rel=1e-12)


def test_robust_t_optimizer_step_changes_nu():
    torch.manual_seed(0)
    network = torch.nn.Conv3d(1, 3, kernel_size=3, padding=1)
    loss = build_loss("robust_t")
    optimizer = torch.optim.SGD([*network.parameters(), *loss.parameters()], lr=0.1)
    images = torch.randn(2, 1, 6, 6, 6)
    labels = blob_labels((2, 3, 6, 6, 6), 3)
    before = loss.nu

    loss(network(images), labels).backward()
    optimizer.step()

    assert loss.nu_tilde.grad is not None
    assert loss.nu_tilde.grad.item() != 0.0
    assert loss.nu_tilde.item() != 1.0
    assert loss.nu != before
    assert loss.nu == pytest.approx(math.exp(loss.nu_tilde.item()) + EPSILON, rel=1e-12)


def test_robust_t_nu_tilde_is_clamped():
    logits = torch.logit(PROBS)[None, None]
    at_bound = build_loss("robust_t", nu_tilde_init=NU_TILDE_RANGE[1])(logits, TARGET)
    loss = build_loss("robust_t")
    with torch.no_grad():
        loss.nu_tilde.fill_(30.0)

    beyond = loss(logits, TARGET)
    beyond.backward()

    assert beyond.item() == pytest.approx(at_bound.item(), abs=1e-12)
    assert loss.nu_tilde.grad.item() == 0.0
    assert loss.nu == pytest.approx(math.exp(NU_TILDE_RANGE[1]) + EPSILON)


def test_robust_t_log_precision_scales_the_residuals():
    logits = torch.logit(PROBS)[None, None]

    value = build_loss("robust_t", normalize=False, log_precision=0.0)(logits, TARGET)

    assert value.item() == pytest.approx(t_nll(0.22, 4, log_precision=0.0), abs=1e-12)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("nu_tilde_init", 25.0, r"nu_tilde_init must lie in \[-10.0, 20.0\].*got 25.0"),
        ("nu_tilde_init", float("nan"), r"nu_tilde_init must lie in \[-10.0, 20.0\].*got nan"),
        ("log_precision", float("inf"), "log_precision must be a finite number, got inf"),
        ("nu_tilde_init", "1.0", "nu_tilde_init of loss 'robust_t' must be a number .*got '1.0' of type str"),
        ("epsilon", -1e-8, "epsilon must be a non-negative finite number, got -1e-08"),
        ("normalize", "sometimes", "normalize must be true or false, got 'sometimes'"),
    ],
)
def test_robust_t_invalid_options_name_the_value(option, value, message):
    with pytest.raises(ValueError, match=message):
        build_loss("robust_t", **{option: value})
