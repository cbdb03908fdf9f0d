"""TopK loss (nnU-Net form) against hand-derived values."""

from __future__ import annotations

import math

import pytest
import torch
from loss_cases import make_labels, make_logits

from scripts.losses import build_loss
from scripts.losses.pixel.topk import _sample_positions, mean_of_largest

PROBS = torch.tensor([[0.9, 0.6], [0.2, 0.1]], dtype=torch.float64)
TARGET = torch.tensor([[1, 1], [0, 0]])[None, None]
LOGITS = torch.logit(PROBS)[None, None]
# Voxel cross-entropies of the 2 x 2 example: -ln 0.9, -ln 0.6, -ln 0.8, -ln 0.9.
VOXEL_CE = [-math.log(0.9), -math.log(0.6), -math.log(0.8), -math.log(0.9)]


def binary_logits_for_losses(losses: list[list[float]]) -> torch.Tensor:
    """Sigmoid logits whose voxels, all labelled 1, have the given cross-entropies: p = exp(-loss)."""
    probs = torch.exp(-torch.tensor(losses, dtype=torch.float64))
    return torch.logit(probs).reshape(len(losses), 1, 1, -1)


def test_topk_binary_hand_value():
    # k = 50 %: 2 of 4 voxels, the two largest cross-entropies -ln 0.6 and -ln 0.8.
    value = build_loss("topk", k=50)(LOGITS, TARGET)

    assert value.item() == pytest.approx(0.366985, abs=1e-6)
    assert value.item() == pytest.approx((VOXEL_CE[1] + VOXEL_CE[2]) / 2, abs=1e-12)


def test_topk_default_keeps_at_least_one_voxel():
    # k = 10 % of 4 voxels is 0.4, rounded down to 0, so the single hardest voxel (-ln 0.6) is kept.
    value = build_loss("topk")(LOGITS, TARGET)

    assert value.item() == pytest.approx(-math.log(0.6), abs=1e-12)


def test_topk_full_percentage_is_cross_entropy():
    logits = make_logits((2, 3, 6, 5, 4))
    labels = make_labels((2, 3, 6, 5, 4), 3)

    topk = build_loss("topk", k=100)(logits, labels)
    cross_entropy = build_loss("cross_entropy")(logits, labels)

    torch.testing.assert_close(topk, cross_entropy)


def test_topk_3d_multiclass_hand_value():
    # Four voxels in a 1 x 1 x 4 volume with softmax probabilities chosen directly (logits = log p):
    # targets 0, 1, 2, 0 with p_target 0.7, 0.6, 0.5, 0.25; the two largest losses are -ln 0.25 and -ln 0.5.
    probs = torch.tensor(
        [[0.7, 0.1, 0.3, 0.25], [0.2, 0.6, 0.2, 0.25], [0.1, 0.3, 0.5, 0.5]], dtype=torch.float64
    ).reshape(1, 3, 1, 1, 4)
    labels = torch.tensor([0, 1, 2, 0]).reshape(1, 1, 1, 1, 4)

    value = build_loss("topk", k=50)(torch.log(probs), labels)

    assert value.item() == pytest.approx((-math.log(0.25) - math.log(0.5)) / 2, abs=1e-12)


def test_topk_selects_per_sample_or_over_batch():
    # Sample 1 has voxel losses 0.1 to 0.4, sample 2 has 1 to 4; k = 50 %.
    logits = binary_logits_for_losses([[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]])
    labels = torch.ones((2, 1, 1, 4), dtype=torch.long)

    per_sample = build_loss("topk", k=50, reduction="none")(logits, labels)
    pooled = build_loss("topk", k=50, batch=True)(logits, labels)

    torch.testing.assert_close(per_sample, torch.tensor([0.35, 3.5], dtype=torch.float64))
    # Over the batch the top 4 of 8 are 4, 3, 2 and 1, all from the second sample.
    assert pooled.item() == pytest.approx(2.5, abs=1e-12)


def test_topk_ignored_voxels_removed_before_selection():
    # Ignoring the hardest voxel (-ln 0.6) leaves 3 voxels; 50 % of 3 rounds down to 1, the voxel with -ln 0.8.
    labels = TARGET.clone()
    labels[0, 0, 0, 1] = 255
    changed_logits = LOGITS.clone()
    changed_logits[0, 0, 0, 1] = -30.0

    value = build_loss("topk", k=50, ignore_index=255)(LOGITS, labels)
    with_other_logit = build_loss("topk", k=50, ignore_index=255)(changed_logits, labels)

    assert value.item() == pytest.approx(-math.log(0.8), abs=1e-12)
    assert with_other_logit.item() == pytest.approx(value.item(), abs=1e-12)


