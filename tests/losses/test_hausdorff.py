"""Hausdorff distance losses (Karimi and Salcudean): the three variants, and MONAI's HausdorffDTLoss."""

from __future__ import annotations

import pytest
import torch
from loss_cases import blob_labels, make_logits, perfect_logits
from monai.data import MetaTensor
from monai.losses import HausdorffDTLoss

from scripts.losses import build_loss
from scripts.losses.boundary.hausdorff import ball_kernel
from scripts.losses.extra_inputs import example_extra_inputs
from scripts.transforms import class_distance_maps

ROW_PROBS = torch.tensor([0.2, 0.9, 0.8, 0.1], dtype=torch.float64)
ROW_LABELS = torch.tensor([0, 1, 1, 0]).reshape(1, 1, 1, 4)


def row_inputs() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    distance_map = class_distance_maps(ROW_LABELS, 2, "boundary", batched=True).double()
    return torch.logit(ROW_PROBS).reshape(1, 1, 1, 4), {"boundary_distance_map": distance_map}


def test_hausdorff_dt_row_hand_value():
    # d_q = d_p = 1 0 0 1 (both foreground voxels are boundary voxels); squared errors .04 .01 .04 .01:
    # (0.04 * 2 + 0.01 * 2) / 4 = 0.025.
    logits, extras = row_inputs()

    value = build_loss("hausdorff")(logits, ROW_LABELS, **extras)

    assert value.item() == pytest.approx(0.025, abs=1e-12)


def test_hausdorff_dt_row_differs_from_monai_inside():
    # MONAI's field EDT(fg) + EDT(bg) is 1 everywhere on this row, so it gives (0.04 + 0.01 + 0.04 + 0.01) * 2 / 4.
    logits, extras = row_inputs()

    monai = HausdorffDTLoss(sigmoid=True, include_background=True)(logits, ROW_LABELS.double())

    assert monai.item() == pytest.approx(0.05, abs=1e-12)
    assert build_loss("hausdorff")(logits, ROW_LABELS, **extras).item() == pytest.approx(monai.item() / 2)


