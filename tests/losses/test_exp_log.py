"""Exponential logarithmic loss (Wong et al.) against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import make_labels, make_logits, perfect_logits

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
# Softmax view of the 2 x 2 example: channel 0 is the background.
TWO_CLASS_LOGITS = torch.log(torch.stack([1 - PROBS, PROBS]))[None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}
# Target-class probabilities of the four voxels: 0.9, 0.6 (foreground), 0.8, 0.9 (background).
FOREGROUND_P = [0.9, 0.6]
BACKGROUND_P = [0.8, 0.9]
# Dice of the background (I 1.7, sum p 2.2, sum t 2) and of the foreground (I 1.5, sum p 1.8, sum t 2).
DICE = [3.4 / 4.2, 3.0 / 3.8]


def dice_term(gamma: float = 0.3) -> float:
    return sum((-math.log(dice)) ** gamma for dice in DICE) / 2


def cross_term(weights: tuple[float, float], gamma: float = 0.3) -> float:
    background = sum(weights[0] * (-math.log(p)) ** gamma for p in BACKGROUND_P)
    foreground = sum(weights[1] * (-math.log(p)) ** gamma for p in FOREGROUND_P)
    return (background + foreground) / 4


def test_exp_log_two_class_hand_value():
    # Per-image frequencies f = (2, 2): w_l = (4 / 2)^0.5 for both classes.
    value = build_loss("exp_log", **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)
    dice_only = build_loss("exp_log", w_dice=1.0, w_cross=0.0, **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)
    cross_only = build_loss("exp_log", w_dice=0.0, w_cross=1.0, **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)

    assert value.item() == pytest.approx(0.685317, abs=1e-6)
    assert dice_only.item() == pytest.approx(0.638033, abs=1e-6)
    assert cross_only.item() == pytest.approx(0.874454, abs=1e-6)
    assert dice_only.item() == pytest.approx(dice_term(), abs=1e-12)
    assert cross_only.item() == pytest.approx(cross_term((math.sqrt(2), math.sqrt(2))), abs=1e-12)


def test_exp_log_fixed_label_frequencies():
    # f = (3, 1): w_background = (4 / 3)^0.5, w_foreground = (4 / 1)^0.5 = 2.
    loss = build_loss("exp_log", w_dice=0.0, w_cross=1.0, label_frequencies=[3.0, 1.0], **UNSMOOTHED)

    value = loss(TWO_CLASS_LOGITS, TARGET)

    assert value.item() == pytest.approx(cross_term((math.sqrt(4 / 3), 2.0)), abs=1e-12)


def test_exp_log_unit_gammas():
    # gamma = 1 leaves the mean -ln Dice and the frequency-weighted cross-entropy.
    value = build_loss("exp_log", gamma_dice=1.0, gamma_cross=1.0, **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)

    expected = 0.8 * dice_term(1.0) + 0.2 * cross_term((math.sqrt(2), math.sqrt(2)), 1.0)
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_exp_log_class_weights_multiply_frequency_weights():
    value = build_loss("exp_log", w_dice=0.0, w_cross=1.0, class_weights=[0.5, 2.0], **UNSMOOTHED)(
        TWO_CLASS_LOGITS, TARGET
    )

    assert value.item() == pytest.approx(cross_term((0.5 * math.sqrt(2), 2 * math.sqrt(2))), abs=1e-12)


def test_exp_log_3d_hand_value():
    # A 1 x 2 x 2 volume, foreground probabilities 0.8, 0.4, 0.3, 0.1 against t = 1, 1, 0, 0; f = (2, 2).
    foreground = torch.tensor([0.8, 0.4, 0.3, 0.1], dtype=torch.float64).reshape(1, 1, 2, 2)
    logits = torch.log(torch.stack([1 - foreground, foreground], dim=1))
    labels = torch.tensor([1, 1, 0, 0]).reshape(1, 1, 1, 2, 2)
    dice = [2 * 1.6 / (2.4 + 2), 2 * 1.2 / (1.6 + 2)]
    target_p = [0.8, 0.4, 0.7, 0.9]
    dice_part = sum((-math.log(d)) ** 0.3 for d in dice) / 2
    cross_part = math.sqrt(2) * sum((-math.log(p)) ** 0.3 for p in target_p) / 4

    value = build_loss("exp_log", **UNSMOOTHED)(logits, labels)

    assert value.item() == pytest.approx(0.8 * dice_part + 0.2 * cross_part, abs=1e-12)


def test_exp_log_batch_frequencies_pool_the_batch():
    # Sample 1 is all background except one voxel; pooled, the frequencies differ from each sample's.
    logits = make_logits((2, 2, 4, 4), dtype=torch.float64)
    labels = torch.zeros((2, 1, 4, 4), dtype=torch.long)
    labels[0, 0, 0, 0] = 1
    labels[1, 0, :2] = 1
    pooled_frequencies = [32.0 - 9.0, 9.0]

    pooled = build_loss("exp_log", batch=True, w_dice=0.0, w_cross=1.0)(logits, labels)
    fixed = build_loss("exp_log", batch=True, w_dice=0.0, w_cross=1.0, label_frequencies=pooled_frequencies)(
        logits, labels
    )

    torch.testing.assert_close(pooled, fixed)


def test_exp_log_perfect_prediction_has_finite_gradient():
    # -ln Dice and -ln p reach 0, where the slope of x^0.3 is unbounded.
    labels = make_labels((1, 3, 5, 4, 3), 3)
    logits = perfect_logits(labels, 3, margin=40.0).requires_grad_()

    value = build_loss("exp_log")(logits, labels)
    value.backward()

    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


def test_exp_log_label_frequencies_must_match_classes():
    loss = build_loss("exp_log", label_frequencies=[0.9, 0.1])

    with pytest.raises(ValueError, match="label_frequencies has 2 entries but the logits have 3 classes"):
        loss(make_logits((1, 3, 4, 4)), make_labels((1, 3, 4, 4), 3))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gamma_dice": 0.0}, "gamma_dice must be a finite number > 0"),
        ({"gamma_cross": -0.3}, "gamma_cross must be a finite number > 0"),
        ({"w_dice": -0.8}, "w_dice must be a finite number >= 0"),
        ({"w_dice": 0.0, "w_cross": 0.0}, "w_dice and w_cross are both 0"),
        ({"label_frequencies": [0.5, 0.0, 0.5]}, "label_frequencies must be positive finite numbers"),
        ({"label_frequencies": [1.0]}, "label_frequencies must be positive finite numbers"),
    ],
)
def test_exp_log_invalid_hyperparameters_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("exp_log", **options)