def test_topk_class_weights_apply_before_selection():
    # Background weight 3: the background losses become 3 (-ln 0.8) = 0.669 and 3 (-ln 0.9) = 0.316, so the top
    # two are 0.669 and -ln 0.6 = 0.511.
    value = build_loss("topk", k=50, class_weights=[3.0, 1.0])(LOGITS, TARGET)

    assert value.item() == pytest.approx((3 * VOXEL_CE[2] + VOXEL_CE[1]) / 2, abs=1e-12)


def test_topk_sample_with_every_voxel_ignored_is_zero():
    logits = LOGITS.repeat(2, 1, 1, 1).requires_grad_()
    labels = TARGET.repeat(2, 1, 1, 1)
    labels[1] = 255

    value = build_loss("topk", k=50, ignore_index=255, reduction="none")(logits, labels)
    value.sum().backward()

    assert value[1].item() == 0.0
    assert value[0].item() == pytest.approx((VOXEL_CE[1] + VOXEL_CE[2]) / 2, abs=1e-12)
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[1] == 0).all()


def test_topk_gradient_only_on_selected_voxels():
    logits = LOGITS.clone().requires_grad_()

    build_loss("topk", k=50)(logits, TARGET).backward()

    selected = logits.grad[0, 0] != 0
    assert selected.tolist() == [[False, True], [True, False]]


@pytest.mark.parametrize("k", [0, -5, 100.5, float("nan"), float("inf")])
def test_topk_invalid_percentage_raises(k):
    with pytest.raises(ValueError, match=r"k must be a finite number in \(0, 100\]"):
        build_loss("topk", k=k)


def test_topk_percentage_as_text_raises():
    with pytest.raises(ValueError, match=r"k of loss 'topk' must be a number \(default 10.0\), got '10' of type str"):
        build_loss("topk", k="10")


def _plain_top_mean(rows, count):
    return torch.topk(rows, count, dim=1).values.mean(dim=1)


@pytest.mark.parametrize(
    ("shape", "count"), [((4, 65536), 6553), ((2, 40000), 4000), ((3, 100000), 7)], ids=["2d", "3d", "few"]
)
def test_mean_of_largest_equals_topk(shape, count):
    # Rows long enough for the candidate filter, with spatially structured values as voxel losses have.
    generator = torch.Generator().manual_seed(0)
    rows = torch.rand(shape, generator=generator, dtype=torch.float64)
    rows = rows * torch.linspace(0.0, 3.0, shape[1], dtype=torch.float64)
    fast = rows.clone().requires_grad_()
    plain = rows.clone().requires_grad_()

    value = mean_of_largest(fast, count)
    expected = _plain_top_mean(plain, count)
    value.sum().backward()
    expected.sum().backward()

    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.grad, plain.grad)


def test_mean_of_largest_misleading_sample_fallback():
    # Large values exactly at the sampled positions make the estimated threshold too high: too few candidates.
    length, count = 65536, 6553
    rows = torch.rand(2, length, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rows[:, _sample_positions(length)] += 10.0
    torch.testing.assert_close(mean_of_largest(rows, count), _plain_top_mean(rows, count))
    # Equal values: every entry passes the threshold.
    constant = torch.full((2, length), 0.25, dtype=torch.float64)
    torch.testing.assert_close(mean_of_largest(constant, count), _plain_top_mean(constant, count))


def test_mean_of_largest_tie_gradient_shared():
    # Integer-valued entries tie at the count-th largest value: the value is topk's, and the tied entries share
    # the weight that is left after the larger ones, so each row's gradient still sums to one.
    length, count = 65536, 6000
    rows = torch.randint(0, 200, (2, length), generator=torch.Generator().manual_seed(2)).double().requires_grad_()
    value = mean_of_largest(rows, count)
    value.sum().backward()
    kth = torch.topk(rows.detach(), count, dim=1).values[:, -1:]
    tied = rows.detach() == kth

    torch.testing.assert_close(value, _plain_top_mean(rows.detach(), count))
    torch.testing.assert_close(rows.grad.sum(dim=1), torch.ones(2, dtype=torch.float64))
    assert (rows.grad[rows.detach() > kth] == 1.0 / count).all()
    for row in range(2):
        shares = rows.grad[row][tied[row]]
        assert (shares == shares[0]).all()
        assert 0.0 < shares[0].item() < 1.0 / count


def test_topk_loss_filter_equals_topk():
    # 2 x 3 x 40^3: 64,000 voxels per sample, long enough for the candidate filter of mean_of_largest.
    logits = make_logits((2, 3, 40, 40, 40))
    labels = make_labels((2, 3, 40, 40, 40), 3)
    voxel_loss = torch.nn.functional.cross_entropy(logits, labels[:, 0], reduction="none").reshape(2, -1)
    expected = _plain_top_mean(voxel_loss, 6400)
    torch.testing.assert_close(build_loss("topk", reduction="none")(logits, labels), expected)
