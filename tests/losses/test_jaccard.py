"""Jaccard (IoU) loss against hand-derived values and MONAI's DiceLoss(jaccard=True)."""

from __future__ import annotations

import pytest
import torch
from loss_cases import make_labels, make_logits
from monai.losses import DiceLoss as MonaiDiceLoss

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}


def test_jaccard_binary_hand_value():
    # I = 0.9 + 0.6 = 1.5, U = sum p + sum t - I = 1.8 + 2 - 1.5 = 2.3: 1 - 1.5 / 2.3.
    value = build_loss("jaccard", **UNSMOOTHED)(torch.logit(PROBS)[None, None], TARGET)

    assert value.item() == pytest.approx(0.347826, abs=1e-6)
    assert value.item() == pytest.approx(1 - 1.5 / 2.3, abs=1e-12)


def test_jaccard_squared_binary_hand_value():
    # U = sum p^2 + sum t^2 - I = 1.22 + 2 - 1.5 = 1.72.
    value = build_loss("jaccard", squared_pred=True, **UNSMOOTHED)(torch.logit(PROBS)[None, None], TARGET)

    assert value.item() == pytest.approx(1 - 1.5 / 1.72, abs=1e-12)


def test_jaccard_two_class_softmax_hand_value():
    # Background: p = 0.1, 0.4, 0.8, 0.9 against t = 0, 0, 1, 1: I = 1.7, U = 2.2 + 2 - 1.7 = 2.5.
    logits = torch.log(torch.stack([1 - PROBS, PROBS]))[None]
    background = 1 - 1.7 / 2.5
    foreground = 1 - 1.5 / 2.3

    both = build_loss("jaccard", **UNSMOOTHED)(logits, TARGET)
    foreground_only = build_loss("jaccard", include_background=False, **UNSMOOTHED)(logits, TARGET)

    assert both.item() == pytest.approx((background + foreground) / 2, abs=1e-12)
    assert foreground_only.item() == pytest.approx(foreground, abs=1e-12)


def test_jaccard_3d_hand_value():
    # A 1 x 2 x 2 volume: foreground probabilities 0.8, 0.4, 0.3, 0 against t = 1, 1, 0, 0; I = 1.2, U = 2.3.
    probs = torch.tensor([0.8, 0.4, 0.3, 1e-12], dtype=torch.float64).reshape(1, 2, 2)
    labels = torch.tensor([1, 1, 0, 0]).reshape(1, 1, 1, 2, 2)

    value = build_loss("jaccard", **UNSMOOTHED)(torch.logit(probs)[None, None], labels)

    assert value.item() == pytest.approx(1 - 1.2 / 2.3, abs=1e-9)


def test_jaccard_equals_dice_relation_on_hard_predictions():
    # For hard sets J = D / (2 - D).
    labels = make_labels((1, 2, 8, 8), 2)
    hard_logits = 30.0 * (2.0 * torch.roll(labels, 1, dims=-1).double() - 1.0)

    jaccard = 1 - build_loss("jaccard")(hard_logits, labels).item()
    dice = 1 - build_loss("dice", squared_pred=False)(hard_logits, labels).item()

    assert jaccard == pytest.approx(dice / (2 - dice), abs=1e-6)


@pytest.mark.parametrize("squared_pred", [False, True])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_jaccard_matches_monai(squared_pred, batch, include_background):
    logits = make_logits((2, 3, 6, 7, 5))
    labels = make_labels((2, 3, 6, 7, 5), 3)
    options = {"squared_pred": squared_pred, "batch": batch, "include_background": include_background}

    ours = build_loss("jaccard", **options)(logits, labels)
    # MONAI computes (2 I + s) / (2 U + s): the same ratio with twice our smoothing.
    monai = MonaiDiceLoss(softmax=True, to_onehot_y=True, jaccard=True, smooth_nr=2e-5, smooth_dr=2e-5, **options)(
        logits, labels
    )

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


def test_jaccard_absent_class_scores_zero_loss():
    # Background everywhere in target and (almost) in prediction: foreground (0 + s) / (0 + s) = 1.
    labels = torch.zeros((1, 1, 4, 4), dtype=torch.long)
    logits = torch.full((1, 1, 4, 4), -40.0, dtype=torch.float64)

    assert build_loss("jaccard", include_background=False)(logits, labels).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["smooth_nr", "smooth_dr"])
def test_jaccard_negative_smoothing_raises(name):
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        build_loss("jaccard", **{name: -1e-5})
