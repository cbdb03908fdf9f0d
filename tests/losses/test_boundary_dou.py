"""Boundary DoU loss (Sun et al.) against the reference values and the squared Dice loss."""

from __future__ import annotations

import pytest
import torch
from loss_cases import make_logits

from scripts.losses import build_loss
from scripts.losses.base import SegmentationInputs


def square_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A 2 x 2 target square in a 4 x 4 image, predicted 0.9 0.6 0.8 0.7, plus 0.3 on one outside pixel."""
    labels = torch.zeros((1, 1, 4, 4), dtype=torch.long)
    labels[..., 1:3, 1:3] = 1
    probs = torch.full((4, 4), 1e-12, dtype=torch.float64)
    probs[1:3, 1:3] = torch.tensor([[0.9, 0.6], [0.8, 0.7]], dtype=torch.float64)
    probs[0, 0] = 0.3
    return torch.logit(probs).reshape(1, 1, 4, 4), labels


def large_square_case() -> tuple[torch.Tensor, torch.Tensor]:
    """An 8 x 8 target square in a 12 x 12 image, predicted 0.8 inside and 0.1 outside."""
    labels = torch.zeros((1, 1, 12, 12), dtype=torch.long)
    labels[..., 2:10, 2:10] = 1
    probs = torch.full((12, 12), 0.1, dtype=torch.float64)
    probs[2:10, 2:10] = 0.8
    return torch.logit(probs).reshape(1, 1, 12, 12), labels


def test_boundary_dou_small_square_reference_value():
    # C = S = 4, alpha = -1: (2.39 + 4 - 6 + 1e-5) / (2.39 + 4 + 1e-5), the squared Dice loss.
    logits, labels = square_case()

    value = build_loss("boundary_dou")(logits, labels)

    assert value.item() == pytest.approx(0.0610343, abs=1e-7)
    assert value.item() == pytest.approx(0.39001 / 6.39001, abs=1e-9)


def test_boundary_dou_large_square_reference_value():
    # C = 28, S = 64: alpha = 1 - 2 (28 + 1e-5) / (64 + 1e-5) = 0.1249998. Sums: p^2 41.76, g^2 64, pg 51.2.
    logits, labels = large_square_case()
    alpha = 1 - 2 * (28 + 1e-5) / (64 + 1e-5)
    expected = (41.76 + 64 - 2 * 51.2 + 1e-5) / (41.76 + 64 - (1 + alpha) * 51.2 + 1e-5)

    value = build_loss("boundary_dou")(logits, labels)

    assert value.item() == pytest.approx(0.0697676, abs=1e-7)
    assert value.item() == pytest.approx(expected, abs=1e-12)


def test_boundary_dou_alpha_counts_boundary_voxels():
    logits, labels = large_square_case()
    inputs = SegmentationInputs(logits, labels)

    alpha = build_loss("boundary_dou").boundary_alpha(inputs)

    assert alpha[0, 1].item() == pytest.approx(1 - 2 * (28 + 1e-5) / (64 + 1e-5), abs=1e-12)


def test_boundary_dou_alpha_of_a_cube_is_negative():
    # An 8^3 cube: S = 512, C = 512 - 6^3 = 296, so alpha = 1 - 592 / 512 = -0.15625.
    labels = torch.zeros((1, 1, 12, 12, 12), dtype=torch.long)
    labels[..., 2:10, 2:10, 2:10] = 1
    inputs = SegmentationInputs(torch.zeros((1, 1, 12, 12, 12)), labels)

    alpha = build_loss("boundary_dou").boundary_alpha(inputs)

    assert alpha[0, 1].item() == pytest.approx(1 - 2 * (296 + 1e-5) / (512 + 1e-5), abs=1e-6)


def test_boundary_dou_alpha_minus_one_is_squared_dice():
    logits, labels = square_case()
    unsmoothed_dice = build_loss("dice", smooth_nr=0.0, smooth_dr=0.0)(logits, labels)

    value = build_loss("boundary_dou", smooth=1e-12)(logits, labels)

    assert value.item() == pytest.approx(unsmoothed_dice.item(), abs=1e-9)


def test_boundary_dou_alpha_zero_is_squared_iou():
    # Clipping alpha at 0 turns the large square's ratio into 1 - pg / (p^2 + g^2 - pg).
    logits, labels = large_square_case()

    value = build_loss("boundary_dou", max_alpha=0.0, smooth=1e-12)(logits, labels)

    assert value.item() == pytest.approx(1 - 51.2 / (41.76 + 64 - 51.2), abs=1e-9)


def test_boundary_dou_max_alpha_clips():
    logits, labels = large_square_case()

    clipped = build_loss("boundary_dou", max_alpha=0.05)(logits, labels)
    unclipped = build_loss("boundary_dou")(logits, labels)

    assert clipped < unclipped


def test_boundary_dou_image_border_is_not_a_boundary():
    # A target filling the left half: only its column next to the right half is boundary, C = 4, S = 8.
    labels = torch.zeros((1, 1, 4, 4), dtype=torch.long)
    labels[..., :, :2] = 1
    inputs = SegmentationInputs(torch.zeros((1, 1, 4, 4)), labels)

    alpha = build_loss("boundary_dou").boundary_alpha(inputs)

    assert alpha[0, 1].item() == pytest.approx(1 - 2 * (4 + 1e-5) / (8 + 1e-5), abs=1e-6)


def test_boundary_dou_absent_class_scores_one():
    labels = torch.zeros((1, 1, 5, 5), dtype=torch.long)
    logits = make_logits((1, 1, 5, 5), dtype=torch.float64).requires_grad_()

    value = build_loss("boundary_dou", include_background=False)(logits, labels)
    value.backward()

    assert value.item() == pytest.approx(1.0, abs=1e-12)
    assert logits.grad.abs().max() < 1e-10


def test_boundary_dou_batch_pools_counts():
    logits, labels = large_square_case()
    empty = torch.zeros_like(labels)
    both_logits = torch.cat([logits, logits])
    both_labels = torch.cat([labels, empty])

    pooled = build_loss("boundary_dou", batch=True, reduction="none")(both_logits, both_labels)
    separate = build_loss("boundary_dou", reduction="none")(both_logits, both_labels)

    assert pooled.shape == (1,)
    assert separate[1].item() == pytest.approx(1.0)
    assert pooled.item() < separate.mean().item()


@pytest.mark.parametrize(("max_alpha", "smooth"), [(1.0, 1e-5), (-1.5, 1e-5), (0.8, 0.0), (0.8, -1.0)])
def test_boundary_dou_rejects_bad_hyperparameters(max_alpha, smooth):
    with pytest.raises(ValueError, match="max_alpha|smooth"):
        build_loss("boundary_dou", max_alpha=max_alpha, smooth=smooth)
