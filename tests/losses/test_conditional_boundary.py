"""Conditional boundary loss (Wu et al.): hand-derived terms, empty sets, classifier handling and input checks."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import blob_labels, make_logits
from monai.networks.nets import UNet
from torch import nn

from scripts.losses import build_loss
from scripts.networks import ConditionalBoundaryNetwork


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def hand_case():
    """A 1 x 4 image, labels 0 0 1 1, two-channel features F = (1, 0) (2, 1) (0, 1) (1, 3).

    The classifier is the identity, so the features are the logits and every voxel is predicted correctly.
    """
    features = torch.tensor([[1.0, 0.0], [2.0, 1.0], [0.0, 1.0], [1.0, 3.0]]).T.reshape(1, 2, 1, 4)
    labels = torch.tensor([0, 0, 1, 1]).view(1, 1, 1, 4)
    return features, labels


# Boundary voxels (a voxel of the other class among the 8 neighbours): v1 and v2 (the image is one row high).
# v1, class 0: same-class (and correct) neighbour v0, centre (1, 0).  v2, class 1: neighbour v3, centre (1, 3).
# A2C classification, each set (A and B) averaged per class: class 0 2 * CE((1, 0), 0) = 2 softplus(-1);
# class 1 2 * CE((1, 3), 1) = 2 softplus(-2); mean over the two classes: (0.626523 + 0.253856) / 2 = 0.440190.
CLASSIFICATION = (2 * softplus(-1.0) + 2 * softplus(-2.0)) / 2
# A2C pull: v1 mean((2 - 1)^2, (1 - 0)^2) = 1; v2 mean((0 - 1)^2, (1 - 3)^2) = 2.5; class mean 1.75.
PULL = (1.0 + 2.5) / 2
# A2P&N over the 4 (voxel, neighbour) pairs: v1-v0 same, cos 2/sqrt(5); v1-v2 other, cos 1/sqrt(5);
# v2-v1 other, cos 1/sqrt(5); v2-v3 same, cos 3/sqrt(10): (0.011146 + 0.2 + 0.2 + 0.002633) / 4 = 0.103445.
SIMILARITY = ((2 / math.sqrt(5) - 1) ** 2 + 0.2 + 0.2 + (3 / math.sqrt(10) - 1) ** 2) / 4


def evaluate(loss, features, labels, classifier=None):
    return loss(features.clone(), labels, features=features.clone(), classifier=classifier or nn.Identity())


def test_conditional_boundary_hand_value_2d():
    features, labels = hand_case()
    loss = build_loss("conditional_boundary", cross_entropy_weight=0.0)

    value = evaluate(loss, features, labels)

    # 0.2 * 0.440190 + 2 * 1.75 + 1 * 0.103445 = 3.691483.
    assert value.item() == pytest.approx(0.2 * CLASSIFICATION + 2 * PULL + SIMILARITY, rel=1e-6)
    assert value.item() == pytest.approx(3.691483, abs=1e-6)


def test_conditional_boundary_hand_value_3d():
    features, labels = hand_case()
    loss = build_loss("conditional_boundary", cross_entropy_weight=0.0)

    value = evaluate(loss, features[:, :, None], labels[:, :, None])

    assert value.item() == pytest.approx(3.691483, abs=1e-6)


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        (
            {"centre_classification_weight": 1.0, "centre_pull_weight": 0.0, "neighbour_similarity_weight": 0.0},
            CLASSIFICATION,
        ),
        ({"centre_classification_weight": 0.0, "centre_pull_weight": 1.0, "neighbour_similarity_weight": 0.0}, PULL),
        (
            {"centre_classification_weight": 0.0, "centre_pull_weight": 0.0, "neighbour_similarity_weight": 1.0},
            SIMILARITY,
        ),
    ],
)
def test_conditional_boundary_each_term(weights, expected):
    features, labels = hand_case()
    loss = build_loss("conditional_boundary", cross_entropy_weight=0.0, **weights)

    assert evaluate(loss, features, labels).item() == pytest.approx(expected, rel=1e-6)


def test_conditional_boundary_adds_cross_entropy():
    features, labels = hand_case()

    value = evaluate(build_loss("conditional_boundary"), features, labels)

    cross_entropy = build_loss("cross_entropy")(features, labels)
    assert value.item() == pytest.approx(cross_entropy.item() + 3.691483, abs=1e-5)


def test_conditional_boundary_wrong_prediction_leaves_set_b():
    features, labels = hand_case()
    # v1 now predicts class 1 (feature (0, 2)): it stays in set A but leaves set B, so class 0 has no set-B
    # voxel and only class 1 counts in the A2C terms.
    features[0, :, 0, 1] = torch.tensor([0.0, 2.0])
    loss = build_loss("conditional_boundary", cross_entropy_weight=0.0, neighbour_similarity_weight=0.0)

    value = evaluate(loss, features, labels)

    # Class 1 alone: centre of v2 is still v3 = (1, 3): 0.2 * 2 softplus(-2) + 2 * 2.5.
    assert value.item() == pytest.approx(0.2 * 2 * softplus(-2.0) + 2 * 2.5, rel=1e-6)


def test_conditional_boundary_without_background():
    features, labels = hand_case()
    loss = build_loss("conditional_boundary", cross_entropy_weight=0.0, include_background=False)

    value = evaluate(loss, features, labels)

    # Only v2 (class 1): A2C 0.2 * 2 softplus(-2) + 2 * 2.5; A2P&N over v2's two pairs: (0.2 + 0.002633) / 2.
    similarity = (0.2 + (3 / math.sqrt(10) - 1) ** 2) / 2
    assert value.item() == pytest.approx(0.2 * 2 * softplus(-2.0) + 2 * 2.5 + similarity, rel=1e-6)


def test_conditional_boundary_single_class_is_cross_entropy_only():
    labels = torch.ones(2, 1, 6, 6, 6, dtype=torch.long)
    logits = make_logits((2, 3, 6, 6, 6)).requires_grad_()
    features = make_logits((2, 4, 6, 6, 6), seed=5).requires_grad_()
    classifier = nn.Conv3d(4, 3, 1)

    value = build_loss("conditional_boundary")(logits, labels, features=features, classifier=classifier)
    value.backward()

    # No boundary voxel: every CBL term is an exact zero.
    torch.testing.assert_close(value, build_loss("cross_entropy")(logits.detach(), labels))
    assert features.grad is None or features.grad.abs().max() == 0


def test_conditional_boundary_classifier_is_detached():
    shape = (2, 3, 8, 10, 6)
    labels = blob_labels(shape, 3)
    classifier = nn.Conv3d(5, 3, 1)
    features = make_logits((2, 5, 8, 10, 6), seed=4).requires_grad_()
    logits = classifier(features)
    loss = build_loss("conditional_boundary", cross_entropy_weight=0.0)

    loss(logits.detach(), labels, features=features, classifier=classifier).backward()

    assert classifier.weight.grad is None
    assert features.grad.abs().sum() > 0


def test_conditional_boundary_with_unet_wrapper():
    torch.manual_seed(0)
    backbone = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=[8, 16], strides=[2], num_res_units=1)
    network = ConditionalBoundaryNetwork(backbone).train()
    labels = blob_labels((2, 3, 16, 16, 16), 3)
    output = network(torch.randn(2, 1, 16, 16, 16))
    loss = build_loss("conditional_boundary")

    value = loss(output["logits"], labels, features=output["features"], classifier=output["classifier"])
    value.backward()

    assert torch.isfinite(value)
    # The backbone trains through the CE and the features; the output block only through the CE.
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)


def test_conditional_boundary_larger_neighbourhood():
    features, labels = hand_case()
    loss = build_loss(
        "conditional_boundary",
        cross_entropy_weight=0.0,
        centre_classification_weight=0.0,
        centre_pull_weight=0.0,
        neighbourhood_size=5,
    )

    # Radius 2: v0 and v1 see v2 (class 1), and v2 and v3 see v1 (class 0), so every voxel is a boundary voxel.
    # Pairs, s for same class and o for other: v0-v1 s, v0-v2 o, v1-v0 s, v1-v2 o, v1-v3 o, v2-v0 o, v2-v1 o,
    # v2-v3 s, v3-v1 o, v3-v2 s.
    unit = nn.functional.normalize(features[0, :, 0].T, dim=1)
    cos = unit @ unit.T
    pairs = [
        (0, 1, 1),
        (0, 2, 0),
        (1, 0, 1),
        (1, 2, 0),
        (1, 3, 0),
        (2, 0, 0),
        (2, 1, 0),
        (2, 3, 1),
        (3, 1, 0),
        (3, 2, 1),
    ]
    expected = sum((cos[i, j].item() - same) ** 2 for i, j, same in pairs) / len(pairs)
    assert evaluate(loss, features, labels).item() == pytest.approx(expected, rel=1e-6)


def test_conditional_boundary_binary_single_channel():
    labels = blob_labels((2, 2, 8, 10, 6), 2)
    logits = make_logits((2, 1, 8, 10, 6)).requires_grad_()

    value = build_loss("conditional_boundary")(logits, labels, features=logits.clone(), classifier=nn.Identity())
    value.backward()

    assert torch.isfinite(value)
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"neighbourhood_size": 4}, "neighbourhood_size must be an odd integer of at least 3, got 4"),
        ({"neighbourhood_size": 1}, "neighbourhood_size"),
        ({"centre_pull_weight": -2.0}, "centre_pull_weight must be a non-negative number, got -2.0"),
        ({"neighbour_similarity_weight": float("inf")}, "neighbour_similarity_weight"),
    ],
)
def test_conditional_boundary_invalid_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build_loss("conditional_boundary", **options)


def test_conditional_boundary_bad_inputs_raise():
    features, labels = hand_case()
    loss = build_loss("conditional_boundary")

    with pytest.raises(ValueError, match=r"features has shape \(1, 2, 1, 3\)"):
        loss(features, labels, features=features[..., :3], classifier=nn.Identity())
    with pytest.raises(ValueError, match="classifier must be a callable"):
        loss(features, labels, features=features, classifier="conv")
    with pytest.raises(ValueError, match="needs the extra input 'features'"):
        loss(features, labels, classifier=nn.Identity())
    with pytest.raises(ValueError, match="pass the module that maps the decoder features to the logits"):
        loss(features, labels, features=features, classifier=lambda x: x.sum())
    nan_features = features.clone()
    nan_features[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="features contains 1 non-finite value "):
        loss(features, labels, features=nan_features, classifier=nn.Identity())
