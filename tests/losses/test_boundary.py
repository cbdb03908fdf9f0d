"""Boundary loss (Kervadec et al.) against hand-derived values and MONAI's BoundaryLoss."""

from __future__ import annotations

import pytest
import torch
from loss_cases import ROW_PROBS, blob_labels, make_logits, row_case
from monai.losses import BoundaryLoss as MonaiBoundaryLoss

from scripts.losses import build_loss
from scripts.losses.extra_inputs import example_extra_inputs
from scripts.transforms import class_distance_maps


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_boundary_row_hand_value(spatial_dims):
    # phi = 1 0 -1 -2 -1 0 1 on the foreground: (0.2 - 0.8 - 1.8 - 0.7 + 0.1) / 7 = -3 / 7.
    logits, labels, signed_map = row_case("signed", spatial_dims)

    value = build_loss("boundary")(logits, labels, signed_distance_map=signed_map)

    assert value.item() == pytest.approx(-0.428571, abs=1e-6)
    assert value.item() == pytest.approx(-3 / 7, abs=1e-12)


def test_boundary_two_class_softmax_hand_value():
    # The background's two voxels are its own inner boundary, so its phi is 0 1 2 3 2 1 0; against the
    # probabilities 1 - p = .8 .1 .2 .1 .3 .4 .9 that gives (0.1 + 0.4 + 0.3 + 0.6 + 0.4) / 7 = 1.8 / 7.
    _, labels, signed_map = row_case("signed", 2)
    logits = torch.log(torch.stack([1 - ROW_PROBS, ROW_PROBS])).reshape(1, 2, 1, 7)

    both = build_loss("boundary")(logits, labels, signed_distance_map=signed_map)
    foreground = build_loss("boundary", include_background=False)(logits, labels, signed_distance_map=signed_map)

    assert foreground.item() == pytest.approx(-3 / 7, abs=1e-12)
    assert both.item() == pytest.approx((-3 / 7 + 1.8 / 7) / 2, abs=1e-12)


def test_boundary_is_negative_at_perfect_fit():
    _, labels, signed_map = row_case("signed", 2)
    logits = 20.0 * (2.0 * labels.double() - 1.0)

    value = build_loss("boundary")(logits, labels, signed_distance_map=signed_map)

    # Interior voxels -1, -2, -1 at probability ~1; the boundary voxels add 0 and the outside ones ~0.
    assert value.item() == pytest.approx(-4 / 7, abs=1e-6)


def test_boundary_absent_class_has_no_false_positive_penalty():
    shape = (1, 3, 6, 7)
    labels = blob_labels(shape, 3)
    labels[labels == 2] = 0
    extras = example_extra_inputs("boundary", make_logits(shape), labels)
    logits = make_logits(shape)
    more_class_2 = logits.clone()
    more_class_2[:, 2] += 3.0
    loss = build_loss("boundary", include_background=False, class_weights=[0.0, 0.0, 1.0])

    assert (extras["signed_distance_map"][:, 2] == 0).all()
    assert loss(more_class_2, labels, **extras).item() == 0.0
    assert loss(logits, labels, **extras).item() == 0.0


def slab_labels(shape: tuple[int, ...]) -> torch.Tensor:
    """Labels 0, 1, 2 in slabs across the last axis, so no class has a concave corner."""
    labels = torch.zeros((shape[0], 1, *shape[2:]), dtype=torch.long)
    labels[..., 3:6] = 1
    labels[..., 6:] = 2
    return labels


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 12, 10), (2, 3, 8, 10, 9)], ids=["2d", "3d"])
def test_boundary_matches_monai_without_concave_corners(shape, include_background, batch):
    # MONAI's -(EDT - 1) inside equals the distance to the inner boundary unless a class has a concave corner.
    labels = slab_labels(shape)
    logits = make_logits(shape)
    extras = example_extra_inputs("boundary", logits, labels)
    options = {"include_background": include_background, "batch": batch}

    ours = build_loss("boundary", **options)(logits, labels, **extras)
    monai = MonaiBoundaryLoss(softmax=True, to_onehot_y=True, **options)(logits, labels)

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 12, 10), (2, 3, 8, 10, 6)], ids=["2d", "3d"])
def test_boundary_matches_monai_on_foreground_boxes(shape):
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs("boundary", logits, labels)

    ours = build_loss("boundary", include_background=False)(logits, labels, **extras)
    monai = MonaiBoundaryLoss(softmax=True, to_onehot_y=True, include_background=False)(logits, labels)

    torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-6)


def test_boundary_differs_from_monai_behind_concave_corners():
    # The background around a box has concave corners, where MONAI's map is -(sqrt(2) - 1) and ours -1.
    shape = (1, 3, 12, 10)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs("boundary", logits, labels)

    ours = build_loss("boundary")(logits, labels, **extras)
    monai = MonaiBoundaryLoss(softmax=True, to_onehot_y=True)(logits, labels)

    assert abs(ours.item() - monai.item()) > 1e-3


def test_boundary_uses_the_spacing_of_the_map():
    _, labels, _ = row_case("signed", 2)
    logits = torch.logit(ROW_PROBS).reshape(1, 1, 1, 7)
    signed_map = class_distance_maps(labels, 2, "signed", spacing=(1.0, 2.0), batched=True).double()

    value = build_loss("boundary")(logits, labels, signed_distance_map=signed_map)

    assert value.item() == pytest.approx(2 * -3 / 7, abs=1e-12)


def test_boundary_missing_map_names_the_transform():
    _, labels, _ = row_case("signed", 2)
    logits = torch.logit(ROW_PROBS).reshape(1, 1, 1, 7)

    with pytest.raises(ValueError, match=r"needs the extra input 'signed_distance_map'.*kind='signed'"):
        build_loss("boundary")(logits, labels)


def test_boundary_unexpected_input_name_lists_the_expected_one():
    logits, labels, signed_map = row_case("signed", 2)

    with pytest.raises(ValueError, match=r"unexpected extra inputs \['distance_map'\].*signed_distance_map"):
        build_loss("boundary")(logits, labels, distance_map=signed_map)


def test_boundary_wrong_map_shape_names_both_shapes():
    logits, labels, signed_map = row_case("signed", 2)

    with pytest.raises(ValueError, match=r"shape \(1, 1, 1, 7\), expected \(1, 2, 1, 7\)"):
        build_loss("boundary")(logits, labels, signed_distance_map=signed_map[:, 1:])


def test_boundary_non_finite_map_raises():
    logits, labels, signed_map = row_case("signed", 2)
    signed_map[0, 1, 0, 3] = float("nan")

    with pytest.raises(ValueError, match="'signed_distance_map' contains NaN or inf"):
        build_loss("boundary")(logits, labels, signed_distance_map=signed_map)


def test_boundary_map_must_be_a_tensor():
    logits, labels, signed_map = row_case("signed", 2)

    with pytest.raises(ValueError, match="must be a torch.Tensor, got list"):
        build_loss("boundary")(logits, labels, signed_distance_map=signed_map.tolist())
