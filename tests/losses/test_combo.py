"""Combo loss (Taghanaki et al.) against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}


def combo_by_hand(alpha: float, beta: float) -> float:
    positives = math.log(0.9) + math.log(0.6)
    negatives = math.log(0.8) + math.log(0.9)
    bce = -(beta * positives + (1 - beta) * negatives) / 4
    dice = 3.0 / 3.8
    return alpha * bce - (1 - alpha) * dice


def test_combo_binary_hand_value():
    value = build_loss("combo", **UNSMOOTHED)(torch.logit(PROBS)[None, None], TARGET)

    assert value.item() == pytest.approx(-0.335694, abs=1e-6)
    assert value.item() == pytest.approx(combo_by_hand(0.5, 0.5), abs=1e-12)


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.7), (0.8, 0.2), (1.0, 0.5), (0.0, 0.5)])
def test_combo_alpha_beta_weights(alpha, beta):
    value = build_loss("combo", alpha=alpha, beta=beta, **UNSMOOTHED)(torch.logit(PROBS)[None, None], TARGET)

    assert value.item() == pytest.approx(combo_by_hand(alpha, beta), abs=1e-12)


def test_combo_beta_penalises_false_negatives():
    # Predicting background where the target is foreground costs more as beta grows.
    missed = torch.logit(torch.tensor([[0.1, 0.1], [0.1, 0.1]], dtype=torch.float64))[None, None]
    low = build_loss("combo", alpha=1.0, beta=0.2)(missed, TARGET)
    high = build_loss("combo", alpha=1.0, beta=0.8)(missed, TARGET)

    assert high > low


def test_combo_3d_multiclass_hand_value():
    # A 1 x 1 x 2 volume, three classes, both voxels of class 1, softmax probabilities [0.2, 0.5, 0.3] and
    # [0.1, 0.8, 0.1]; K = the foreground classes 1 and 2.
    probs = torch.tensor([[0.2, 0.1], [0.5, 0.8], [0.3, 0.1]], dtype=torch.float64).reshape(1, 3, 1, 1, 2)
    labels = torch.ones((1, 1, 1, 1, 2), dtype=torch.long)
    bce_1 = -(0.5 * math.log(0.5) + 0.5 * math.log(0.8)) / 2
    bce_2 = -(0.5 * math.log(0.7) + 0.5 * math.log(0.9)) / 2
    dice_1 = 2 * 1.3 / (1.3 + 2)
    dice_2 = 0.0
    expected = 0.5 * (bce_1 + bce_2) / 2 - 0.5 * (dice_1 + dice_2) / 2

    value = build_loss("combo", include_background=False, **UNSMOOTHED)(torch.log(probs), labels)

    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_combo_keeps_gradient_when_probability_rounds_to_one():
    # p = sigmoid(40) is 1.0 in float32, where log1p(-p) would be -inf.
    logits = torch.full((1, 1, 2, 2), 40.0, requires_grad=True)
    value = build_loss("combo", alpha=1.0)(logits, torch.zeros((1, 1, 2, 2), dtype=torch.long))
    value.backward()

    assert torch.isfinite(value)
    assert value.item() == pytest.approx(0.5 * 40.0, rel=1e-4)
    assert (logits.grad > 0).all()
