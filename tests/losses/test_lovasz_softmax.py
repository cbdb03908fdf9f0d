"""Lovász-softmax loss (Berman et al.) against hand-derived values and a per-class reference loop."""

from __future__ import annotations

import pytest
import torch
from loss_cases import blob_labels, make_labels, make_logits, one_hot

from scripts.losses import build_loss
from scripts.losses.region.lovasz import (
    BUCKET_BITS,
    binned_lovasz_chunk,
    lovasz_grad,
    sort_errors,
    sorted_lovasz_chunk,
)

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]


def two_class_logits(dtype=torch.float64) -> torch.Tensor:
    return torch.log(torch.stack([1 - PROBS, PROBS]))[None].to(dtype)


def jaccard_differences(target_sorted: torch.Tensor) -> torch.Tensor:
    """Algorithm 1 of Berman et al. for one row: the Jaccard loss after each prefix, differenced."""
    total = target_sorted.sum()
    intersection = total - target_sorted.cumsum(0)
    union = total + (1 - target_sorted).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def reference_lovasz(probs, labels, classes="present", include_background=True, ignore_index=None, batch=False):
    """Loop over samples and classes: drop ignored voxels, sort the errors, dot with the Jaccard differences."""
    num_classes = probs.shape[1]
    probs = probs.double().flatten(2)
    labels = labels.flatten(1)
    if batch:
        probs = probs.transpose(0, 1).reshape(1, num_classes, -1)
        labels = labels.reshape(1, -1)
    first = 0 if include_background else 1
    losses = []
    for sample_probs, sample_labels in zip(probs, labels):
        valid = sample_labels != ignore_index if ignore_index is not None else torch.ones_like(sample_labels).bool()
        class_losses = []
        for c in range(first, num_classes):
            foreground = (sample_labels[valid] == c).double()
            if classes == "present" and foreground.sum() == 0:
                continue
            errors = (foreground - sample_probs[c][valid]).abs()
            errors_sorted, order = errors.sort(descending=True)
            class_losses.append(torch.dot(errors_sorted, jaccard_differences(foreground[order])))
        losses.append(torch.stack(class_losses).mean() if class_losses else torch.zeros((), dtype=torch.float64))
    return torch.stack(losses)


def test_lovasz_two_class_hand_values():
    # Foreground errors |t - p| = [.1, .4, .2, .1], sorted .4 (t=1), .2 (t=0), .1 (t=1), .1 (t=0), |T| = 2:
    # Jaccard losses 1/2, 2/3, 1, 1, so g = [1/2, 1/6, 1/3, 0] and 0.4/2 + 0.2/6 + 0.1/3 = 0.266667.
    # Background errors are the same, sorted .4 (t=0), .2 (t=1), .1 (t=0), .1 (t=1): Jaccard losses 1/3, 2/3,
    # 3/4, 1, so g = [1/3, 1/3, 1/12, 1/4] and 0.4/3 + 0.2/3 + 0.1/12 + 0.1/4 = 0.233333.
    both = build_loss("lovasz_softmax")(two_class_logits(), TARGET)
    foreground = build_loss("lovasz_softmax", include_background=False)(two_class_logits(), TARGET)

    assert foreground.item() == pytest.approx(0.266667, abs=1e-6)
    assert foreground.item() == pytest.approx(0.8 / 3, abs=1e-12)
    assert both.item() == pytest.approx(0.25, abs=1e-12)


def test_lovasz_two_class_hand_values_float32():
    both = build_loss("lovasz_softmax")(two_class_logits(torch.float32), TARGET)
    foreground = build_loss("lovasz_softmax", include_background=False)(two_class_logits(torch.float32), TARGET)

    assert foreground.item() == pytest.approx(0.8 / 3, abs=1e-6)
    assert both.item() == pytest.approx(0.25, abs=1e-6)


def test_lovasz_sigmoid_equals_two_class_foreground():
    sigmoid = build_loss("lovasz_softmax")(torch.logit(PROBS)[None, None], TARGET)

    assert sigmoid.item() == pytest.approx(0.8 / 3, abs=1e-12)


