"""Boundary-aware loss (Hayder et al.): hand-derived values, bin balancing, options and input checks."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import blob_labels, make_logits
from real_data import first_label

from scripts.losses import build_loss
from scripts.losses.boundary.boundary_aware import example_extra_inputs
from scripts.transforms.boundary import distance_bins

LN2 = math.log(2.0)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def hand_case(batch: int = 1):
    """A 1 x 4 image, labels 0 0 1 1, zero logits, K = 2 bins.

    Head channels: (class 0, bin 0), (class 0, bin 1), (class 1, bin 0), (class 1, bin 1). Class 0 scores bin 1
    with a = 2 0 -1 1 against 0 for bin 0; class 1 scores both bins 0.
    """
    logits = torch.zeros(batch, 2, 1, 4)
    labels = torch.tensor([0, 0, 1, 1]).view(1, 1, 1, 4).repeat(batch, 1, 1, 1)
    head = torch.zeros(batch, 4, 1, 4)
    head[:, 1, 0] = torch.tensor([2.0, 0.0, -1.0, 1.0])
    bins = torch.zeros(batch, 2, 1, 4)
    bins[0, 0, 0] = torch.tensor([1.0, 0, 0, 0])
    bins[:, 1, 0] = torch.tensor([0.0, 0, 1, 1])
    return logits, labels, head, bins


# Class 0: bin 1 contains v0 with CE softplus(-2) = 0.126928; bin 0 contains v1..v3 with CE softplus(a):
# softplus(0) + softplus(-1) + softplus(1) = 0.693147 + 0.313262 + 1.313262 = 2.319671, mean 0.773224.
# Balanced over the two bins: (0.126928 + 0.773224) / 2 = 0.450076. Class 1: every CE is ln 2 = 0.693147.
CLASS_0 = (softplus(-2.0) + (softplus(0.0) + softplus(-1.0) + softplus(1.0)) / 3) / 2
CLASS_1 = LN2


def test_boundary_aware_hand_value_2d():
    logits, labels, head, bins = hand_case()
    loss = build_loss("boundary_aware", num_bins=2)

    value = loss(logits, labels, distance_bin_logits=head, distance_bins=bins)

    # CE of zero logits is ln 2; depth term (0.450076 + 0.693147) / 2 = 0.571611; total 1.264758.
    assert CLASS_0 == pytest.approx(0.450076, abs=1e-6)
    torch.testing.assert_close(value, torch.tensor(LN2 + (CLASS_0 + CLASS_1) / 2))
    assert value.item() == pytest.approx(1.264758, abs=1e-6)


def test_boundary_aware_hand_value_3d():
    logits, labels, head, bins = hand_case()
    loss = build_loss("boundary_aware", num_bins=2)

    value = loss(
        logits[:, :, None], labels[:, :, None], distance_bin_logits=head[:, :, None], distance_bins=bins[:, :, None]
    )

    assert value.item() == pytest.approx(1.264758, abs=1e-6)


def test_boundary_aware_bins_are_balanced():
    logits, labels, head, bins = hand_case()
    loss = build_loss("boundary_aware", num_bins=2, cross_entropy_weight=0.0)

    value = loss(logits, labels, distance_bin_logits=head, distance_bins=bins)

    # An unweighted voxel mean of class 0 would be (0.126928 + 2.319671) / 4 = 0.611650, not 0.450076.
    unbalanced = (softplus(-2.0) + softplus(0.0) + softplus(-1.0) + softplus(1.0)) / 4
    assert value.item() == pytest.approx((CLASS_0 + CLASS_1) / 2, abs=1e-6)
    assert value.item() != pytest.approx((unbalanced + CLASS_1) / 2, abs=1e-3)


def test_boundary_aware_without_background():
    logits, labels, head, bins = hand_case()
    loss = build_loss("boundary_aware", num_bins=2, include_background=False)

    # Depth term of class 1 alone (ln 2) plus the CE over the class-1 voxels (ln 2).
    assert loss(logits, labels, distance_bin_logits=head, distance_bins=bins).item() == pytest.approx(2 * LN2)


def test_boundary_aware_class_weights():
    logits, labels, head, bins = hand_case()
    loss = build_loss("boundary_aware", num_bins=2, class_weights=[3.0, 1.0])

    # Depth term (3 * 0.450076 + 0.693147) / 4 = 0.510844; every voxel CE is ln 2 whatever its weight.
    expected = LN2 + (3 * CLASS_0 + CLASS_1) / 4
    assert loss(logits, labels, distance_bin_logits=head, distance_bins=bins).item() == pytest.approx(expected)


def test_boundary_aware_term_weights():
    logits, labels, head, bins = hand_case()
    extras = {"distance_bin_logits": head, "distance_bins": bins}

    only_ce = build_loss("boundary_aware", num_bins=2, boundary_weight=0.0)(logits, labels, **extras)
    scaled = build_loss("boundary_aware", num_bins=2, cross_entropy_weight=0.5, boundary_weight=2.0)(
        logits, labels, **extras
    )
    cross_entropy = build_loss("cross_entropy")(logits, labels)

    torch.testing.assert_close(only_ce, cross_entropy)
    assert scaled.item() == pytest.approx(0.5 * LN2 + 2.0 * (CLASS_0 + CLASS_1) / 2)


def test_boundary_aware_batch_pools_bins():
    logits, labels, head, bins = hand_case(batch=2)
    extras = {"distance_bin_logits": head, "distance_bins": bins}
    # Sample 2 has every class-0 voxel in bin 0, including v0 with CE softplus(2) = 2.126928.
    sample_2_bin_0 = softplus(2.0) + softplus(0.0) + softplus(-1.0) + softplus(1.0)

    per_sample = build_loss("boundary_aware", num_bins=2, reduction="none")(logits, labels, **extras)
    pooled = build_loss("boundary_aware", num_bins=2, batch=True)(logits, labels, **extras)

    # Per sample: sample 2's class 0 has one bin, mean 4.446599 / 4 = 1.111650.
    assert per_sample[0].item() == pytest.approx(LN2 + (CLASS_0 + CLASS_1) / 2)
    assert per_sample[1].item() == pytest.approx(LN2 + (sample_2_bin_0 / 4 + CLASS_1) / 2)
    # Pooled: bin 1 contains sample 1's v0 only; bin 0 the other 7 voxels, (2.319671 + 4.446599) / 7 = 0.966610.
    pooled_class_0 = (softplus(-2.0) + (softplus(0.0) + softplus(-1.0) + softplus(1.0) + sample_2_bin_0) / 7) / 2
    assert pooled.shape == ()
    assert pooled.item() == pytest.approx(LN2 + (pooled_class_0 + CLASS_1) / 2)


def test_boundary_aware_perfect_head_is_smaller():
    shape = (2, 3, 10, 12, 8)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)
    perfect_head = 20.0 * torch.nn.functional.one_hot(extras["distance_bins"].long(), 6).movedim(-1, 2).flatten(1, 2)
    loss = build_loss("boundary_aware", cross_entropy_weight=0.0)

    noisy = loss(logits, labels, **extras)
    perfect = loss(logits, labels, distance_bin_logits=perfect_head.float(), distance_bins=extras["distance_bins"])

    assert perfect.item() < 1e-6
    assert noisy.item() > 0.1


def test_boundary_aware_head_receives_gradient():
    shape = (2, 3, 10, 12, 8)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape).requires_grad_()
    extras = example_extra_inputs(logits, labels)

    build_loss("boundary_aware")(logits, labels, **extras).backward()

    assert extras["distance_bin_logits"].grad is not None
    assert torch.isfinite(extras["distance_bin_logits"].grad).all()
    assert extras["distance_bin_logits"].grad.abs().sum() > 0


def test_boundary_aware_ignore_equals_crop_with_same_maps():
    shape = (2, 3, 10, 12, 8)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)
    ignored = labels.clone()
    ignored[..., -3:] = 255

    with_ignore = build_loss("boundary_aware", ignore_index=255)(logits, ignored, **extras)
    cropped = build_loss("boundary_aware")(
        logits[..., :-3], labels[..., :-3], **{key: value[..., :-3] for key, value in extras.items()}
    )

    torch.testing.assert_close(with_ignore, cropped)


def test_boundary_aware_binary_single_channel():
    shape = (2, 1, 10, 12, 8)
    labels = blob_labels((2, 2, 10, 12, 8), 2)
    logits = make_logits(shape).requires_grad_()
    extras = example_extra_inputs(logits, labels, num_bins=4, max_distance=3)

    value = build_loss("boundary_aware", num_bins=4)(logits, labels, **extras)
    value.backward()

    assert extras["distance_bin_logits"].shape == (2, 4, 10, 12, 8)
    assert torch.isfinite(value)
    assert logits.grad.abs().sum() > 0


def test_boundary_aware_on_real_label(dataset_dir):
    labels = first_label(dataset_dir)
    logits = make_logits((1, 3, *labels.shape[2:])).requires_grad_()
    bins = distance_bins(labels[0], num_classes=3).unsqueeze(0)
    head = torch.zeros(1, 18, *labels.shape[2:], requires_grad=True)

    value = build_loss("boundary_aware")(logits, labels, distance_bin_logits=head, distance_bins=bins)
    value.backward()

    # Zero head logits: every bin's CE is ln 6, so the depth term is ln 6 whatever the balancing.
    cross_entropy = build_loss("cross_entropy")(logits.detach(), labels)
    assert value.item() == pytest.approx(cross_entropy.item() + math.log(6.0), rel=1e-5)
    assert head.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_bins": 1}, "num_bins must be an integer of at least 2, got 1"),
        ({"num_bins": 2.0}, "num_bins"),
        ({"boundary_weight": -1.0}, "boundary_weight must be a non-negative number, got -1.0"),
        ({"cross_entropy_weight": float("nan")}, "cross_entropy_weight"),
    ],
)
def test_boundary_aware_invalid_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("boundary_aware", **options)


def test_boundary_aware_bad_extra_inputs_raise():
    logits, labels, head, bins = hand_case()
    loss = build_loss("boundary_aware", num_bins=2)

    with pytest.raises(ValueError, match=r"distance_bin_logits has shape \(1, 6, 1, 4\).*\(1, 4, 1, 4\)"):
        loss(logits, labels, distance_bin_logits=torch.zeros(1, 6, 1, 4), distance_bins=bins)
    with pytest.raises(ValueError, match="distance_bins contains 2, outside 0 to 1"):
        loss(logits, labels, distance_bin_logits=head, distance_bins=bins + 1)
    with pytest.raises(ValueError, match="distance_bins must hold integer indices, got 1.5"):
        loss(logits, labels, distance_bin_logits=head, distance_bins=bins + 0.5)
    nan_head = head.clone()
    nan_head[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="distance_bin_logits contains 1 non-finite value "):
        loss(logits, labels, distance_bin_logits=nan_head, distance_bins=bins)
    with pytest.raises(ValueError, match="needs the extra input 'distance_bins'"):
        loss(logits, labels, distance_bin_logits=head)
