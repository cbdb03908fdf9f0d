"""Sensitivity-specificity loss (Brosch et al.) against hand-derived values."""

from __future__ import annotations

import pytest
import torch
from loss_cases import make_labels, make_logits

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
LOGITS = torch.logit(PROBS)[None, None]
# Squared errors on the two positives: 0.1^2, 0.4^2; on the two negatives: 0.2^2, 0.1^2.
SENSITIVITY_TERM = (0.01 + 0.16) / 2
SPECIFICITY_TERM = (0.04 + 0.01) / 2


def test_sensitivity_specificity_binary_hand_value():
    # 0.05 * 0.085 + 0.95 * 0.025 = 0.028.
    value = build_loss("sensitivity_specificity", smooth_dr=0.0)(LOGITS, TARGET)

    assert value.item() == pytest.approx(0.028, abs=1e-12)


@pytest.mark.parametrize(("r", "expected"), [(1.0, SENSITIVITY_TERM), (0.0, SPECIFICITY_TERM), (0.5, 0.055)])
def test_sensitivity_specificity_r_weighs_the_terms(r, expected):
    value = build_loss("sensitivity_specificity", r=r, smooth_dr=0.0)(LOGITS, TARGET)

    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_sensitivity_specificity_two_class_softmax_hand_value():
    # Background p = 0.1, 0.4, 0.8, 0.9 against t = 0, 0, 1, 1: positives (0.2^2 + 0.1^2) / 2 = 0.025,
    # negatives (0.1^2 + 0.4^2) / 2 = 0.085, so 0.05 * 0.025 + 0.95 * 0.085 = 0.082; foreground 0.028.
    logits = torch.log(torch.stack([1 - PROBS, PROBS]))[None]

    value = build_loss("sensitivity_specificity", smooth_dr=0.0)(logits, TARGET)

    assert value.item() == pytest.approx((0.082 + 0.028) / 2, abs=1e-12)


def test_sensitivity_specificity_3d_hand_value():
    # A 1 x 2 x 2 volume: foreground probabilities 0.8, 0.4, 0.3, 0.1 against t = 1, 1, 0, 0.
    probs = torch.tensor([0.8, 0.4, 0.3, 0.1], dtype=torch.float64).reshape(1, 1, 1, 2, 2)
    labels = torch.tensor([1, 1, 0, 0]).reshape(1, 1, 1, 2, 2)
    sensitivity = (0.2**2 + 0.6**2) / 2
    specificity = (0.3**2 + 0.1**2) / 2

    value = build_loss("sensitivity_specificity", smooth_dr=0.0)(torch.logit(probs), labels)

    assert value.item() == pytest.approx(0.05 * sensitivity + 0.95 * specificity, abs=1e-12)


def test_sensitivity_specificity_absent_class_has_no_sensitivity_term():
    # No foreground in the target: the sensitivity term is 0 / (0 + s) = 0, only the specificity term remains.
    labels = torch.zeros((1, 1, 2, 2), dtype=torch.long)

    value = build_loss("sensitivity_specificity", include_background=False)(LOGITS, labels)
    expected = 0.95 * (0.9**2 + 0.6**2 + 0.2**2 + 0.1**2) / (4 + 1e-5)

    assert torch.isfinite(value)
    assert value.item() == pytest.approx(expected, abs=1e-9)


def test_sensitivity_specificity_batch_pools_the_sums():
    logits = make_logits((2, 3, 5, 4, 3), dtype=torch.float64)
    labels = make_labels((2, 3, 5, 4, 3), 3)
    stacked_logits = torch.cat([logits[0], logits[1]], dim=-1)[None]
    stacked_labels = torch.cat([labels[0], labels[1]], dim=-1)[None]

    pooled = build_loss("sensitivity_specificity", batch=True)(logits, labels)
    concatenated = build_loss("sensitivity_specificity")(stacked_logits, stacked_labels)

    torch.testing.assert_close(pooled, concatenated)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"r": 1.5}, r"r must be a finite number in \[0, 1\]"),
        ({"r": -0.05}, r"r must be a finite number in \[0, 1\]"),
        ({"smooth_dr": -1e-5}, "smooth_dr must be a finite number >= 0"),
    ],
)
def test_sensitivity_specificity_invalid_hyperparameters_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("sensitivity_specificity", **options)
