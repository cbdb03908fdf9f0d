"""The weighted_sum combination: member values, extra inputs, weights and errors."""

from __future__ import annotations

import pytest
import torch
from loss_cases import blob_labels, make_logits

from scripts.losses import build_loss, describe_loss
from scripts.losses.extra_inputs import example_extra_inputs

SHAPE = (2, 3, 8, 10, 6)
KERVADEC = {"generalized_dice": {"weight": 1.0}, "boundary": {"weight": 0.01, "include_background": False}}


def case() -> tuple[torch.Tensor, torch.Tensor]:
    return make_logits(SHAPE), blob_labels(SHAPE, 3)


def test_weighted_sum_equals_weighted_members():
    logits, labels = case()
    extras = example_extra_inputs("boundary", logits, labels)
    region = build_loss("generalized_dice")(logits, labels)
    boundary = build_loss("boundary", include_background=False)(logits, labels, **extras)

    value = build_loss("weighted_sum", losses=KERVADEC)(logits, labels, **extras)

    torch.testing.assert_close(value, region + 0.01 * boundary)


def test_weighted_sum_list_and_number_forms():
    logits, labels = case()
    expected = build_loss("cross_entropy")(logits, labels) + 2.0 * build_loss("dice")(logits, labels)

    as_list = build_loss("weighted_sum", losses=[{"name": "cross_entropy"}, {"name": "dice", "weight": 2.0}])
    as_numbers = build_loss("weighted_sum", losses={"cross_entropy": 1.0, "dice": 2.0})

    torch.testing.assert_close(as_list(logits, labels), expected)
    torch.testing.assert_close(as_numbers(logits, labels), expected)


def test_weighted_sum_members_inherit_shared_options():
    loss = build_loss("weighted_sum", include_background=False, ignore_index=255, losses=KERVADEC)

    assert loss.members["generalized_dice"].include_background is False
    assert loss.members["generalized_dice"].ignore_index == 255
    assert loss.members["boundary"].reduction == "none"


def test_weighted_sum_extra_inputs_are_the_members_union():
    loss = build_loss("weighted_sum", losses={"boundary": 1.0, "region_wise": 1.0, "dice": 1.0})

    assert loss.extra_inputs == ("signed_distance_map", "region_wise_map")


def test_weighted_sum_forwards_each_member_its_inputs():
    logits, labels = case()
    loss = build_loss("weighted_sum", losses={"boundary": 1.0, "region_wise": 1.0})
    extras = example_extra_inputs(loss, logits, labels)
    expected = build_loss("boundary")(logits, labels, signed_distance_map=extras["signed_distance_map"]) + build_loss(
        "region_wise"
    )(logits, labels, region_wise_map=extras["region_wise_map"])

    torch.testing.assert_close(loss(logits, labels, **extras), expected)


def test_weighted_sum_missing_input_names_member_and_key():
    logits, labels = case()

    with pytest.raises(ValueError, match="BoundaryLoss needs the extra input 'signed_distance_map'"):
        build_loss("weighted_sum", losses=KERVADEC)(logits, labels)


def test_weighted_sum_set_weight_changes_the_value():
    logits, labels = case()
    loss = build_loss("weighted_sum", losses={"cross_entropy": 1.0, "dice": 1.0})
    dice = build_loss("dice")(logits, labels)

    loss.set_weight("cross_entropy", 0.0)

    assert loss.current_weights == {"cross_entropy": 0.0, "dice": 1.0}
    torch.testing.assert_close(loss(logits, labels), dice)
    torch.testing.assert_close(loss.last_member_losses["dice"], dice)


def test_weighted_sum_description_lists_member_weights():
    description = describe_loss(build_loss("weighted_sum", losses=KERVADEC))

    assert description["loss.losses.boundary.weight"] == 0.01
    assert description["loss.losses.boundary.include_background"] is False


def test_weighted_sum_description_member_defaults():
    loss = build_loss("weighted_sum", losses={"dice": 1.0, "hausdorff": {"weight": 0.1}}, include_background=False)
    loss.set_weight("hausdorff", 0.5)

    description = describe_loss(loss)

    assert description["loss.losses.dice.squared_pred"] is True
    assert description["loss.losses.dice.include_background"] is False
    assert description["loss.losses.hausdorff.variant"] == "dt"
    assert description["loss.losses.hausdorff.alpha"] == 2.0
    assert description["loss.losses.hausdorff.weight"] == 0.1
    assert "loss.losses.dice.reduction" not in description


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        (None, "needs its member losses"),
        ({}, "needs its member losses"),
        ({"dise": 1.0}, "unknown loss 'dise'"),
        ({"dice": {"gamma": 2.0}}, "no hyperparameter 'gamma'"),
        ({"dice": -1.0}, "weight of 'dice' must be a finite non-negative number"),
        ({"dice": float("inf")}, "weight of 'dice'"),
        ([{"name": "dice"}, {"name": "dice"}], "appears twice"),
        ([{"weight": 1.0}], "needs a 'name'"),
        ({"dice": {"reduction": "sum"}}, "sets reduction='sum'"),
        ({"dice": {"batch": True}}, "sets batch=True"),
        ("dice", "must be a mapping or a list"),
    ],
)
def test_weighted_sum_rejects_bad_members(losses, message):
    with pytest.raises(ValueError, match=message):
        build_loss("weighted_sum", losses=losses)


def test_weighted_sum_set_weight_rejects_bad_input():
    loss = build_loss("weighted_sum", losses={"dice": 1.0})

    with pytest.raises(ValueError, match="'boundary' is not a member"):
        loss.set_weight("boundary", 1.0)
    with pytest.raises(ValueError, match="finite non-negative"):
        loss.set_weight("dice", float("nan"))


def test_weighted_sum_member_class_weights_length():
    logits, labels = case()
    loss = build_loss("weighted_sum", losses={"dice": {"class_weights": [1.0, 1.0]}})

    with pytest.raises(ValueError, match="member 'dice' has 2 class_weights"):
        loss(logits, labels)


def test_weighted_sum_unknown_option_points_to_members():
    with pytest.raises(ValueError, match="has no hyperparameter 'alpha'") as raised:
        build_loss("weighted_sum", losses={"hausdorff": {"weight": 1.0}, "dice": {"weight": 1.0}}, alpha=3)

    assert "--loss#losses#hausdorff#alpha, --loss#losses#dice#alpha." in str(raised.value)


def test_other_loss_unknown_option_lists_its_options():
    with pytest.raises(ValueError, match="loss 'dice' has no hyperparameter 'gamma'; it takes: ") as raised:
        build_loss("dice", gamma=2)

    assert "losses#" not in str(raised.value)
