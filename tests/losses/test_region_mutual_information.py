"""Region mutual information loss (Zhao et al.) against a hand-derived value and a loop-based numpy reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from loss_cases import blob_labels, make_labels, make_logits

from scripts.losses import build_loss

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
EPS = 5e-4


def reference_rmi(
    logits: torch.Tensor,
    labels: torch.Tensor,
    radius: int = 3,
    pool_size: int = 4,
    pool_mode: str = "avg",
    bce_weight: float = 0.5,
    include_background: bool = True,
    ignore_index: int | None = None,
    batch: bool = False,
) -> np.ndarray:
    """Per-sample RMI loss by explicit loops over classes, pooling cells and windows, in float64 numpy."""
    logits = logits.double().numpy()
    labels = labels[:, 0].numpy()
    binary = logits.shape[1] == 1
    if binary:
        logits = np.concatenate([-logits, logits], axis=1)
    num_classes = logits.shape[1]
    valid = np.ones(labels.shape, bool) if ignore_index is None else labels != ignore_index
    target = np.stack([(labels == c) & valid for c in range(num_classes)], axis=1).astype(float)
    probs = 1 / (1 + np.exp(-logits))
    bce = np.logaddexp(0, logits) - target * logits
    spatial = labels.shape[1:]
    cells = [math.ceil(size / pool_size) for size in spatial]
    groups = [[b] for b in range(labels.shape[0])] if not batch else [list(range(labels.shape[0]))]

    losses = []
    for group in groups:
        total = 0.0
        # With one sigmoid channel the loss scores the foreground alone.
        for c in range(0 if include_background and not binary else 1, num_classes):
            class_bce = sum(bce[b, c][valid[b]].sum() for b in group) / max(sum(valid[b].sum() for b in group), 1)
            label_rows, prob_rows = [], []
            for b in group:
                pooled_label, pooled_prob, pooled_valid = {}, {}, {}
                for cell in itertools.product(*(range(n) for n in cells)):
                    region = tuple(slice(i * pool_size, (i + 1) * pool_size) for i in cell)
                    inside = valid[b][region]
                    pooled_valid[cell] = inside.any()
                    if not inside.any():
                        continue
                    reduce = np.mean if pool_mode == "avg" else np.max
                    pooled_label[cell] = reduce(target[b, c][region][inside])
                    pooled_prob[cell] = reduce(probs[b, c][region][inside])
                for start in itertools.product(*(range(n - radius + 1) for n in cells)):
                    window = [
                        tuple(s + o for s, o in zip(start, offset))
                        for offset in itertools.product(range(radius), repeat=len(cells))
                    ]
                    if all(pooled_valid[cell] for cell in window):
                        label_rows.append([pooled_label[cell] for cell in window])
                        prob_rows.append([pooled_prob[cell] for cell in window])
            rmi = 0.0
            if label_rows:
                label_points = np.array(label_rows) - np.mean(label_rows, axis=0)
                prob_points = np.array(prob_rows) - np.mean(prob_rows, axis=0)
                dim = label_points.shape[1]
                identity = np.eye(dim)
                label_cov = label_points.T @ label_points
                prob_cov = prob_points.T @ prob_points
                cross_cov = label_points.T @ prob_points
                posterior = label_cov - cross_cov @ np.linalg.inv(prob_cov + EPS * identity) @ cross_cov.T
                sign, logdet = np.linalg.slogdet(posterior + EPS * identity)
                assert sign > 0
                rmi = 0.5 * logdet / dim
            total += bce_weight * class_bce + (1 - bce_weight) * rmi
        losses.append(total)
    return np.array(losses)


def test_rmi_radius_one_hand_value():
    # Radius 1, no pooling: each voxel is a 1D point. Labels [1, 1, 0, 0] centred on 0.5 give Sigma_Y = 1;
    # probabilities [.9, .6, .2, .1] centred on .45 are [.45, .15, -.25, -.35], so Sigma_P = .41 and
    # Sigma_YP = .5 (.45 + .15) - .5 (-.25 - .35) = .6. Sigma_Y|P = 1 - .36 / .4105 = .123021, and
    # RMI = 0.5 ln(.123521) = -1.045673. The BCE mean is 0.236173, so L = (0.236173 - 1.045673) / 2 = -0.404750.
    posterior = 1 - 0.36 / (0.41 + EPS)
    rmi = 0.5 * math.log(posterior + EPS)
    bce = -(math.log(0.9) + math.log(0.6) + math.log(0.8) + math.log(0.9)) / 4

    value = build_loss("region_mutual_information", radius=1, pool_size=1)(torch.logit(PROBS)[None, None], TARGET)

    assert rmi == pytest.approx(-1.045673, abs=1e-6)
    assert bce == pytest.approx(0.236173, abs=1e-6)
    assert value.item() == pytest.approx(0.5 * bce + 0.5 * rmi, abs=1e-12)
    assert value.item() == pytest.approx(-0.404750, abs=1e-6)


@pytest.mark.parametrize(
    ("shape", "options"),
    [
        ((2, 3, 10, 9), {"radius": 3, "pool_size": 1}),
        ((2, 3, 13, 14), {}),
        ((2, 3, 13, 14), {"pool_mode": "max"}),
        ((2, 3, 11, 10), {"radius": 2, "pool_size": 3, "batch": True}),
        ((1, 2, 6, 7, 5), {"radius": 2, "pool_size": 2}),
        ((1, 3, 16, 13, 12), {}),
        ((2, 1, 9, 7, 8), {"radius": 2, "pool_size": 2}),
        ((2, 3, 8, 7, 6), {"radius": 2, "pool_size": 2, "include_background": False, "bce_weight": 0.3}),
    ],
    ids=[
        "2d-no-pool",
        "2d-defaults",
        "2d-max-pool",
        "2d-batch",
        "3d-pool-2",
        "3d-defaults",
        "3d-sigmoid",
        "3d-foreground",
    ],
)
def test_rmi_matches_reference(shape, options):
    logits = make_logits(shape, dtype=torch.float64)
    labels = make_labels(shape, max(shape[1], 2))

    value = build_loss("region_mutual_information", reduction="none", **options)(logits, labels)
    float32 = build_loss("region_mutual_information", reduction="none", **options)(logits.float(), labels)
    expected = torch.from_numpy(reference_rmi(logits, labels, **options))

    torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(float32.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool_mode", ["avg", "max"])
def test_rmi_ignored_voxels_drop_their_windows(pool_mode):
    shape = (2, 3, 12, 10, 9)
    logits = make_logits(shape, dtype=torch.float64)
    labels = make_labels(shape, 3)
    labels[0, 0, 3:5, 2:4, 1:6] = 255
    labels[1, 0, 5, 5, 5] = 255
    changed = logits.clone()
    changed[(labels == 255).expand_as(logits)] = 9.0
    options = {"radius": 2, "pool_size": 2, "pool_mode": pool_mode}
    loss = build_loss("region_mutual_information", ignore_index=255, reduction="none", **options)

    value = loss(logits, labels)
    expected = torch.from_numpy(reference_rmi(logits, labels, ignore_index=255, **options))

    torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(loss(changed, labels), value)


def test_rmi_aligned_leading_slab_is_a_crop():
    shape = (1, 3, 14, 13)
    logits = make_logits(shape, dtype=torch.float64)
    labels = blob_labels(shape, 3)
    ignored = labels.clone()
    ignored[..., :4, :] = 255

    with_ignore = build_loss("region_mutual_information", ignore_index=255)(logits, ignored)
    cropped = build_loss("region_mutual_information")(logits[..., 4:, :], labels[..., 4:, :])

    torch.testing.assert_close(with_ignore, cropped)


def test_rmi_every_voxel_ignored_is_zero():
    logits = make_logits((2, 3, 9, 9, 9)).requires_grad_()
    value = build_loss("region_mutual_information", ignore_index=255)(logits, torch.full((2, 1, 9, 9, 9), 255))
    value.backward()

    assert value.item() == 0.0
    assert logits.grad.abs().sum() == 0


def test_rmi_absent_class_term_is_constant():
    # Class 2 never occurs: its label patches are constant, Sigma_Y = Sigma_YP = 0, and the term is ln(eps) / 2
    # with no gradient, whatever the prediction.
    shape = (2, 3, 12, 12, 12)
    labels = blob_labels(shape, 3)
    labels[labels == 2] = 1
    logits = make_logits(shape).requires_grad_()
    loss = build_loss("region_mutual_information", bce_weight=0.0, class_weights=[0.0, 0.0, 1.0])

    value = loss(logits, labels)
    value.backward()

    assert value.item() == pytest.approx(0.5 * math.log(EPS), rel=1e-6)
    assert logits.grad.abs().sum() == 0


@pytest.mark.parametrize("bce_weight", [0.0, 0.25, 0.5, 1.0])
def test_rmi_bce_weight_mixes_the_terms(bce_weight):
    shape = (2, 3, 12, 12)
    logits = make_logits(shape, dtype=torch.float64)
    labels = blob_labels(shape, 3)
    bce_only = build_loss("region_mutual_information", bce_weight=1.0)(logits, labels)
    rmi_only = build_loss("region_mutual_information", bce_weight=0.0)(logits, labels)

    value = build_loss("region_mutual_information", bce_weight=bce_weight)(logits, labels)

    assert value.item() == pytest.approx(bce_weight * bce_only.item() + (1 - bce_weight) * rmi_only.item(), abs=1e-12)


def test_rmi_bce_term_is_summed_over_classes():
    shape = (2, 3, 12, 12)
    logits = make_logits(shape, dtype=torch.float64)
    labels = blob_labels(shape, 3)
    target = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 3, 1, 2).double()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")

    value = build_loss("region_mutual_information", bce_weight=1.0, reduction="none")(logits, labels)

    torch.testing.assert_close(value, bce.mean(dim=(2, 3)).sum(dim=1))


def test_rmi_class_weights_weigh_the_class_sum():
    shape = (1, 3, 12, 12)
    logits = make_logits(shape, dtype=torch.float64)
    labels = blob_labels(shape, 3)
    per_class = [
        build_loss("region_mutual_information", class_weights=[float(c == k) for k in range(3)])(logits, labels)
        for c in range(3)
    ]

    weighted = build_loss("region_mutual_information", class_weights=[1.0, 2.0, 0.5])(logits, labels)
    unweighted = build_loss("region_mutual_information")(logits, labels)

    assert weighted.item() == pytest.approx((per_class[0] + 2 * per_class[1] + 0.5 * per_class[2]).item(), abs=1e-12)
    assert unweighted.item() == pytest.approx(sum(per_class).item(), abs=1e-12)


def test_rmi_better_prediction_scores_lower():
    shape = (1, 3, 16, 16, 16)
    labels = blob_labels(shape, 3)
    target = torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float()
    noise = make_logits(shape)
    loss = build_loss("region_mutual_information", bce_weight=0.0)

    values = [loss(6.0 * (2 * target - 1) * weight + noise * (1 - weight), labels).item() for weight in (0.0, 0.5, 1.0)]

    assert values[0] > values[1] > values[2]


def test_rmi_gradient_matches_finite_differences_3d():
    labels = blob_labels((1, 2, 5, 5, 4), 2)
    logits = make_logits((1, 2, 5, 5, 4), scale=0.5, dtype=torch.float64).requires_grad_()
    loss = build_loss("region_mutual_information", radius=3, pool_size=1)

    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        {"ignore_index": 255},
        {"batch": True, "ignore_index": 255},
        {"bce_weight": 1.0, "ignore_index": 255},
        {"bce_weight": 0.0, "ignore_index": 255},
    ],
    ids=["ignored-voxels", "batch", "bce-only", "rmi-only"],
)
def test_rmi_gradient_with_mask_and_term_weights(options):
    # The hand-written backward of the sigmoid and BCE sums, with a mask and with either term switched off.
    labels = blob_labels((2, 3, 7, 6), 3)
    labels[0, 0, :2] = 255
    logits = make_logits((2, 3, 7, 6), scale=0.5, dtype=torch.float64).requires_grad_()
    loss = build_loss("region_mutual_information", radius=2, pool_size=2, **options)

    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,), eps=1e-6, atol=1e-5)


def test_rmi_input_smaller_than_window_raises():
    logits = make_logits((1, 3, 16, 16, 8))
    labels = make_labels((1, 3, 16, 16, 8), 3)
    with pytest.raises(ValueError, match=r"needs at least 9 voxels.*\(16, 16, 8\).*lower radius or pool_size"):
        build_loss("region_mutual_information")(logits, labels)


def test_rmi_tiny_eps_on_perfect_prediction_raises():
    # A perfect prediction leaves Sigma_Y|P at rounding level, which eps = 1e-16 cannot lift above zero.
    labels = blob_labels((1, 3, 16, 16, 16), 3)
    logits = 8.0 * (2 * torch.nn.functional.one_hot(labels[:, 0], 3).permute(0, 4, 1, 2, 3).float() - 1)

    with pytest.raises(ValueError, match=r"not positive definite with eps=1e-16.*raise eps"):
        build_loss("region_mutual_information", eps=1e-16)(logits, labels)


def test_rmi_more_than_three_spatial_axes_raises():
    with pytest.raises(ValueError, match=r"1 to 3 spatial dimensions.*\(1, 2, 3, 3, 3, 3\)"):
        build_loss("region_mutual_information", radius=2, pool_size=1)(
            torch.zeros((1, 2, 3, 3, 3, 3)), torch.zeros((1, 1, 3, 3, 3, 3), dtype=torch.long)
        )


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("radius", 0, "radius must be a positive integer, got 0"),
        ("radius", 2.5, "radius must be a positive integer, got 2.5"),
        ("pool_size", True, "pool_size of loss 'region_mutual_information' must be a number .*got True"),
        ("pool_mode", "median", "pool_mode must be one of .*got 'median'"),
        ("bce_weight", 1.5, r"bce_weight must lie in \[0, 1\], got 1.5"),
        ("bce_weight", "0.5", "bce_weight of loss .* must be a number .*got '0.5' of type str"),
        ("eps", 0.0, "eps must be a positive finite number, got 0.0"),
        ("eps", float("nan"), "eps must be a positive finite number, got nan"),
    ],
)
def test_rmi_invalid_options_name_the_value(option, value, message):
    with pytest.raises(ValueError, match=message):
        build_loss("region_mutual_information", **{option: value})


@pytest.mark.parametrize(
    "options",
    [{}, {"class_weights": [0.2, 1.0, 3.0]}, {"ignore_index": 255}, {"include_background": False}],
    ids=["plain", "class-weights", "ignored-voxels", "foreground"],
)
def test_rmi_softmax_cross_entropy_variant(options):
    # The code's forward_softmax_sigmoid: lambda * softmax cross-entropy + (1 - lambda) * the sigmoid RMI sum.
    shape = (2, 3, 12, 13)
    logits = make_logits(shape, dtype=torch.float64)
    labels = blob_labels(shape, 3)
    if "ignore_index" in options:
        labels[:, :, :2] = 255
    value = build_loss("region_mutual_information", cross_entropy="softmax", reduction="none", **options)(
        logits, labels
    )

    rmi = build_loss("region_mutual_information", bce_weight=0.0, reduction="none", **options)(logits, labels)
    weights = torch.tensor(options.get("class_weights", [1.0, 1.0, 1.0]), dtype=torch.float64)
    if options.get("include_background") is False:
        weights[0] = 0.0
    cross_entropy = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[b : b + 1], labels[b : b + 1, 0], weight=weights, ignore_index=255)
            for b in range(shape[0])
        ]
    )
    torch.testing.assert_close(value, 0.5 * cross_entropy + 0.5 * rmi)


def test_rmi_softmax_variant_gradient_and_binary_input():
    shape = (1, 3, 9, 9)
    logits = make_logits(shape, dtype=torch.float64).detach().requires_grad_()
    labels = blob_labels(shape, 3)
    loss = build_loss("region_mutual_information", cross_entropy="softmax", radius=2, pool_size=2)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (logits,))

    # One channel: both variants are the binary cross-entropy plus the same RMI term.
    binary_logits = make_logits((2, 1, 9, 9), dtype=torch.float64)
    binary_labels = blob_labels((2, 1, 9, 9), 2)
    sigmoid = build_loss("region_mutual_information", radius=2, pool_size=2)(binary_logits, binary_labels)
    softmax = build_loss("region_mutual_information", cross_entropy="softmax", radius=2, pool_size=2)(
        binary_logits, binary_labels
    )
    torch.testing.assert_close(softmax, sigmoid)


def test_rmi_unknown_cross_entropy_mode_raises():
    with pytest.raises(ValueError, match="cross_entropy must be one of"):
        build_loss("region_mutual_information", cross_entropy="softplus")
