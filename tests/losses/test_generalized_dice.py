"""Generalised Dice loss against a hand-derived value and MONAI's GeneralizedDiceLoss."""

from __future__ import annotations

import pytest
import torch
from loss_cases import make_labels, make_logits
from monai.losses import GeneralizedDiceLoss as MonaiGeneralizedDiceLoss

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}


def test_generalized_dice_two_class_hand_value():
    # Both classes have volume 2, so w = 1/4 each: 1 - 2 (1.7 + 1.5) / (4.2 + 3.8) = 1 - 6.4 / 8 = 0.2.
    logits = torch.log(torch.stack([1 - PROBS, PROBS]))[None]

    value = build_loss("generalized_dice", **UNSMOOTHED)(logits, TARGET)

    assert value.item() == pytest.approx(0.2, abs=1e-12)


def test_generalized_dice_weights_small_classes_up():
    # Foreground of volume 1 (w = 1) and background of volume 3 (w = 1/9): the foreground term dominates.
    labels = torch.tensor([[1, 0], [0, 0]])[None, None]
    probs = torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=torch.float64)
    logits = torch.log(torch.stack([1 - probs, probs]).clamp_min(1e-300))[None]
    numerator = 2 * (1 * 0.5 + (1 / 9) * 3)
    denominator = 1 * (0.5 + 1) + (1 / 9) * (3.5 + 3)

    value = build_loss("generalized_dice", **UNSMOOTHED)(logits, labels)

    assert value.item() == pytest.approx(1 - numerator / denominator, abs=1e-12)


@pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
def test_generalized_dice_matches_monai(w_type, batch, include_background):
    logits = make_logits((2, 3, 6, 7, 5))
    labels = make_labels((2, 3, 6, 7, 5), 3)
    labels[1][labels[1] == 2] = 0
    options = {"w_type": w_type, "batch": batch, "include_background": include_background}

    ours = build_loss("generalized_dice", **options)(logits, labels)
    monai = MonaiGeneralizedDiceLoss(softmax=True, to_onehot_y=True, **options)(logits, labels)

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


def test_generalized_dice_absent_class_gets_the_largest_weight():
    labels = torch.zeros((1, 1, 4, 4), dtype=torch.long)
    labels[..., :2, :2] = 1
    logits = make_logits((1, 3, 4, 4))
    loss = build_loss("generalized_dice")
    sums = torch.tensor([[12.0, 4.0, 0.0]])

    weights = loss.volume_weights(sums)

    torch.testing.assert_close(weights, torch.tensor([[1 / 144, 1 / 16, 1 / 16]]))
    assert torch.isfinite(loss(logits, labels))


def test_generalized_dice_rejects_unknown_weight_type():
    with pytest.raises(ValueError, match="w_type must be one of"):
        build_loss("generalized_dice", w_type="cubic")
