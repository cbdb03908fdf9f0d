"""Dice loss against hand-derived values and MONAI's DiceLoss."""

from __future__ import annotations

import pytest
import torch
from loss_cases import make_labels, make_logits, one_hot
from monai.losses import DiceLoss as MonaiDiceLoss

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}


def test_dice_linear_binary_hand_value():
    # TP = 1.5, sum p = 1.8, sum t = 2: 1 - 3.0 / 3.8.
    value = build_loss("dice", squared_pred=False, **UNSMOOTHED)(torch.logit(PROBS)[None, None], TARGET)

    assert value.item() == pytest.approx(1 - 3.0 / 3.8, abs=1e-12)


def test_dice_squared_binary_hand_value():
    # sum p^2 = 0.81 + 0.36 + 0.04 + 0.01 = 1.22, sum t^2 = 2: 1 - 3.0 / 3.22 (V-Net).
    value = build_loss("dice", **UNSMOOTHED)(torch.logit(PROBS)[None, None], TARGET)

    assert value.item() == pytest.approx(1 - 3.0 / 3.22, abs=1e-12)


def test_dice_two_class_softmax_hand_value():
    logits = torch.log(torch.stack([1 - PROBS, PROBS]))[None]
    background = 1 - 2 * 1.7 / (2.2 + 2.0)  # TP 1.7, sum p 2.2, sum t 2
    foreground = 1 - 3.0 / 3.8

    both = build_loss("dice", squared_pred=False, **UNSMOOTHED)(logits, TARGET)
    foreground_only = build_loss("dice", squared_pred=False, include_background=False, **UNSMOOTHED)(logits, TARGET)

    assert both.item() == pytest.approx((background + foreground) / 2, abs=1e-12)
    assert foreground_only.item() == pytest.approx(foreground, abs=1e-12)


def test_dice_3d_hand_value():
    # A 1 x 2 x 2 volume, two classes; the foreground probabilities are 0.8, 0.4, 0.3, 0.0 against t = 1, 1, 0, 0.
    probs = torch.tensor([0.8, 0.4, 0.3, 1e-12], dtype=torch.float64).reshape(1, 2, 2)
    logits = torch.logit(probs)[None, None]
    labels = torch.tensor([1, 1, 0, 0]).reshape(1, 1, 1, 2, 2)

    value = build_loss("dice", squared_pred=False, **UNSMOOTHED)(logits, labels)

    assert value.item() == pytest.approx(1 - 2 * 1.2 / (1.5 + 2.0), abs=1e-9)


def test_dice_class_weights_weigh_the_class_average():
    logits = make_logits((1, 3, 6, 6))
    labels = make_labels((1, 3, 6, 6), 3)
    per_class = [build_loss("dice", class_weights=[float(c == k) for k in range(3)])(logits, labels) for c in range(3)]

    weighted = build_loss("dice", class_weights=[1.0, 2.0, 3.0])(logits, labels)

    assert weighted.item() == pytest.approx((per_class[0] + 2 * per_class[1] + 3 * per_class[2]).item() / 6, rel=1e-6)


@pytest.mark.parametrize("squared_pred", [False, True])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_dice_matches_monai(squared_pred, batch, include_background):
    logits = make_logits((2, 3, 6, 7, 5))
    labels = make_labels((2, 3, 6, 7, 5), 3)
    options = {"squared_pred": squared_pred, "batch": batch, "include_background": include_background}

    ours = build_loss("dice", **options)(logits, labels)
    monai = MonaiDiceLoss(softmax=True, to_onehot_y=True, **options)(logits, labels)

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


def test_dice_empty_class_conventions():
    labels = torch.zeros((1, 1, 4, 4), dtype=torch.long)
    empty_prediction = torch.logit(torch.full((1, 1, 4, 4), 1e-9, dtype=torch.float64))
    small_false_positive = torch.logit(torch.full((1, 1, 4, 4), 0.05, dtype=torch.float64))

    assert build_loss("dice")(empty_prediction, labels).item() == pytest.approx(0.0, abs=1e-3)
    assert build_loss("dice", squared_pred=False)(small_false_positive, labels).item() > 0.99
    assert one_hot(labels, 2).sum() == 16
