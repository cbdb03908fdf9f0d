"""Generalised Wasserstein Dice loss (Fidon et al.) against hand-derived values and MONAI."""

from __future__ import annotations

import pytest
import torch
from loss_cases import make_labels, make_logits, one_hot, perfect_logits
from monai.losses import GeneralizedWassersteinDiceLoss as MonaiWassersteinDiceLoss

from scripts.losses import build_loss

# Background at distance 1 from both classes, classes 1 and 2 at distance 0.5 from each other.
DISTANCES = [[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]]
# Three voxels labelled 0, 1, 2 with these softmax probabilities (one row per voxel).
VOXEL_PROBS = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.6, 0.3], [0.1, 0.3, 0.6]], dtype=torch.float64)
UNSMOOTHED = {"smooth_nr": 0.0, "smooth_dr": 0.0}


def example(spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (log p, so the softmax returns p) and labels of the three-voxel example in the given layout."""
    logits = torch.log(VOXEL_PROBS.t()).reshape(1, 3, *spatial)
    labels = torch.tensor([0, 1, 2]).reshape(1, 1, *spatial)
    return logits, labels


@pytest.mark.parametrize("spatial", [(3, 1), (1, 1, 3)], ids=["2d", "3d"])
def test_wasserstein_dice_hand_value(spatial):
    # W = M(., y) . p per voxel: 0.1 + 0.1 = 0.2; 0.1 + 0.5 * 0.3 = 0.25; 0.1 + 0.5 * 0.3 = 0.25.
    # alpha = M(l, 0) = (0, 1, 1): TP = 0.75 + 0.75 = 1.5; sum W = 0.7; loss = 1 - 3 / 3.7.
    logits, labels = example(spatial)

    value = build_loss("generalized_wasserstein_dice", dist_matrix=DISTANCES, **UNSMOOTHED)(logits, labels)

    assert value.item() == pytest.approx(0.189189, abs=1e-6)
    assert value.item() == pytest.approx(1 - 3.0 / 3.7, abs=1e-12)


def test_wasserstein_dice_class_weights_multiply_alpha():
    # alpha = (0, 2, 1): TP = 2 * 0.75 + 0.75 = 2.25; loss = 1 - 4.5 / (4.5 + 0.7).
    logits, labels = example((3, 1))

    value = build_loss(
        "generalized_wasserstein_dice", dist_matrix=DISTANCES, class_weights=[1.0, 2.0, 1.0], **UNSMOOTHED
    )(logits, labels)

    assert value.item() == pytest.approx(1 - 4.5 / 5.2, abs=1e-12)


def test_wasserstein_dice_gdl_mode_hand_value():
    # alpha_l = 1 / (V_l + 1) = 0.5 for every class (one voxel each); denominator sum alpha_y (2 - W).
    # TP = 0.5 * (0.8 + 0.75 + 0.75) = 1.15; denominator 0.5 * (1.8 + 1.75 + 1.75) = 2.65.
    logits, labels = example((3, 1))

    value = build_loss("generalized_wasserstein_dice", dist_matrix=DISTANCES, weighting_mode="GDL", **UNSMOOTHED)(
        logits, labels
    )

    assert value.item() == pytest.approx(1 - 2.3 / 2.65, abs=1e-12)


def test_wasserstein_dice_matrix_is_renormalised():
    logits, labels = example((3, 1))
    scaled = [[4.0 * entry for entry in row] for row in DISTANCES]

    value = build_loss("generalized_wasserstein_dice", dist_matrix=scaled)(logits, labels)
    reference = build_loss("generalized_wasserstein_dice", dist_matrix=DISTANCES)(logits, labels)

    assert value.item() == pytest.approx(reference.item(), abs=1e-12)


def test_wasserstein_dice_close_classes_cost_less():
    # Class-1 voxels predicted as class 2 (distance 0.5) cost less than predicted as background (distance 1).
    labels = torch.ones((1, 1, 4, 4), dtype=torch.long)
    labels[..., :2] = 0
    as_class_2 = perfect_logits(torch.where(labels == 1, 2, labels), 3)
    as_background = perfect_logits(torch.zeros_like(labels), 3)
    loss = build_loss("generalized_wasserstein_dice", dist_matrix=DISTANCES)

    assert loss(as_class_2, labels) < loss(as_background, labels)


def test_wasserstein_dice_two_classes_is_foreground_dice():
    # With M = [[0, 1], [1, 0]]: TP = sum of p_fg over foreground, sum W = FN + FP, so the score is the Dice.
    logits = make_logits((2, 2, 6, 5, 4), dtype=torch.float64)
    labels = make_labels((2, 2, 6, 5, 4), 2)

    value = build_loss("generalized_wasserstein_dice", **UNSMOOTHED)(logits, labels)
    dice = build_loss("dice", squared_pred=False, include_background=False, **UNSMOOTHED)(logits, labels)

    torch.testing.assert_close(value, dice)


@pytest.mark.parametrize("weighting_mode", ["default", "GDL"])
@pytest.mark.parametrize("distances", [None, DISTANCES], ids=["default_matrix", "hierarchy"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 7), (2, 3, 6, 5, 4)], ids=["2d", "3d"])
def test_wasserstein_dice_matches_monai(weighting_mode, distances, shape):
    logits = make_logits(shape)
    labels = make_labels(shape, 3)
    matrix = torch.ones(3, 3) - torch.eye(3) if distances is None else torch.tensor(DISTANCES)

    ours = build_loss("generalized_wasserstein_dice", dist_matrix=distances, weighting_mode=weighting_mode)(
        logits, labels
    )
    monai = MonaiWassersteinDiceLoss(dist_matrix=matrix, weighting_mode=weighting_mode)(logits, labels)

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


def test_wasserstein_dice_soft_target_equals_index_target():
    logits = make_logits((2, 3, 5, 4, 3))
    labels = make_labels((2, 3, 5, 4, 3), 3)
    loss = build_loss("generalized_wasserstein_dice", dist_matrix=DISTANCES, weighting_mode="GDL")

    torch.testing.assert_close(loss(logits, one_hot(labels, 3)), loss(logits, labels))


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5]], "must be a square C x C matrix"),
        ([[0.0]], "must be a square C x C matrix with C >= 2"),
        ([[0.0, 1.0], [0.5, 0.0]], "is not symmetric"),
        ([[1.0, 1.0], [1.0, 0.0]], "diagonal"),
        ([[0.0, -1.0], [-1.0, 0.0]], "negative entries"),
        ([[0.0, 0.0], [0.0, 0.0]], "every entry is zero"),
        ([[0.0, float("nan")], [float("nan"), 0.0]], "non-finite"),
    ],
)
def test_wasserstein_dice_invalid_matrix_raises(matrix, message):
    with pytest.raises(ValueError, match=message):
        build_loss("generalized_wasserstein_dice", dist_matrix=matrix)


def test_wasserstein_dice_matrix_size_must_match_classes():
    loss = build_loss("generalized_wasserstein_dice", dist_matrix=DISTANCES)

    with pytest.raises(ValueError, match=r"dist_matrix is 3 x 3 but the logits have 4 classes"):
        loss(make_logits((1, 4, 4, 4)), make_labels((1, 4, 4, 4), 4))


def test_wasserstein_dice_invalid_weighting_mode_raises():
    with pytest.raises(ValueError, match="weighting_mode must be one of"):
        build_loss("generalized_wasserstein_dice", weighting_mode="gdl")
