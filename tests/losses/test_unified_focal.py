"""Asymmetric unified focal loss (Yeung et al.) against hand-derived values and MONAI 1.6.1."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import make_labels, make_logits, perfect_logits
from monai.losses import AsymmetricUnifiedFocalLoss as MonaiUnifiedFocalLoss

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
TWO_CLASS_LOGITS = torch.log(torch.stack([1 - PROBS, PROBS]))[None]
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}
DELTA, GAMMA = 0.6, 0.5
# Focal terms, mean over the 4 voxels: the background voxels have p_0 = 0.8 and 0.9 and are modulated by
# (1 - p_0)^0.5; the foreground voxels have p_1 = 0.9 and 0.6.
FOCAL = [
    (1 - DELTA) * (0.2**0.5 * -math.log(0.8) + 0.1**0.5 * -math.log(0.9)) / 4,
    DELTA * (-math.log(0.9) - math.log(0.6)) / 4,
]
# Tversky indices with delta on FN and 1 - delta on FP. Background: TP 1.7, FN 0.3, FP 0.5; foreground: TP 1.5,
# FN 0.5, FP 0.3. The background keeps 1 - mTI, the foreground gets (1 - mTI)^(1 - gamma).
TVERSKY = [1.7 / (1.7 + 0.6 * 0.3 + 0.4 * 0.5), 1.5 / (1.5 + 0.6 * 0.5 + 0.4 * 0.3)]
FOCAL_TVERSKY = [1 - TVERSKY[0], (1 - TVERSKY[1]) ** (1 - GAMMA)]


def test_unified_focal_two_class_hand_value():
    value = build_loss("unified_focal", **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)

    assert TVERSKY == pytest.approx([0.817308, 0.78125], abs=1e-6)
    assert value.item() == pytest.approx(0.189035, abs=1e-6)
    expected = sum(0.5 * focal + 0.5 * tversky for focal, tversky in zip(FOCAL, FOCAL_TVERSKY)) / 2
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_unified_focal_sigmoid_equals_two_class_softmax():
    one_channel = build_loss("unified_focal", **UNSMOOTHED)(torch.logit(PROBS)[None, None], TARGET)
    two_channels = build_loss("unified_focal", **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)

    assert one_channel.item() == pytest.approx(two_channels.item(), abs=1e-12)


def test_unified_focal_weight_selects_the_terms():
    focal_only = build_loss("unified_focal", weight=1.0, **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)
    tversky_only = build_loss("unified_focal", weight=0.0, **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)

    assert focal_only.item() == pytest.approx(sum(FOCAL) / 2, abs=1e-12)
    assert tversky_only.item() == pytest.approx(sum(FOCAL_TVERSKY) / 2, abs=1e-12)


def test_unified_focal_authors_reduction_from_the_terms():
    # The authors' code sums the focal term over classes and averages the focal Tversky term: 0.215469.
    focal_mean = build_loss("unified_focal", weight=1.0, **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET).item()
    tversky_mean = build_loss("unified_focal", weight=0.0, **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET).item()

    assert 0.5 * (2 * focal_mean) + 0.5 * tversky_mean == pytest.approx(0.215469, abs=1e-6)


def test_unified_focal_3d_multiclass_hand_value():
    # Two voxels of class 1, probabilities [0.2, 0.5, 0.3] and [0.1, 0.8, 0.1]. Focal terms: no background or
    # class-2 voxels, class 1 gets delta (-ln 0.5 - ln 0.8) / 2. Tversky: class 0 TP 0, FP 0.3 -> mTI 0;
    # class 1 TP 1.3, FN 0.7, FP 0 -> mTI 1.3 / (1.3 + 0.6 * 0.7); class 2 TP 0, FP 0.4 -> mTI 0.
    probs = torch.tensor([[0.2, 0.1], [0.5, 0.8], [0.3, 0.1]], dtype=torch.float64).reshape(1, 3, 1, 1, 2)
    labels = torch.ones((1, 1, 1, 1, 2), dtype=torch.long)
    focal = [0.0, DELTA * (-math.log(0.5) - math.log(0.8)) / 2, 0.0]
    tversky = [1.0, (1 - 1.3 / (1.3 + 0.6 * 0.7)) ** 0.5, 1.0]

    value = build_loss("unified_focal", **UNSMOOTHED)(torch.log(probs), labels)

    expected = sum(0.5 * f + 0.5 * t for f, t in zip(focal, tversky)) / 3
    assert value.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("shape", [(2, 2, 9, 8), (2, 2, 6, 5, 4)], ids=["2d", "3d"])
def test_unified_focal_matches_monai_softmax(shape):
    logits = make_logits(shape, scale=1.0)
    labels = make_labels(shape, 2)
    # MONAI 1.6.1 takes probabilities and uses epsilon 1e-7 as the Tversky smoothing.
    monai = MonaiUnifiedFocalLoss(to_onehot_y=True, weight=0.5, delta=0.6, gamma=0.5)

    ours = build_loss("unified_focal", smooth_nr=1e-7, smooth_dr=1e-7)(logits, labels)
    reference = monai(torch.softmax(logits, dim=1), labels)

    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 1, 9, 8), (2, 1, 6, 5, 4)], ids=["2d", "3d"])
def test_unified_focal_matches_monai_sigmoid(shape):
    logits = make_logits(shape, scale=1.0)
    labels = make_labels((shape[0], 2, *shape[2:]), 2)
    monai = MonaiUnifiedFocalLoss(weight=0.5, delta=0.6, gamma=0.5)

    ours = build_loss("unified_focal", smooth_nr=1e-7, smooth_dr=1e-7)(logits, labels)
    reference = monai(torch.sigmoid(logits), labels.float())

    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def test_unified_focal_excluding_background_drops_its_terms():
    value = build_loss("unified_focal", include_background=False, **UNSMOOTHED)(TWO_CLASS_LOGITS, TARGET)

    assert value.item() == pytest.approx(0.5 * FOCAL[1] + 0.5 * FOCAL_TVERSKY[1], abs=1e-12)


def test_unified_focal_perfect_prediction_has_finite_gradient():
    labels = make_labels((1, 3, 5, 4, 3), 3)
    logits = perfect_logits(labels, 3, margin=40.0).requires_grad_()

    value = build_loss("unified_focal")(logits, labels)
    value.backward()

    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weight": 1.5}, r"weight must be a finite number in \[0, 1\]"),
        ({"delta": -0.1}, r"delta must be a finite number in \[0, 1\]"),
        ({"gamma": 2.0}, r"gamma must be a finite number in \[0, 1\]"),
        ({"smooth_nr": float("nan")}, "smooth_nr must be a finite number >= 0"),
    ],
)
def test_unified_focal_invalid_hyperparameters_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("unified_focal", **options)