def test_lovasz_3d_hand_value():
    # A 2 x 1 x 2 volume with one sigmoid channel: p = [.7, .3, .8, .4], t = [1, 0, 1, 1], errors
    # [.3, .3, .2, .6], |T| = 3. Sorted .6 (t=1), .3 (t=1), .3 (t=0), .2 (t=1): Jaccard losses 1/3, 2/3, 3/4, 1,
    # so g = [1/3, 1/3, 1/12, 1/4] and 0.6/3 + 0.3/3 + 0.3/12 + 0.2/4 = 0.375.
    probs = torch.tensor([0.7, 0.3, 0.8, 0.4], dtype=torch.float64).reshape(1, 1, 2, 1, 2)
    labels = torch.tensor([1, 0, 1, 1]).reshape(1, 1, 2, 1, 2)

    value = build_loss("lovasz_softmax")(torch.logit(probs), labels)

    assert value.item() == pytest.approx(0.375, abs=1e-12)


def test_lovasz_ties_in_either_order_give_one_value():
    # The 3D example's tie (.3 with t=1 and t=0) taken the other way: Jaccard losses 1/3, 1/2, 3/4, 1, so
    # g = [1/3, 1/6, 1/4, 1/4] and 0.6/3 + 0.3/6 + 0.3/4 + 0.2/4 = 0.375 again.
    assert 0.6 / 3 + 0.3 / 6 + 0.3 / 4 + 0.2 / 4 == pytest.approx(0.375, abs=1e-12)
    probs = torch.tensor([0.3, 0.7, 0.8, 0.4], dtype=torch.float64).reshape(1, 1, 2, 1, 2)
    labels = torch.tensor([0, 1, 1, 1]).reshape(1, 1, 2, 1, 2)

    value = build_loss("lovasz_softmax")(torch.logit(probs), labels)

    assert value.item() == pytest.approx(0.375, abs=1e-12)


def test_lovasz_grad_matches_jaccard_differences():
    generator = torch.Generator().manual_seed(3)
    rows = [
        (torch.rand(40, generator=generator, dtype=torch.float64) > 0.6).double(),
        torch.rand(40, generator=generator, dtype=torch.float64),
        torch.zeros(40, dtype=torch.float64),
        torch.ones(40, dtype=torch.float64),
    ]
    for row in rows:
        torch.testing.assert_close(lovasz_grad(row[None])[0], jaccard_differences(row), rtol=1e-12, atol=1e-14)

    single_voxel = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    torch.testing.assert_close(lovasz_grad(single_voxel), torch.tensor([[1.0], [1.0]], dtype=torch.float64))