@pytest.mark.parametrize("shape", [(2, 2, 12, 10), (2, 2, 8, 10, 6)], ids=["2d", "3d"])
def test_hausdorff_dt_matches_monai_where_errors_lie_outside(shape):
    # Inside the target the prediction is certain (p = 1 exactly in float64), so every error sits outside the
    # object, where MONAI's field and ours are both the distance to the object.
    labels = blob_labels(shape, 2)
    foreground = torch.rand(labels.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.4
    foreground = torch.where(labels > 0, 1.0, foreground)
    logits = torch.log(torch.cat([1 - foreground, foreground], dim=1).clamp_min(1e-300))
    extras = example_extra_inputs("hausdorff", logits, labels)

    ours = build_loss("hausdorff", include_background=False)(logits, labels, **extras)
    monai = HausdorffDTLoss(softmax=True, to_onehot_y=True)(logits, labels)

    torch.testing.assert_close(ours, monai, rtol=1e-6, atol=1e-9)


def test_hausdorff_dt_prediction_map_uses_the_argmax():
    # Predicting the object one voxel to the right moves d_p, so the same errors cost more than at the right place.
    labels = torch.zeros((1, 1, 1, 9), dtype=torch.long)
    labels[..., 3:6] = 1
    shifted = torch.roll(labels, 2, dims=-1)
    extras = example_extra_inputs("hausdorff", torch.zeros(1, 1, 1, 9), labels)
    loss = build_loss("hausdorff")

    right_place = loss(perfect_logits(labels, 1, margin=1.0).double(), labels, **extras)
    wrong_place = loss(perfect_logits(shifted, 1, margin=1.0).double(), labels, **extras)

    assert wrong_place > right_place


def test_hausdorff_dt_spacing_from_meta_tensor():
    logits, extras = row_inputs()
    affine = torch.diag(torch.tensor([1.0, 2.0, 1.0, 1.0]))
    labels = MetaTensor(ROW_LABELS.double(), affine=affine)
    spaced_map = class_distance_maps(labels, 2, "boundary", batched=True)
    spaced_map = MetaTensor(spaced_map.double(), affine=affine)
    loss = build_loss("hausdorff")

    from_meta = loss(logits, ROW_LABELS, boundary_distance_map=spaced_map)
    explicit = build_loss("hausdorff", spacing=(1.0, 2.0))(logits, ROW_LABELS, boundary_distance_map=spaced_map)

    # Every distance doubles along the row, so the alpha = 2 weights grow four-fold.
    assert from_meta.item() == pytest.approx(4 * 0.025, abs=1e-12)
    assert explicit.item() == pytest.approx(from_meta.item(), abs=1e-12)


def test_hausdorff_dt_per_sample_spacing():
    # Random scaling gives the samples of one batch different affines. Each d_p uses its own sample's spacing.
    logits, _ = row_inputs()
    affines = [torch.diag(torch.tensor([1.0, scale, 1.0, 1.0])) for scale in (1.0, 2.0)]
    maps = [
        MetaTensor(class_distance_maps(MetaTensor(ROW_LABELS.double(), affine=affine), 2, "boundary", batched=True))
        for affine in affines
    ]
    batched_map = MetaTensor(torch.cat([m.as_tensor() for m in maps]).double(), affine=torch.stack(affines))
    loss = build_loss("hausdorff", reduction="none")

    values = loss(logits.repeat(2, 1, 1, 1), ROW_LABELS.repeat(2, 1, 1, 1), boundary_distance_map=batched_map)

    torch.testing.assert_close(values, torch.tensor([0.025, 4 * 0.025], dtype=values.dtype), rtol=0, atol=1e-12)


def test_hausdorff_alpha_scales_the_distance_weights():
    logits, extras = row_inputs()

    assert build_loss("hausdorff", alpha=0.0)(logits, ROW_LABELS, **extras).item() == pytest.approx(0.05)
    assert build_loss("hausdorff", alpha=1.0)(logits, ROW_LABELS, **extras).item() == pytest.approx(0.025)


def plus_case() -> tuple[torch.Tensor, torch.Tensor]:
    """A background-only 7 x 7 target with a confident false positive shaped like a plus at its centre."""
    labels = torch.zeros((1, 1, 7, 7), dtype=torch.long)
    logits = torch.full((1, 1, 7, 7), -40.0, dtype=torch.float64)
    logits[..., 3, 2:5] = 40.0
    logits[..., 2:5, 3] = 40.0
    return logits, labels


def test_hausdorff_erosion_plus_hand_value():
    # Errors of 1 on the plus. First erosion: the centre's cross mean is 5/5, the arms' 2/5, so only the centre
    # survives (0.5, normalised to 1). Second erosion: 1/5 < 0.5 clears it. Loss = 1^2 * 1 / 49.
    logits, labels = plus_case()

    value = build_loss("hausdorff", variant="erosion")(logits, labels)

    assert value.item() == pytest.approx(1 / 49, abs=1e-12)


def test_hausdorff_erosion_keeps_errors_at_the_image_border():
    # An error everywhere is never eroded, because the border is not a boundary: sum of k^2 for k = 1..10.
    labels = torch.zeros((1, 1, 3, 3), dtype=torch.long)
    logits = torch.full((1, 1, 3, 3), 40.0, dtype=torch.float64)

    value = build_loss("hausdorff", variant="erosion")(logits, labels)

    assert value.item() == pytest.approx(385.0, rel=1e-12)


def test_hausdorff_erosion_count_and_alpha():
    labels = torch.zeros((1, 1, 3, 3), dtype=torch.long)
    logits = torch.full((1, 1, 3, 3), 40.0, dtype=torch.float64)

    value = build_loss("hausdorff", variant="erosion", erosions=3, alpha=1.0)(logits, labels)

    assert value.item() == pytest.approx(1 + 2 + 3, rel=1e-12)


def test_hausdorff_convolution_far_errors_cost_more():
    # A false positive far from the object costs more than one next to it.
    labels = torch.zeros((1, 1, 1, 21), dtype=torch.long)
    labels[..., 2:5] = 1
    near = perfect_logits(labels, 1, margin=4.0).double()
    near[..., 5] = 4.0
    far = perfect_logits(labels, 1, margin=4.0).double()
    far[..., 18] = 4.0
    loss = build_loss("hausdorff", variant="convolution")

    assert loss(far, labels) > loss(near, labels)


def test_hausdorff_convolution_perfect_prediction_is_near_zero():
    shape = (1, 3, 10, 9, 8)
    labels = blob_labels(shape, 3)

    value = build_loss("hausdorff", variant="convolution")(perfect_logits(labels, 3, margin=20.0), labels)

    assert value.item() < 1e-6


def test_ball_kernel_counts_voxels_within_the_radius():
    assert ball_kernel(1.0, (1.0, 1.0, 1.0)).sum() == 7
    assert ball_kernel(1.5, (1.0, 1.0)).sum() == 9
    assert ball_kernel(2.0, (2.0, 1.0)).shape == (3, 5)


@pytest.mark.parametrize("variant", ["erosion", "convolution"])
@pytest.mark.parametrize("shape", [(2, 3, 12, 10), (2, 3, 8, 10, 6)], ids=["2d", "3d"])
def test_hausdorff_variant_ignore_equals_crop(variant, shape):
    labels = blob_labels(shape, 3)
    logits = make_logits(shape, scale=4.0)
    ignored = labels.clone()
    ignored[..., -3:] = 255
    loss = build_loss("hausdorff", variant=variant, ignore_index=255)

    with_ignore = loss(logits, ignored)
    cropped = build_loss("hausdorff", variant=variant)(logits[..., :-3], labels[..., :-3])

    torch.testing.assert_close(with_ignore, cropped, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("variant", ["erosion", "convolution"])
def test_hausdorff_variant_gradient_matches_finite_differences(variant):
    shape = (1, 2, 5, 6)
    labels = blob_labels(shape, 2)
    logits = make_logits(shape, scale=3.0, dtype=torch.float64).requires_grad_()
    loss = build_loss("hausdorff", variant=variant, radii=(1.0, 2.0))

    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("variant", ["erosion", "convolution"])
@pytest.mark.parametrize("margin", [1e4, -1e4])
def test_hausdorff_variant_extremes_stay_finite(variant, margin):
    shape = (2, 3, 8, 10, 6)
    labels = blob_labels(shape, 3)
    logits = perfect_logits(labels, 3, margin=margin).requires_grad_()

    value = build_loss("hausdorff", variant=variant)(logits, labels)
    value.backward()

    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()


def test_hausdorff_variants_need_no_map():
    assert build_loss("hausdorff").extra_inputs == ("boundary_distance_map",)
    assert build_loss("hausdorff", variant="erosion").extra_inputs == ()
    assert build_loss("hausdorff", variant="convolution").extra_inputs == ()


def test_hausdorff_variant_rejects_unread_map():
    logits, extras = row_inputs()

    with pytest.raises(ValueError, match="unexpected extra inputs"):
        build_loss("hausdorff", variant="erosion")(logits, ROW_LABELS, **extras)


@pytest.mark.parametrize(
    "options",
    [
        {"variant": "chamfer"},
        {"alpha": -1.0},
        {"alpha": float("nan")},
        {"alpha": "2"},
        {"erosions": 0},
        {"erosions": 2.5},
        {"radii": ()},
        {"radii": (2.0, -1.0)},
        {"radii": 3},
        {"spacing": (1.0, 0.0)},
    ],
)
def test_hausdorff_rejects_bad_hyperparameters(options):
    with pytest.raises(ValueError, match="|".join(options)):
        build_loss("hausdorff", **options)


def test_hausdorff_spacing_of_the_wrong_length_raises():
    logits, extras = row_inputs()

    with pytest.raises(ValueError, match="spacing"):
        build_loss("hausdorff", spacing=(1.0, 1.0, 1.0))(logits, ROW_LABELS, **extras)


def test_hausdorff_rejects_a_signed_map():
    labels = torch.tensor([0, 1, 1, 1, 0]).reshape(1, 1, 1, 5)
    signed_map = class_distance_maps(labels, 2, "signed", batched=True)

    with pytest.raises(ValueError, match=r"values from -1 to 2, outside its range \[0.0, inf\].*kind='boundary'"):
        build_loss("hausdorff")(torch.zeros(1, 1, 1, 5), labels, boundary_distance_map=signed_map)
