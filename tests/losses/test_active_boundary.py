"""Active boundary loss (Wang et al.): hand-derived value, threshold rule, empty cases, options and input checks."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import blob_labels, make_logits, perfect_logits
from real_data import first_label

from scripts.losses import build_loss, registry
from scripts.losses.base import SegmentationInputs
from scripts.losses.boundary.active_boundary import _threshold_for_budget, example_extra_inputs
from scripts.transforms.boundary import label_boundary_distance


def step_case():
    """A 1 x 6 image, labels 0 0 0 1 1 1, and logits whose class change sits one voxel too far right.

    Class-1 logits are -4 -4 -4 -4 4 4 against 0 for class 0, so the prediction changes between voxels 3 and 4 while
    the ground truth changes between 2 and 3.
    """
    class_1 = torch.tensor([-4.0, -4, -4, -4, 4, 4])
    logits = torch.stack([torch.zeros(6), class_1]).view(1, 2, 1, 6)
    labels = torch.tensor([0, 0, 0, 1, 1, 1]).view(1, 1, 1, 6)
    distance = label_boundary_distance(labels[:, 0], spatial_dims=2).unsqueeze(1)
    return logits, labels, distance


def step_case_value(label_smoothing: float = 0.2, theta: float = 20.0) -> float:
    """The hand derivation of the step case's ABL term.

    Ground-truth boundary: voxels 2 and 3, so M = 2 1 0 0 1 2. With max_boundary_ratio 0.2 the budget is
    floor(0.2 * 6) = 1 voxel: the only non-zero KL to the next voxel is at voxel 3, which passes; the 3x3 dilation
    gives voxels 2, 3 and 4 (the image is one row high). Voxels 2 and 3 lie on the ground-truth boundary (no
    neighbour strictly closer) and drop out. Voxel 4 (M = 1) has its closest neighbour on the left, offset
    (0, -1), which is index 3 of the 8 neighbours in lexicographic order.

    Its direction logits are KL(p_u || p_4) for each neighbour u: 0 outside the image, 0 for voxel 5 (same
    distribution), and KL(p_3 || p_4) = 4 * (sigmoid(4) - sigmoid(-4)) = 4 tanh(2) = 3.856110 for voxel 3.
    """
    kl = 4.0 * math.tanh(2.0)
    logits = [0.0, 0.0, 0.0, kl, 0.0, 0.0, 0.0, 0.0]
    log_sum_exp = math.log(sum(math.exp(value) for value in logits))
    # PyTorch's label smoothing: (1 - eps) * CE(target) + eps * mean over the 8 classes of CE(class).
    cross_entropy = (1 - label_smoothing) * (log_sum_exp - kl) + label_smoothing * (
        log_sum_exp - sum(logits) / len(logits)
    )
    return min(1.0, theta) / theta * cross_entropy


def test_active_boundary_hand_value_2d():
    logits, labels, distance = step_case()
    loss = build_loss("active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0, max_boundary_ratio=0.2)

    value = loss(logits, labels, boundary_distance=distance)

    # log-sum-exp = ln(7 + e^3.856110) = ln(54.281085) = 3.994176; CE(target) = 3.994176 - 3.856110 = 0.138066;
    # mean CE over the 8 classes = 3.994176 - 3.856110 / 8 = 3.512162; 0.8 * 0.138066 + 0.2 * 3.512162 = 0.812885;
    # times the weight 1 / 20: 0.040644.
    assert step_case_value() == pytest.approx(0.040644, abs=1e-6)
    assert value.item() == pytest.approx(step_case_value(), rel=1e-5)


def test_active_boundary_hand_value_3d():
    logits, labels, distance = step_case()
    loss = build_loss("active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0, max_boundary_ratio=0.2)

    value = loss(logits[:, :, None], labels[:, :, None], boundary_distance=distance[:, :, None])

    # 26 neighbours, all but voxels 3 and 5 outside the image: 24 zero logits instead of 6.
    kl = 4.0 * math.tanh(2.0)
    log_sum_exp = math.log(24 + 1 + math.exp(kl))
    expected = (0.8 * (log_sum_exp - kl) + 0.2 * (log_sum_exp - kl / 26)) / 20
    assert value.item() == pytest.approx(expected, rel=1e-5)


def test_active_boundary_adds_cross_entropy():
    logits, labels, distance = step_case()
    loss = build_loss("active_boundary", lovasz_weight=0.0, max_boundary_ratio=0.2, boundary_weight=2.0)

    value = loss(logits, labels, boundary_distance=distance)

    cross_entropy = build_loss("cross_entropy")(logits, labels)
    assert value.item() == pytest.approx(cross_entropy.item() + 2.0 * step_case_value(), rel=1e-5)


def test_active_boundary_smoothing_and_theta():
    logits, labels, distance = step_case()
    no_smoothing = build_loss(
        "active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0, max_boundary_ratio=0.2, label_smoothing=0.0
    )
    small_theta = build_loss(
        "active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0, max_boundary_ratio=0.2, max_distance=0.5
    )

    assert no_smoothing(logits, labels, boundary_distance=distance).item() == pytest.approx(
        step_case_value(label_smoothing=0.0), rel=1e-5
    )
    # theta = 0.5 saturates the weight of voxel 4 (M = 1) at 1.
    assert small_theta(logits, labels, boundary_distance=distance).item() == pytest.approx(
        step_case_value(theta=0.5), rel=1e-5
    )


def test_active_boundary_empty_prediction_is_zero_with_gradient():
    labels = blob_labels((2, 3, 8, 10, 6), 3)
    logits = torch.zeros(2, 3, 8, 10, 6, requires_grad=True)
    loss = build_loss("active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0)

    value = loss(logits, labels, **example_extra_inputs(logits, labels))
    value.backward()

    # Uniform logits: every KL is 0, nothing passes the threshold of 1e-5, the term is an exact zero.
    assert value.item() == 0.0
    assert value.requires_grad
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_active_boundary_no_ground_truth_boundary_is_zero():
    labels = torch.ones(1, 1, 6, 6, 6, dtype=torch.long)
    logits = make_logits((1, 2, 6, 6, 6)).requires_grad_()
    loss = build_loss("active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0)

    value = loss(logits, labels, **example_extra_inputs(logits, labels))
    value.backward()

    # The distance map is all zero: no voxel has a strictly closer neighbour.
    assert value.item() == 0.0
    assert torch.isfinite(logits.grad).all()


def test_active_boundary_threshold_matches_official_loop():
    generator = torch.Generator().manual_seed(3)
    for values, budget in [
        (torch.rand(500, generator=generator), 5),
        (torch.rand(500, generator=generator) * 1e-3, 0),
        (torch.zeros(50), 1),
        (torch.rand(20, generator=generator), 30),
        (torch.rand(40, generator=generator), 30),
    ]:
        threshold = 1e-5
        while (values > threshold).sum() > budget:
            threshold *= 1.2

        assert _threshold_for_budget(values, budget) == pytest.approx(threshold, rel=1e-9)
        assert int((values > _threshold_for_budget(values, budget)).sum()) <= budget


def test_active_boundary_budget_is_per_sample():
    shape = (2, 3, 12, 12, 12)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    loss = build_loss("active_boundary", lovasz_weight=0.0)
    inputs = SegmentationInputs(logits, labels)
    valid = torch.ones(2, 1, 12, 12, 12, dtype=torch.bool)
    log_probs = inputs.log_probs

    boundary = loss.predicted_boundary(log_probs, log_probs.exp(), valid)
    first_alone = loss.predicted_boundary(log_probs[:1], log_probs[:1].exp(), valid[:1])

    assert torch.equal(boundary[:1], first_alone)
    # 1 % of 1728 voxels is 17 before dilation; the 3x3x3 dilation grows each by at most 27.
    assert 0 < int(boundary[0].sum()) <= 17 * 27


def test_active_boundary_ignore_equals_crop_with_same_map():
    shape = (2, 3, 8, 10, 9)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    distance = example_extra_inputs(logits, labels)["boundary_distance"]
    ignored = labels.clone()
    ignored[..., -3:] = 255

    with_ignore = build_loss("active_boundary", lovasz_weight=0.0, ignore_index=255)(
        logits, ignored, boundary_distance=distance
    )
    cropped = build_loss("active_boundary", lovasz_weight=0.0)(
        logits[..., :-3], labels[..., :-3], boundary_distance=distance[..., :-3]
    )

    torch.testing.assert_close(with_ignore, cropped)


def test_active_boundary_batch_pools_voxels():
    shape = (2, 3, 8, 10, 6)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)
    loss = build_loss("active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0, reduction="none")
    pooled = build_loss("active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0, batch=True, reduction="none")

    per_sample = loss(logits, labels, **extras)
    batch = pooled(logits, labels, **extras)

    assert batch.shape == (1,)
    # The pooled mean lies between the two per-sample means.
    assert per_sample.min() - 1e-6 <= batch[0] <= per_sample.max() + 1e-6


def test_active_boundary_gradient_reaches_centre_only():
    logits, labels, distance = step_case()
    logits.requires_grad_()
    # Without smoothing: the target's softmax weight, 47.28 / 54.28 = 0.871, is above the smoothed target
    # 0.8 + 0.2 / 8 = 0.825, so smoothing 0.2 would push it down and flip the sign checked below.
    loss = build_loss(
        "active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0, max_boundary_ratio=0.2, label_smoothing=0.0
    )

    loss(logits, labels, boundary_distance=distance).backward()

    # Only voxel 4 takes part, and the neighbours' distributions are detached.
    assert logits.grad[..., [0, 1, 2, 3, 5]].abs().max() == 0
    # Raising the KL towards the target neighbour (voxel 3, mostly class 0) lowers the loss: push voxel 4 to class 1.
    assert logits.grad[0, 1, 0, 4] < 0
    assert logits.grad[0, 0, 0, 4] > 0


def test_active_boundary_on_real_label(dataset_dir):
    labels = first_label(dataset_dir)
    logits = perfect_logits(torch.roll(labels, 1, dims=2), 3, margin=3.0).requires_grad_()
    distance = label_boundary_distance(labels[:, 0]).unsqueeze(1)

    value = build_loss("active_boundary", lovasz_weight=0.0, cross_entropy_weight=0.0)(
        logits, labels, boundary_distance=distance
    )
    value.backward()

    assert value.item() > 0
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_active_boundary_includes_lovasz_by_default():
    loss = build_loss("active_boundary")

    assert loss.lovasz_weight == 1.0
    assert loss.lovasz is not None
    assert build_loss("active_boundary", lovasz_weight=0.0).lovasz is None


def test_active_boundary_adds_lovasz_term(monkeypatch):
    # Stand in the Dice loss for lovasz_softmax to check how the third term is built and added.
    spec = registry.get_loss_spec("dice")
    monkeypatch.setitem(registry._REGISTRY, "lovasz_softmax", spec)
    logits, labels, distance = step_case()

    with_third = build_loss("active_boundary", max_boundary_ratio=0.2, lovasz_weight=0.5)
    without = build_loss("active_boundary", max_boundary_ratio=0.2, lovasz_weight=0.0)
    dice = build_loss("dice")(logits, labels)

    difference = with_third(logits, labels, boundary_distance=distance) - without(
        logits, labels, boundary_distance=distance
    )
    assert difference.item() == pytest.approx(0.5 * dice.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_boundary_ratio": 0.0}, r"max_boundary_ratio must lie in \(0, 1\], got 0.0"),
        ({"max_boundary_ratio": 1.5}, "max_boundary_ratio"),
        ({"label_smoothing": 1.0}, r"label_smoothing must lie in \[0, 1\), got 1.0"),
        ({"max_distance": 0.0}, "max_distance must be a positive distance, got 0.0"),
        ({"boundary_weight": -0.1}, "boundary_weight must be a non-negative number, got -0.1"),
        ({"lovasz_weight": "one"}, "lovasz_weight"),
    ],
)
def test_active_boundary_invalid_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("active_boundary", **options)


def test_active_boundary_bad_distance_map_raises():
    logits, labels, distance = step_case()
    loss = build_loss("active_boundary", lovasz_weight=0.0)

    with pytest.raises(ValueError, match=r"boundary_distance has shape \(1, 2, 1, 6\)"):
        loss(logits, labels, boundary_distance=distance.repeat(1, 2, 1, 1))
    with pytest.raises(ValueError, match="boundary_distance must be non-negative, got a minimum of -1.0"):
        loss(logits, labels, boundary_distance=distance - 1.0)
    with pytest.raises(ValueError, match="boundary_distance contains 1 non-finite value "):
        bad = distance.clone()
        bad[0, 0, 0, 0] = float("inf")
        loss(logits, labels, boundary_distance=bad)
    with pytest.raises(ValueError, match="needs the extra input 'boundary_distance'.*LabelBoundaryDistanced"):
        loss(logits, labels)