@pytest.mark.parametrize("shape", [(2, 3, 9, 7), (2, 4, 5, 6, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("classes", ["present", "all"])
@pytest.mark.parametrize("include_background", [True, False])
def test_lovasz_matches_reference_loop(shape, batch, classes, include_background):
    logits = make_logits(shape, dtype=torch.float64)
    labels = make_labels(shape, shape[1])
    labels[0][labels[0] == 2] = 1  # class 2 absent from sample 0
    options = {"batch": batch, "classes": classes, "include_background": include_background}
    expected = reference_lovasz(torch.softmax(logits, 1), labels, **options)

    exact = build_loss("lovasz_softmax", reduction="none", **options)(logits, labels)
    quantised = build_loss("lovasz_softmax", reduction="none", **options)(logits.float(), labels)

    torch.testing.assert_close(exact, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(quantised.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("target_form", ["index", "one_hot", "index_ignore", "absent_class"])
def test_lovasz_chunked_rows_match_reference(target_form, batch):
    # 9 rows of 36,000 voxels, 3 rows per chunk. Index and one-hot targets take the binned path (2^15 voxels or
    # more per row); test_lovasz_chunked_soft_rows_match_exact_sort covers the sort.
    shape = (3, 3, 30, 40, 30)
    logits = make_logits(shape, dtype=torch.float64)
    labels = make_labels(shape, shape[1])
    target, options = labels, {"reduction": "none", "batch": batch}
    if target_form == "one_hot":
        target = one_hot(labels, shape[1]).float()
    if target_form == "index_ignore":
        target = labels.clone()
        target[1, 0, 5:20] = 255
        options["ignore_index"] = 255
    if target_form == "absent_class":
        labels[0][labels[0] == 2] = 1
        options["classes"] = "all"
    reference_logits = logits.clone().requires_grad_()
    reference_labels = labels if target_form == "one_hot" else target
    reference_options = {key: value for key, value in options.items() if key != "reduction"}
    expected = reference_lovasz(torch.softmax(reference_logits, 1), reference_labels, **reference_options)
    expected.sum().backward()

    fast_logits = logits.float().requires_grad_()
    value = build_loss("lovasz_softmax", **options)(fast_logits, target)
    value.sum().backward()

    torch.testing.assert_close(value.double(), expected.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_logits.grad.double(), reference_logits.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("batch", [False, True])
def test_lovasz_chunked_soft_rows_match_exact_sort(batch):
    # A soft target takes the sort in chunks of 3 rows in float32, and sorts float64 exactly.
    shape = (3, 3, 30, 40, 30)
    logits = make_logits(shape, dtype=torch.float64)
    soft = 0.7 * one_hot(make_labels(shape, shape[1]), shape[1]).double() + 0.1
    loss = build_loss("lovasz_softmax", reduction="none", batch=batch)
    exact_logits = logits.clone().requires_grad_()
    exact = loss(exact_logits, soft)
    exact.sum().backward()

    fast_logits = logits.float().requires_grad_()
    value = loss(fast_logits, soft.float())
    value.sum().backward()

    torch.testing.assert_close(value.double(), exact.detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(fast_logits.grad.double(), exact_logits.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lovasz_ignored_voxels_are_removed(dtype):
    shape = (2, 3, 6, 7, 5)
    logits = make_logits(shape, dtype=dtype)
    labels = make_labels(shape, shape[1])
    labels[0, 0, 1:4, 2:5, 1:3] = 255
    labels[1, 0, 0] = 255
    expected = reference_lovasz(torch.softmax(logits.double(), 1), labels, ignore_index=255)

    value = build_loss("lovasz_softmax", ignore_index=255, reduction="none")(logits, labels)

    torch.testing.assert_close(value.double(), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_every_voxel_ignored_is_zero(classes):
    logits = make_logits((2, 3, 4, 4, 4)).requires_grad_()
    labels = torch.full((2, 1, 4, 4, 4), 255)
    value = build_loss("lovasz_softmax", ignore_index=255, classes=classes)(logits, labels)
    value.backward()

    assert value.item() == 0.0
    assert logits.grad.abs().sum() == 0


def test_lovasz_absent_class_in_both_modes():
    # Background-only target, foreground classes only: "present" has no class left (0); "all" scores each absent
    # class by its largest probability, because g = [1, 0, ...] when |T| = 0.
    logits = make_logits((1, 3, 5, 6), dtype=torch.float64)
    labels = torch.zeros((1, 1, 5, 6), dtype=torch.long)
    probs = torch.softmax(logits, 1)

    present = build_loss("lovasz_softmax", include_background=False)(logits, labels)
    every = build_loss("lovasz_softmax", include_background=False, classes="all")(logits, labels)

    assert present.item() == 0.0
    assert every.item() == pytest.approx((probs[0, 1].max() + probs[0, 2].max()).item() / 2, abs=1e-12)


def test_lovasz_class_weights_weigh_present_classes():
    logits = make_logits((1, 3, 6, 6), dtype=torch.float64)
    labels = make_labels((1, 3, 6, 6), 3)
    labels[labels == 2] = 1
    per_class = [
        build_loss("lovasz_softmax", classes="all", class_weights=[float(c == k) for k in range(3)])(logits, labels)
        for c in range(3)
    ]

    weighted = build_loss("lovasz_softmax", class_weights=[1.0, 2.0, 3.0])(logits, labels)
    weighted_all = build_loss("lovasz_softmax", classes="all", class_weights=[1.0, 2.0, 3.0])(logits, labels)

    assert weighted.item() == pytest.approx((per_class[0] + 2 * per_class[1]).item() / 3, abs=1e-12)
    assert weighted_all.item() == pytest.approx((per_class[0] + 2 * per_class[1] + 3 * per_class[2]).item() / 6)


def test_lovasz_batch_pools_the_voxels():
    logits = make_logits((2, 3, 5, 4, 3), dtype=torch.float64)
    labels = blob_labels((2, 3, 5, 4, 3), 3)
    joined_logits = torch.cat([logits[0], logits[1]], dim=1)[None]
    joined_labels = torch.cat([labels[0], labels[1]], dim=1)[None]

    pooled = build_loss("lovasz_softmax", batch=True, reduction="none")(logits, labels)
    joined = build_loss("lovasz_softmax")(joined_logits, joined_labels)

    assert pooled.shape == (1,)
    torch.testing.assert_close(pooled[0], joined)


def test_lovasz_soft_target_matches_reference_loop():
    # A soft target takes the sort with the target gathered in sorted order, and the sign of p - t at each voxel.
    shape = (2, 3, 6, 5, 4)
    logits = make_logits(shape)
    labels = make_labels(shape, shape[1])
    soft = 0.7 * one_hot(labels, shape[1]).double() + 0.1
    probs = torch.softmax(logits.double(), 1).flatten(2)
    expected = []
    for sample_probs, sample_target in zip(probs, soft.flatten(2)):
        errors = (sample_target - sample_probs).abs()
        order = errors.sort(dim=1, descending=True).indices
        rows = [
            torch.dot(errors[c][order[c]], jaccard_differences(sample_target[c][order[c]])) for c in range(shape[1])
        ]
        expected.append(torch.stack(rows).mean())

    value = build_loss("lovasz_softmax", reduction="none")(logits, soft.float())
    index_value = build_loss("lovasz_softmax", reduction="none")(logits, labels)
    one_hot_value = build_loss("lovasz_softmax", reduction="none")(logits, one_hot(labels, shape[1]).float())

    torch.testing.assert_close(value.double(), torch.stack(expected), rtol=0, atol=1e-6)
    torch.testing.assert_close(one_hot_value, index_value, rtol=0, atol=1e-7)


def test_lovasz_perfect_prediction_is_zero():
    labels = blob_labels((1, 3, 6, 6, 6), 3)
    logits = 1e4 * (2 * one_hot(labels, 3) - 1)

    assert build_loss("lovasz_softmax")(logits, labels).item() == 0.0


def exact_lovasz(errors: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The value and signed gradient of each row of errors with a 0/1 target, from an exact float64 sort."""
    errors, target = errors.double(), target.double()
    difference = torch.where(target > 0, -errors, errors)
    slope = torch.empty_like(difference)
    positions = torch.arange(errors.shape[1] + 1, dtype=torch.float64)
    sorted_lovasz_chunk(difference, target, None, slope, positions, hard_target=True)
    return torch.linalg.vecdot(difference, slope), slope


def binned_lovasz(errors: torch.Tensor, target: torch.Tensor, mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The value and signed gradient of each row from the float32 bucket counts."""
    difference = torch.where(target > 0, -errors, errors).float()
    if mask is not None:
        difference = difference * mask
    slope = torch.empty_like(difference)
    binned_lovasz_chunk(difference, target.float(), mask, slope)
    return torch.linalg.vecdot(difference, slope), slope


def test_lovasz_one_hot_floats_take_binned_path():
    # 40,960 voxels per row: a float one-hot target is recognised as 0/1 and counted like class indices.
    shape = (2, 3, 32, 32, 40)
    logits = make_logits(shape)
    labels = blob_labels(shape, shape[1])
    loss = build_loss("lovasz_softmax", reduction="none")

    assert torch.equal(loss(logits, one_hot(labels, 3).float()), loss(logits, labels))


def test_binned_lovasz_lies_below_exact_within_one_bucket():
    # The worst case for the buckets: the largest errors of a row crowd into one bucket, where the order of target
    # and other voxels changes the Jaccard steps most, because |T| is small.
    generator = torch.Generator().manual_seed(11)
    size = 4096
    target = torch.zeros(2, size)
    target[:, :8] = 1.0
    errors = torch.rand(2, size, generator=generator) * 0.3
    crowded = torch.randperm(size, generator=generator)[:600]
    errors[:, crowded] = 0.9 + torch.rand(2, 600, generator=generator) * 2.0**-BUCKET_BITS
    errors[1, :8] = 0.9 + 2.0 ** -(BUCKET_BITS + 1)

    exact, _ = exact_lovasz(errors, target)
    binned, _ = binned_lovasz(errors, target)

    shortfall = exact - binned.double()
    assert bool((shortfall >= -1e-7).all()), shortfall
    assert bool((shortfall <= 2.0**-BUCKET_BITS).all()), shortfall


def test_binned_lovasz_gives_tied_voxels_one_gradient():
    # Voxels 0-4 tie at error .8 (two target voxels, three others); the rest follow at .5 and .2.
    errors = torch.tensor([[0.8, 0.8, 0.8, 0.8, 0.8, 0.5, 0.5, 0.2, 0.2, 0.2]])
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0]])

    exact, _ = exact_lovasz(errors, target)
    binned, slope = binned_lovasz(errors, target)

    # Target voxels first within the tie: |T| = 4, so g = 1/4 for both; the other three share
    # J(2, 3) - J(2, 0) = (4 - 2) * 3 / (4 * 7), 1/14 each. The value is continuous, so it equals the exact one.
    torch.testing.assert_close(slope[0, :5], torch.tensor([-0.25, 1 / 14, -0.25, 1 / 14, 1 / 14]))
    torch.testing.assert_close(binned.double(), exact, rtol=0, atol=1e-7)


def test_binned_lovasz_row_without_target():
    errors = torch.tensor([[0.3, 0.7, 0.1, 0.7, 0.2]])
    target = torch.zeros_like(errors)

    binned, slope = binned_lovasz(errors, target)

    # J jumps from 0 to 1 at the first voxel, so the two tied largest errors share a gradient of 1.
    assert binned.item() == pytest.approx(0.7, abs=1e-7)
    torch.testing.assert_close(slope[0], torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0]))


def test_binned_lovasz_masked_voxels_equal_removed_ones():
    generator = torch.Generator().manual_seed(12)
    errors = torch.rand(3, 500, generator=generator)
    target = (torch.rand(3, 500, generator=generator) > 0.7).float()
    mask = (torch.rand(3, 500, generator=generator) > 0.2).float()
    mask[2] = 0.0

    masked, slope = binned_lovasz(errors, target, mask)

    assert bool((slope[mask == 0] == 0).all())
    for row in range(2):
        keep = mask[row] > 0
        cropped, cropped_slope = binned_lovasz(errors[row, keep][None], target[row, keep][None])
        torch.testing.assert_close(masked[row], cropped[0], rtol=1e-6, atol=0)
        torch.testing.assert_close(slope[row, keep], cropped_slope[0], rtol=0, atol=0)
    assert masked[2].item() == 0.0


def test_sort_errors_orders_rows_and_carries_targets():
    generator = torch.Generator().manual_seed(5)
    for rows in (6, 5000):
        errors = torch.rand((rows, 33), generator=generator)
        errors[:, :4] = 1.0
        errors[:, 4:8] = 0.0
        target = torch.rand((rows, 33), generator=generator)

        order, target_sorted = sort_errors(errors, target)
        errors_sorted = errors.view(-1)[order].view(rows, 33)

        assert torch.equal(order.view(rows, 33) // 33, torch.arange(rows).unsqueeze(1).expand(rows, 33))
        assert bool((errors_sorted[:, :-1] >= errors_sorted[:, 1:] - 2.0**-19).all())
        assert torch.equal(target_sorted, target.view(-1)[order].view(rows, 33))


def test_lovasz_invalid_classes_names_the_value():
    with pytest.raises(ValueError, match="classes must be one of .*'present'.*got 'some'"):
        build_loss("lovasz_softmax", classes="some")
