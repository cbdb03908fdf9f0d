"""Tversky loss (Salehi et al.) against hand-derived values and MONAI's TverskyLoss."""

from __future__ import annotations

import pytest
import torch
from loss_cases import make_labels, make_logits
from monai.losses import TverskyLoss as MonaiTverskyLoss

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
LOGITS = torch.logit(PROBS)[None, None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}


def test_tversky_binary_hand_value():
    # TP = 1.5, FP = 0.2 + 0.1 = 0.3, FN = 0.1 + 0.4 = 0.5; alpha 0.3 on FP, beta 0.7 on FN:
    # 1 - 1.5 / (1.5 + 0.09 + 0.35).
    value = build_loss("tversky", **UNSMOOTHED)(LOGITS, TARGET)

    assert value.item() == pytest.approx(0.226804, abs=1e-6)
    assert value.item() == pytest.approx(1 - 1.5 / 1.94, abs=1e-12)


def test_tversky_3d_multiclass_hand_value():
    # Two voxels of class 1, probabilities [0.2, 0.5, 0.3] and [0.1, 0.8, 0.1]; foreground classes 1 and 2:
    # class 1: TP 1.3, FP 0, FN 0.7 -> TI = 1.3 / (1.3 + 0.49); class 2: TP 0, FP 0.4, FN 0 -> TI = 0.
    probs = torch.tensor([[0.2, 0.1], [0.5, 0.8], [0.3, 0.1]], dtype=torch.float64).reshape(1, 3, 1, 1, 2)
    labels = torch.ones((1, 1, 1, 1, 2), dtype=torch.long)

    value = build_loss("tversky", include_background=False, **UNSMOOTHED)(torch.log(probs), labels)

    assert value.item() == pytest.approx(((1 - 1.3 / 1.79) + 1.0) / 2, abs=1e-12)


def test_tversky_alpha_weighs_false_positives():
    # Everything predicted as foreground: no false negatives, two false-positive voxels.
    over_segmented = torch.full((1, 1, 2, 2), 3.0, dtype=torch.float64)

    low = build_loss("tversky", alpha=0.1, beta=0.9)(over_segmented, TARGET)
    high = build_loss("tversky", alpha=0.9, beta=0.1)(over_segmented, TARGET)

    assert high > low


def test_tversky_beta_weighs_false_negatives():
    # Everything predicted as background: no false positives, two missed foreground voxels.
    under_segmented = torch.full((1, 1, 2, 2), -3.0, dtype=torch.float64)

    low = build_loss("tversky", alpha=0.9, beta=0.1)(under_segmented, TARGET)
    high = build_loss("tversky", alpha=0.1, beta=0.9)(under_segmented, TARGET)

    assert high > low


def test_tversky_special_cases_dice_jaccard():
    logits = make_logits((2, 3, 6, 5, 4))
    labels = make_labels((2, 3, 6, 5, 4), 3)

    # Without smoothing: TP / (TP + (FP + FN) / 2) = 2 TP / (2 TP + FP + FN), and TP / (TP + FP + FN) = I / U.
    half = build_loss("tversky", alpha=0.5, beta=0.5, **UNSMOOTHED)(logits, labels)
    unit = build_loss("tversky", alpha=1.0, beta=1.0, **UNSMOOTHED)(logits, labels)
    dice = build_loss("dice", squared_pred=False, **UNSMOOTHED)(logits, labels)
    jaccard = build_loss("jaccard", **UNSMOOTHED)(logits, labels)

    torch.testing.assert_close(half, dice)
    torch.testing.assert_close(unit, jaccard)


@pytest.mark.parametrize(("alpha", "beta"), [(0.3, 0.7), (0.5, 0.5), (0.8, 0.2)])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_tversky_matches_monai(alpha, beta, batch, include_background):
    logits = make_logits((2, 3, 6, 7, 5))
    labels = make_labels((2, 3, 6, 7, 5), 3)
    options = {"alpha": alpha, "beta": beta, "batch": batch, "include_background": include_background}

    ours = build_loss("tversky", **options)(logits, labels)
    monai = MonaiTverskyLoss(softmax=True, to_onehot_y=True, **options)(logits, labels)

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


def test_tversky_matches_monai_2d_sigmoid():
    logits = make_logits((2, 1, 9, 8))
    labels = make_labels((2, 2, 9, 8), 2)

    ours = build_loss("tversky")(logits, labels)
    monai = MonaiTverskyLoss(sigmoid=True, alpha=0.3, beta=0.7)(logits, labels.float())

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"alpha": -0.1}, "alpha must be a finite number >= 0"),
        ({"beta": float("inf")}, "beta must be a finite number >= 0"),
        ({"smooth_dr": -1.0}, "smooth_dr must be a finite number >= 0"),
    ],
)
def test_tversky_invalid_hyperparameters_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("tversky", **options)
