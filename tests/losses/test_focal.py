"""Focal loss (Lin et al.) against hand-derived values and MONAI's FocalLoss."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from loss_cases import make_labels, make_logits, one_hot
from monai.losses import FocalLoss as MonaiFocalLoss

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
LOGITS = torch.logit(PROBS)[None, None]
# (1 - p_t)^2 (-ln p_t) per voxel, with p_t = 0.9, 0.6 (foreground) and 0.8, 0.9 (background).
FOREGROUND_TERMS = [0.1**2 * -math.log(0.9), 0.4**2 * -math.log(0.6)]
BACKGROUND_TERMS = [0.2**2 * -math.log(0.8), 0.1**2 * -math.log(0.9)]


def test_focal_binary_hand_value():
    value = build_loss("focal", alpha=None)(LOGITS, TARGET)

    assert value.item() == pytest.approx(0.0231913, abs=1e-7)
    assert value.item() == pytest.approx((sum(FOREGROUND_TERMS) + sum(BACKGROUND_TERMS)) / 4, abs=1e-12)


def test_focal_binary_alpha_weighs_foreground():
    # Lin et al.'s alpha = 0.25 on the positives and 0.75 on the negatives, mean over the 4 voxels.
    value = build_loss("focal")(LOGITS, TARGET)

    assert value.item() == pytest.approx(0.00704523, abs=1e-8)
    assert value.item() == pytest.approx((0.25 * sum(FOREGROUND_TERMS) + 0.75 * sum(BACKGROUND_TERMS)) / 4, abs=1e-12)


def test_focal_binary_class_weights_multiply_alpha():
    value = build_loss("focal", class_weights=[2.0, 4.0])(LOGITS, TARGET)

    expected = (4 * 0.25 * sum(FOREGROUND_TERMS) + 2 * 0.75 * sum(BACKGROUND_TERMS)) / 4
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_focal_3d_multiclass_hand_value():
    # Two voxels of class 1 in a 1 x 1 x 2 volume, softmax probabilities [0.2, 0.5, 0.3] and [0.1, 0.8, 0.1]:
    # (0.5^2 (-ln 0.5) + 0.2^2 (-ln 0.8)) / 2.
    probs = torch.tensor([[0.2, 0.1], [0.5, 0.8], [0.3, 0.1]], dtype=torch.float64).reshape(1, 3, 1, 1, 2)
    labels = torch.ones((1, 1, 1, 1, 2), dtype=torch.long)

    value = build_loss("focal", alpha=None)(torch.log(probs), labels)

    assert value.item() == pytest.approx(0.091106, abs=1e-6)
    assert value.item() == pytest.approx((0.25 * -math.log(0.5) + 0.04 * -math.log(0.8)) / 2, abs=1e-12)


def test_focal_zero_gamma_is_cross_entropy():
    logits = make_logits((2, 3, 6, 5, 4))
    labels = make_labels((2, 3, 6, 5, 4), 3)

    focal = build_loss("focal", gamma=0.0, alpha=None)(logits, labels)
    cross_entropy = build_loss("cross_entropy")(logits, labels)

    torch.testing.assert_close(focal, cross_entropy)


def test_focal_gamma_down_weights_easy_voxels():
    easy = build_loss("focal", gamma=2.0, alpha=None)(LOGITS, TARGET)
    easier = build_loss("focal", gamma=4.0, alpha=None)(LOGITS, TARGET)

    assert easier < easy


@pytest.mark.parametrize("shape", [(2, 3, 7, 6), (2, 3, 6, 5, 4)], ids=["2d", "3d"])
def test_focal_matches_monai_softmax_times_classes(shape):
    logits = make_logits(shape)
    labels = make_labels(shape, shape[1])
    weights = [0.5, 1.0, 2.0]

    ours = build_loss("focal", alpha=None, class_weights=weights)(logits, labels)
    monai = MonaiFocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0, weight=weights)(logits, labels)

    # MONAI's mean also averages over the 3 classes.
    torch.testing.assert_close(ours, 3 * monai, rtol=1e-5, atol=1e-6)


def test_focal_matches_monai_sigmoid():
    shape = (2, 1, 6, 5, 4)
    logits = make_logits(shape)
    labels = make_labels((2, 2, 6, 5, 4), 2)

    ours = build_loss("focal", alpha=0.25, gamma=2.0)(logits, labels)
    monai = MonaiFocalLoss(alpha=0.25, gamma=2.0)(logits, labels.float())

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


def test_focal_excluded_background_counts_in_the_mean():
    # Without the background the two background voxels add 0 but the mean still divides by 4.
    value = build_loss("focal", alpha=None, include_background=False)(LOGITS, TARGET)

    assert value.item() == pytest.approx(sum(FOREGROUND_TERMS) / 4, abs=1e-12)


def test_focal_one_hot_target_equals_index_target():
    logits = make_logits((2, 3, 5, 4, 3))
    labels = make_labels((2, 3, 5, 4, 3), 3)
    loss = build_loss("focal", alpha=None, class_weights=[1.0, 2.0, 3.0], include_background=False)

    torch.testing.assert_close(loss(logits, one_hot(labels, 3)), loss(logits, labels))


@pytest.mark.parametrize("gamma", [0.5, 0.25])
def test_focal_certain_voxel_has_finite_gradient(gamma):
    # sigmoid(40) rounds to 1 in float32, where d/dp (1 - p)^gamma is unbounded for gamma < 1.
    logits = torch.full((1, 1, 2, 2), 40.0, requires_grad=True)
    labels = torch.ones((1, 1, 2, 2), dtype=torch.long)

    value = build_loss("focal", gamma=gamma)(logits, labels)
    value.backward()

    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


def test_focal_alpha_unused_with_softmax_warns_once():
    logits = make_logits((1, 3, 4, 4))
    labels = make_labels((1, 3, 4, 4), 3)
    loss = build_loss("focal")

    with pytest.warns(UserWarning, match="alpha=0.25 applies only to one-channel"):
        with_alpha = loss(logits, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(logits, labels)
        without_alpha = build_loss("focal", alpha=None)(logits, labels)

    torch.testing.assert_close(with_alpha, without_alpha)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gamma": -1.0}, "gamma must be a finite number >= 0"),
        ({"gamma": float("nan")}, "gamma must be a finite number >= 0"),
        ({"alpha": 1.5}, r"alpha must be a finite number in \[0, 1\]"),
        ({"alpha": -0.1}, r"alpha must be a finite number in \[0, 1\]"),
    ],
)
def test_focal_invalid_hyperparameters_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("focal", **options)
