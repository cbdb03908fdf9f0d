"""Region-wise loss with rectified region-wise maps (Valverde and Tohka) against hand-derived values."""

from __future__ import annotations

import pytest
import torch
from loss_cases import ROW_PROBS, blob_labels, make_logits, row_case

from scripts.losses import build_loss
from scripts.losses.extra_inputs import example_extra_inputs
from scripts.transforms import class_distance_maps


def test_region_wise_row_map_matches_valverde():
    _, _, region_map = row_case("region_wise", 2)

    torch.testing.assert_close(
        region_map[0, 1, 0], torch.tensor([1, -1 / 3, -2 / 3, -1, -2 / 3, -1 / 3, 1], dtype=torch.float64)
    )
    # The background's two voxels are each one voxel deep: -1 at both, +1 on the foreground.
    torch.testing.assert_close(region_map[0, 0, 0], torch.tensor([-1, 1, 1, 1, 1, 1, -1], dtype=torch.float64))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_region_wise_row_hand_value(spatial_dims):
    # (0.2 - 0.9/3 - 1.6/3 - 0.9 - 1.4/3 - 0.6/3 + 0.1) / 7 = (0.3 - 2.4) / 7 = -0.3.
    logits, labels, region_map = row_case("region_wise", spatial_dims)

    value = build_loss("region_wise")(logits, labels, region_wise_map=region_map)

    assert value.item() == pytest.approx(-0.3, abs=1e-7)


def test_region_wise_two_class_softmax_hand_value():
    # Background: (-0.8 + 0.1 + 0.2 + 0.1 + 0.3 + 0.4 - 0.9) / 7 = -0.6 / 7.
    _, labels, region_map = row_case("region_wise", 2)
    logits = torch.log(torch.stack([1 - ROW_PROBS, ROW_PROBS])).reshape(1, 2, 1, 7)

    value = build_loss("region_wise")(logits, labels, region_wise_map=region_map)

    assert value.item() == pytest.approx((-0.3 - 0.6 / 7) / 2, abs=1e-7)


def test_region_wise_penalises_an_absent_class():
    shape = (1, 3, 6, 7)
    labels = blob_labels(shape, 3)
    labels[labels == 2] = 0
    logits = make_logits(shape)
    extras = example_extra_inputs("region_wise", logits, labels)
    more_class_2 = logits.clone()
    more_class_2[:, 2] += 3.0
    loss = build_loss("region_wise", class_weights=[0.0, 0.0, 1.0])

    assert (extras["region_wise_map"][:, 2] == 1).all()
    # With a map of +1 everywhere the loss is the mean probability of the absent class.
    assert loss(logits, labels, **extras).item() == pytest.approx(torch.softmax(logits, 1)[:, 2].mean().item())
    assert loss(more_class_2, labels, **extras) > loss(logits, labels, **extras)


def test_region_wise_full_class_is_minus_one():
    labels = torch.ones((1, 1, 4, 5), dtype=torch.long)
    region_map = class_distance_maps(labels, 2, "region_wise", batched=True)

    assert (region_map[:, 1] == -1).all()
    assert (region_map[:, 0] == 1).all()


def test_region_wise_missing_map_names_the_transform():
    logits, labels, _ = row_case("region_wise", 3)

    with pytest.raises(ValueError, match=r"'region_wise_map'.*kind='region_wise'.*loss_input_keys"):
        build_loss("region_wise")(logits, labels)
