"""Log-cosh Dice loss (Jadon) against hand-derived values and the Dice loss it wraps."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import make_labels, make_logits, one_hot

from scripts.losses import build_loss
from scripts.losses.region.log_cosh_dice import log_cosh

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}


def test_log_cosh_dice_binary_hand_value():
    # Linear Dice loss 1 - 3.0 / 3.8 = 0.210526, and log(cosh(0.210526)) = 0.0219989.
    value = build_loss("log_cosh_dice", **UNSMOOTHED)(torch.logit(PROBS)[None, None], TARGET)

    assert value.item() == pytest.approx(0.0219989, abs=1e-7)
    assert value.item() == pytest.approx(math.log(math.cosh(1 - 3.0 / 3.8)), abs=1e-12)


def test_log_cosh_dice_3d_hand_value():
    # A 1 x 2 x 2 volume with foreground probabilities 0.8, 0.4, 0.3, 0 against t = 1, 1, 0, 0:
    # Dice loss 1 - 2 * 1.2 / (1.5 + 2) = 0.314286, log-cosh 0.0485955.
    probs = torch.tensor([0.8, 0.4, 0.3, 1e-12], dtype=torch.float64).reshape(1, 2, 2)
    labels = torch.tensor([1, 1, 0, 0]).reshape(1, 1, 1, 2, 2)

    value = build_loss("log_cosh_dice", **UNSMOOTHED)(torch.logit(probs)[None, None], labels)

    assert value.item() == pytest.approx(0.0485955, abs=1e-7)


@pytest.mark.parametrize("options", [{}, {"squared_pred": True}, {"batch": True}, {"include_background": False}])
def test_log_cosh_dice_wraps_dice_loss(options):
    logits = make_logits((2, 3, 6, 5, 4))
    labels = make_labels((2, 3, 6, 5, 4), 3)
    dice_options = {"squared_pred": False, **options}

    value = build_loss("log_cosh_dice", reduction="none", **options)(logits, labels)
    dice = build_loss("dice", reduction="none", **dice_options)(logits, labels)

    # Per sample: log-cosh of each sample's Dice loss, then the reduction over samples.
    torch.testing.assert_close(value, torch.log(torch.cosh(dice)))


def test_log_cosh_dice_gradient_scaled_by_tanh():
    logits = make_logits((1, 3, 5, 4, 3), dtype=torch.float64)
    labels = make_labels((1, 3, 5, 4, 3), 3)
    dice_logits = logits.clone().requires_grad_()
    log_cosh_logits = logits.clone().requires_grad_()

    dice = build_loss("dice", squared_pred=False)(dice_logits, labels)
    dice.backward()
    # One sample, so the mean over samples is that sample's loss.
    build_loss("log_cosh_dice")(log_cosh_logits, labels).backward()

    torch.testing.assert_close(log_cosh_logits.grad, torch.tanh(dice.detach()) * dice_logits.grad)


def test_log_cosh_dice_value_range():
    labels = make_labels((2, 3, 6, 5), 3)
    # Logits that give the target class a probability of about e^-40 everywhere: Dice loss 1 for every class.
    wrong_logits = -40.0 * one_hot(labels, 3, dtype=torch.float64)

    worst = build_loss("log_cosh_dice", **UNSMOOTHED)(wrong_logits, labels)
    random = build_loss("log_cosh_dice")(make_logits((2, 3, 6, 5)), labels)

    assert 0.0 < random.item() < math.log(math.cosh(1.0))
    assert worst.item() == pytest.approx(math.log(math.cosh(1.0)), abs=1e-6)


@pytest.mark.parametrize("x", [0.0, 0.5, -3.0, 30.0, -30.0, 1e4, -1e4])
def test_log_cosh_is_stable_for_large_arguments(x):
    value = log_cosh(torch.tensor(x, dtype=torch.float32))
    reference = abs(x) + math.log1p(math.exp(-2 * abs(x))) - math.log(2.0)

    assert torch.isfinite(value)
    assert value.item() == pytest.approx(reference, rel=1e-6, abs=1e-6)


def test_log_cosh_dice_invalid_smoothing_raises():
    with pytest.raises(ValueError, match="smooth_nr must be a finite number >= 0"):
        build_loss("log_cosh_dice", smooth_nr=-1.0)
