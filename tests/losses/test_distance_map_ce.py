"""Distance-map-derived cross-entropy (Caliva et al.) against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import ROW_PROBS, blob_labels, make_logits, row_case

from scripts.losses import build_loss
from scripts.losses.extra_inputs import example_extra_inputs
from scripts.transforms import class_distance_maps

# -log of the target class's probability: 1 - p on the two background voxels, p on the foreground.
ROW_CE = [
    -math.log(0.8),
    -math.log(0.9),
    -math.log(0.8),
    -math.log(0.9),
    -math.log(0.7),
    -math.log(0.6),
    -math.log(0.9),
]
# Phi of the target class: 2/3 1/3 0 1/3 2/3 on the foreground, 0 on the one-voxel-deep background.
ROW_PHI = [0.0, 2 / 3, 1 / 3, 0.0, 1 / 3, 2 / 3, 0.0]


def test_distance_map_ce_row_map_matches_reference():
    _, _, inverted_map = row_case("inverted", 2)

    torch.testing.assert_close(inverted_map[0, 1, 0], torch.tensor([0, 2 / 3, 1 / 3, 0, 1 / 3, 2 / 3, 0]).double())
    assert (inverted_map[0, 0] == 0).all()


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_distance_map_ce_row_hand_value(spatial_dims):
    logits, labels, inverted_map = row_case("inverted", spatial_dims)
    expected = sum((1 + phi) * ce for phi, ce in zip(ROW_PHI, ROW_CE)) / 7

    value = build_loss("distance_map_ce")(logits, labels, inverted_distance_map=inverted_map)

    assert value.item() == pytest.approx(expected, abs=1e-7)


def test_distance_map_ce_softmax_equals_sigmoid_form():
    logits, labels, inverted_map = row_case("inverted", 2)
    two_class = torch.log(torch.stack([1 - ROW_PROBS, ROW_PROBS])).reshape(1, 2, 1, 7)
    loss = build_loss("distance_map_ce")

    sigmoid = loss(logits, labels, inverted_distance_map=inverted_map)
    softmax = loss(two_class, labels, inverted_distance_map=inverted_map)

    torch.testing.assert_close(softmax, sigmoid)


def test_distance_map_ce_zero_map_is_cross_entropy():
    shape = (2, 3, 6, 7, 5)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    zero_map = torch.zeros(shape)

    value = build_loss("distance_map_ce")(logits, labels, inverted_distance_map=zero_map)

    torch.testing.assert_close(value, build_loss("cross_entropy")(logits, labels))


def test_distance_map_ce_weighs_boundary_errors_more():
    # One wrong voxel next to the boundary costs more than the same error at the deepest voxel.
    logits, labels, inverted_map = row_case("inverted", 2)
    near_boundary = logits.clone()
    near_boundary[..., 1] = -2.0
    at_centre = logits.clone()
    at_centre[..., 3] = -2.0
    loss = build_loss("distance_map_ce")

    assert loss(near_boundary, labels, inverted_distance_map=inverted_map) > loss(
        at_centre, labels, inverted_distance_map=inverted_map
    )


def test_distance_map_ce_class_weights_and_background():
    logits, labels, inverted_map = row_case("inverted", 2)
    foreground = sum((1 + phi) * ce for phi, ce in zip(ROW_PHI[1:6], ROW_CE[1:6])) / 5
    background = (ROW_CE[0] + ROW_CE[6]) / 2

    foreground_only = build_loss("distance_map_ce", include_background=False)
    weighted = build_loss("distance_map_ce", class_weights=[3.0, 1.0])

    assert foreground_only(logits, labels, inverted_distance_map=inverted_map).item() == pytest.approx(foreground)
    assert weighted(logits, labels, inverted_distance_map=inverted_map).item() == pytest.approx(
        (3 * 2 * background + 5 * foreground) / (3 * 2 + 5)
    )


def test_distance_map_ce_missing_map_names_the_transform():
    logits, labels, _ = row_case("inverted", 2)

    with pytest.raises(ValueError, match=r"'inverted_distance_map'.*kind='inverted'"):
        build_loss("distance_map_ce")(logits, labels)


def test_distance_map_ce_example_inputs_match_the_transform():
    shape = (2, 3, 6, 7, 5)
    labels = blob_labels(shape, 3)

    extras = example_extra_inputs("distance_map_ce", make_logits(shape), labels)

    torch.testing.assert_close(extras["inverted_distance_map"][1], class_distance_maps(labels[1], 3, "inverted"))
