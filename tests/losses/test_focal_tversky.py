"""Focal Tversky loss (Abraham & Khan) against hand-derived values."""

from __future__ import annotations

import pytest
import torch
from loss_cases import make_labels, make_logits, perfect_logits

from scripts.losses import build_loss
from scripts.losses.powers import POWER_LINEAR_BELOW

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
LOGITS = torch.logit(PROBS)[None, None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}
# Tversky index of the 2 x 2 example with alpha 0.3 on FP and beta 0.7 on FN: 1.5 / 1.94.
TVERSKY_LOSS = 1 - 1.5 / 1.94


def test_focal_tversky_binary_hand_value():
    # (1 - TI)^(1 / gamma) with gamma = 4/3: 0.226804^0.75.
    value = build_loss("focal_tversky", **UNSMOOTHED)(LOGITS, TARGET)

    assert value.item() == pytest.approx(0.328653, abs=1e-6)
    assert value.item() == pytest.approx(TVERSKY_LOSS**0.75, abs=1e-12)


def test_focal_tversky_unit_gamma_is_tversky():
    logits = make_logits((2, 3, 6, 5, 4))
    labels = make_labels((2, 3, 6, 5, 4), 3)

    focal = build_loss("focal_tversky", gamma=1.0)(logits, labels)
    tversky = build_loss("tversky")(logits, labels)

    torch.testing.assert_close(focal, tversky)


def test_focal_tversky_two_class_mean_and_sum():
    # Softmax view of the 2 x 2 example. Background: TP 1.7, FP (0.1 + 0.4) = 0.5, FN (0.2 + 0.1) = 0.3.
    logits = torch.log(torch.stack([1 - PROBS, PROBS]))[None]
    background = (1 - 1.7 / (1.7 + 0.3 * 0.5 + 0.7 * 0.3)) ** 0.75
    foreground = TVERSKY_LOSS**0.75

    mean = build_loss("focal_tversky", **UNSMOOTHED)(logits, TARGET)
    summed = build_loss("focal_tversky", class_reduction="sum", **UNSMOOTHED)(logits, TARGET)
    weighted = build_loss("focal_tversky", class_reduction="sum", class_weights=[2.0, 1.0], **UNSMOOTHED)(
        logits, TARGET
    )

    assert mean.item() == pytest.approx((background + foreground) / 2, abs=1e-12)
    assert summed.item() == pytest.approx(background + foreground, abs=1e-12)
    assert weighted.item() == pytest.approx(2 * background + foreground, abs=1e-12)


def test_focal_tversky_3d_hand_value():
    # Two voxels of class 1, probabilities [0.2, 0.5, 0.3] and [0.1, 0.8, 0.1], foreground classes only:
    # class 1 TI = 1.3 / (1.3 + 0.7 * 0.7); class 2 TI = 0, so its term is 1.
    probs = torch.tensor([[0.2, 0.1], [0.5, 0.8], [0.3, 0.1]], dtype=torch.float64).reshape(1, 3, 1, 1, 2)
    labels = torch.ones((1, 1, 1, 1, 2), dtype=torch.long)

    value = build_loss("focal_tversky", include_background=False, gamma=2.0, **UNSMOOTHED)(torch.log(probs), labels)

    assert value.item() == pytest.approx(((1 - 1.3 / 1.79) ** 0.5 + 1.0) / 2, abs=1e-12)


def test_focal_tversky_gamma_raises_small_losses():
    # Exponent 1 / gamma < 1 lifts a loss below 1: the well-segmented case gains relative to the Tversky loss.
    tversky = build_loss("tversky", **UNSMOOTHED)(LOGITS, TARGET)
    focal = build_loss("focal_tversky", gamma=2.0, **UNSMOOTHED)(LOGITS, TARGET)

    assert focal > tversky


def test_focal_tversky_perfect_prediction_has_finite_gradient():
    # 1 - TI reaches 0 (up to rounding) where the slope of x^0.75 is unbounded.
    labels = make_labels((1, 3, 5, 4, 3), 3)
    logits = perfect_logits(labels, 3, margin=40.0).requires_grad_()

    value = build_loss("focal_tversky")(logits, labels)
    value.backward()

    assert value.item() < 10 * POWER_LINEAR_BELOW**0.75
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gamma": 0.0}, "gamma must be a finite number > 0"),
        ({"gamma": -1.0}, "gamma must be a finite number > 0"),
        ({"class_reduction": "max"}, "class_reduction must be one of"),
        ({"alpha": -0.3}, "alpha must be a finite number >= 0"),
    ],
)
def test_focal_tversky_invalid_hyperparameters_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("focal_tversky", **options)
