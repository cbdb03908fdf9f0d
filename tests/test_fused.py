"""The fused softmax class sums against autograd, and the losses that use them against their generic path."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from scripts.losses import build_loss
from scripts.losses.fused import (
    VALUES,
    WEIGHTS,
    focal_cross_entropy_sum,
    powered_cross_entropy_sum,
    softmax_class_sums,
    target_log_softmax,
)
from scripts.losses.powers import bounded_power

ALL_TERMS = list(itertools.product(WEIGHTS, VALUES))


def reference_sums(logits, target, mask, terms, labels=None):
    """The same sums written with autograd, one tensor per quantity."""
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    floor = torch.finfo(logits.dtype).eps / 2.0
    values = {
        "log_p": log_p,
        "p": p,
        "p_squared": p * p,
        "log_1mp": torch.log((-torch.expm1(log_p)).clamp_min(floor)),
    }
    dims = tuple(range(2, logits.ndim))
    sums = []
    scales = {"target": target, "mask": mask, "nontarget": (1.0 if mask is None else mask) - target}
    for weight, value in terms:
        scale = scales[weight]
        sums.append((values[value] if scale is None else values[value] * scale).sum(dim=dims))
    target_log_p = None if labels is None else log_p.gather(1, labels.unsqueeze(1))[:, 0]
    return torch.stack(sums), target_log_p


def inputs(shape, dtype=torch.float64, ignore=False, soft=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=dtype) * 2.0
    labels = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    target = F.one_hot(labels, shape[1]).movedim(-1, 1).to(dtype)
    if soft:
        target = torch.softmax(torch.randn(shape, generator=generator, dtype=dtype), dim=1)
    mask = None
    if ignore:
        mask = (torch.rand((shape[0], 1, *shape[2:]), generator=generator) > 0.3).to(dtype)
        target = target * mask
    return logits, labels, target, mask


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 4, 3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all-voxels", "ignored-voxels"])
@pytest.mark.parametrize("soft", [False, True], ids=["one-hot", "soft"])
def test_values_match_autograd(shape, ignore, soft):
    logits, labels, target, mask = inputs(shape, ignore=ignore, soft=soft)
    # Labels only with the one-hot target they stand for.
    labels = None if soft else labels
    sums, target_log_p = softmax_class_sums(logits, target, mask, ALL_TERMS, labels)
    expected_sums, expected_target_log_p = reference_sums(logits, target, mask, ALL_TERMS, labels)
    torch.testing.assert_close(sums, expected_sums)
    if soft:
        assert target_log_p is None
    else:
        torch.testing.assert_close(target_log_p, expected_target_log_p)


# Without a mask-weighted log p, index labels let every target-weighted sum come from the target class alone.
TARGET_LOG_P_TERMS = [
    ("target", "log_p"),
    ("mask", "log_1mp"),
    ("target", "p"),
    ("target", "log_1mp"),
    ("target", "p_squared"),
    ("mask", "p"),
]


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 4, 3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all-voxels", "ignored-voxels"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_target_log_p_from_labels_matches_log_softmax(shape, ignore, dtype):
    logits, labels, target, mask = inputs(shape, dtype=dtype, ignore=ignore)
    logits = logits * 3.0
    sums, target_log_p = softmax_class_sums(logits, target, mask, TARGET_LOG_P_TERMS, labels)
    expected_sums, expected_target_log_p = reference_sums(logits, target, mask, TARGET_LOG_P_TERMS, labels)
    # float32: per voxel a few units in the last place (log(1 - p) from p here, from log p in the reference),
    # summed over up to 60 voxels.
    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(sums, expected_sums, **tolerance)
    torch.testing.assert_close(target_log_p, expected_target_log_p, **tolerance)
    # The same sums without labels take the log_softmax path.
    torch.testing.assert_close(softmax_class_sums(logits, target, mask, TARGET_LOG_P_TERMS)[0], sums)


def test_target_log_p_from_labels_gradient():
    logits, labels, target, mask = inputs((2, 3, 4, 3), ignore=True)
    logits.requires_grad_()
    generator = torch.Generator().manual_seed(2)
    weights = torch.randn((len(TARGET_LOG_P_TERMS), 2, 3), generator=generator, dtype=logits.dtype)

    def objective(x):
        sums, _ = softmax_class_sums(x, target, mask, TARGET_LOG_P_TERMS, labels)
        return (sums * weights).sum()

    assert torch.autograd.gradcheck(objective, (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("gap", [100.0, 1e4], ids=["subnormal-p", "zero-p"])
def test_target_log_p_of_underflowing_probabilities(gap):
    # The target class's probability is exp(-gap): subnormal in float32 at 100 and zero at 1e4. Its log must be
    # -gap (to rounding), not -inf or a subnormal's imprecise log, and voxels around it keep their own values.
    logits = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    logits[0, 0, 1, 2] = -gap
    logits[0, 1:, 1, 2] = 0.0
    target = F.one_hot(labels, 3).movedim(-1, 1).float()
    sums, target_log_p = softmax_class_sums(logits, target, None, TARGET_LOG_P_TERMS, labels)
    expected = F.log_softmax(logits, dim=1)[:, 0]
    torch.testing.assert_close(target_log_p, expected)
    assert target_log_p[0, 1, 2].item() == pytest.approx(-gap - math.log(2.0), rel=1e-6)
    torch.testing.assert_close(sums[0], expected.sum(dim=(1, 2)).unsqueeze(-1) * target[:, :, 0, 0])


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 3, 3, 3, 4)], ids=["2d", "3d"])
@pytest.mark.parametrize("ignore", [False, True], ids=["all-voxels", "ignored-voxels"])
@pytest.mark.parametrize("with_labels", [False, True], ids=["sums", "sums-and-target-log-p"])
def test_gradient_matches_finite_differences(shape, ignore, with_labels):
    logits, labels, target, mask = inputs(shape, ignore=ignore)
    logits.requires_grad_()
    # Random weights of every output, so that each term's gradient takes part.
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn((len(ALL_TERMS), shape[0], shape[1]), generator=generator, dtype=logits.dtype)
    voxel_weights = torch.randn((shape[0], *shape[2:]), generator=generator, dtype=logits.dtype)

    def objective(x):
        sums, target_log_p = softmax_class_sums(x, target, mask, ALL_TERMS, labels if with_labels else None)
        value = (sums * weights).sum()
        if with_labels:
            counted_weights = voxel_weights if mask is None else voxel_weights * mask[:, 0]
            value = value + (target_log_p * counted_weights).sum()
        return value

    assert torch.autograd.gradcheck(objective, (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("weight, value", ALL_TERMS)
def test_single_term_gradient(weight, value):
    logits, _, target, mask = inputs((2, 3, 4, 4), ignore=True)
    fused = logits.clone().requires_grad_()
    plain = logits.clone().requires_grad_()
    softmax_class_sums(fused, target, mask, [(weight, value)])[0].pow(2).sum().backward()
    reference_sums(plain, target, mask, [(weight, value)])[0].pow(2).sum().backward()
    torch.testing.assert_close(fused.grad, plain.grad)


def test_certain_voxels_stay_finite():
    # A logit gap of 1e4 makes p round to exactly 1 and 0: log(1 - p) is clamped there, with zero gradient.
    logits = torch.zeros(1, 3, 2, 2)
    logits[:, 0] = 1e4
    labels = torch.ones(1, 2, 2, dtype=torch.long)
    target = F.one_hot(labels, 3).movedim(-1, 1).float()
    logits.requires_grad_()
    sums, target_log_p = softmax_class_sums(logits, target, None, ALL_TERMS, labels)
    assert torch.isfinite(sums).all()
    assert torch.isfinite(target_log_p).all()
    # A binary cross-entropy: -log p of the target class, -log(1 - p) of the others.
    complement, target_complement = (
        sums[ALL_TERMS.index(("mask", "log_1mp"))],
        sums[ALL_TERMS.index(("target", "log_1mp"))],
    )
    (-target_log_p.sum() - complement.sum() + target_complement.sum()).backward()
    assert torch.isfinite(logits.grad).all()
    # The confidently wrong voxels still pull the target class up and the wrong class down.
    assert (logits.grad[:, 1] < -0.9).all()
    assert (logits.grad[:, 0] > 0.9).all()


def test_unknown_term_and_single_channel_raise():
    logits, _, target, _ = inputs((1, 3, 2, 2))
    with pytest.raises(ValueError, match="unknown term"):
        softmax_class_sums(logits, target, None, [("target", "log_q")])
    with pytest.raises(ValueError, match="at least two channels"):
        softmax_class_sums(logits[:, :1], target[:, :1], None, [("target", "p")])


# The losses on the fused path, against the same loss on a path that does not use it: a one-hot target for
# exp_log and unified_focal (their fused path needs class indices), and for combo the autograd sums below.
@pytest.mark.parametrize("name", ["exp_log", "unified_focal"])
@pytest.mark.parametrize("options", [{}, {"batch": True}, {"include_background": False}, {"ignore_index": 9}])
def test_fused_loss_equals_one_hot_path(name, options):
    logits, labels, target, _ = inputs((2, 3, 4, 5, 3))
    index_target = labels.unsqueeze(1).clone()
    if "ignore_index" in options:
        index_target[:, :, :2] = 9
        target = target * (index_target != 9)
    loss = build_loss(name, reduction="none", **options)
    fused_logits = logits.clone().requires_grad_()
    plain_logits = logits.clone().requires_grad_()
    fused = loss(fused_logits, index_target)
    plain = loss(plain_logits, target)
    torch.testing.assert_close(fused, plain)
    fused.sum().backward()
    plain.sum().backward()
    torch.testing.assert_close(fused_logits.grad, plain_logits.grad)


@pytest.mark.parametrize("name", ["combo", "exp_log", "unified_focal"])
@pytest.mark.parametrize("options", [{"batch": True}, {"ignore_index": 9}, {"class_weights": [0.5, 1.0, 2.0]}])
def test_fused_loss_gradcheck(name, options):
    logits, labels, _, _ = inputs((2, 3, 4, 3, 3))
    index_target = labels.unsqueeze(1).clone()
    if "ignore_index" in options:
        index_target[0, :, 0] = 9
    loss = build_loss(name, **options)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: loss(x, index_target), (logits,), eps=1e-6, atol=1e-6)


def test_combo_equals_autograd_formula():
    logits, labels, target, _ = inputs((2, 3, 5, 4))
    loss = build_loss("combo", reduction="none", alpha=0.3, beta=0.7, include_background=False)
    value = loss(logits, labels.unsqueeze(1))

    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    log_1mp = torch.log(-torch.expm1(log_p))
    voxels = logits[0, 0].numel()
    bce = -(0.7 * target * log_p + 0.3 * (1 - target) * log_1mp).sum(dim=(2, 3)) / voxels
    dice = (2 * (p * target).sum(dim=(2, 3)) + 1e-5) / (p.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + 1e-5)
    expected = 0.3 * bce[:, 1:].mean(dim=1) - 0.7 * dice[:, 1:].mean(dim=1)
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("shape", [(2, 3, 5, 6), (2, 4, 3, 4, 5)], ids=["2d", "3d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_target_log_softmax_matches_autograd(shape, dtype):
    logits, labels, _, _ = inputs(shape, dtype=dtype)
    logits = logits * 3.0
    # One voxel whose target probability underflows (its label is class 0 there).
    corner = (0, slice(None), *(0,) * (len(shape) - 2))
    logits[corner] = torch.tensor([-1e4, 0.0, 1e4, 0.0][: shape[1]], dtype=dtype)
    labels[(0, *(0,) * (len(shape) - 2))] = 0
    fused = logits.clone().requires_grad_()
    plain = logits.clone().requires_grad_()
    weights = torch.randn(labels.shape, generator=torch.Generator().manual_seed(4), dtype=dtype)

    value = target_log_softmax(fused, labels)
    expected = F.log_softmax(plain, dim=1).gather(1, labels.unsqueeze(1))[:, 0]
    (value * weights).sum().backward()
    (expected * weights).sum().backward()

    tolerance = {"rtol": 1e-6, "atol": 1e-6} if dtype == torch.float32 else {}
    torch.testing.assert_close(value, expected, **tolerance)
    torch.testing.assert_close(fused.grad, plain.grad, **tolerance)
    assert torch.isfinite(value).all()


def test_target_log_softmax_gradcheck():
    logits, labels, _, _ = inputs((2, 3, 4, 3))
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: target_log_softmax(x, labels), (logits,), eps=1e-6, atol=1e-6)


def per_voxel_inputs(seed=0):
    """Target log-probabilities spread from certain to hopeless voxels, and voxel weights with zeros."""
    generator = torch.Generator().manual_seed(seed)
    log_probs = -torch.rand(2, 4, 5, generator=generator, dtype=torch.float64) * 6.0
    # Bases below the power's linear threshold, in both the power of -log p and the focal factor 1 - p.
    log_probs[0, 0, :3] = torch.tensor([0.0, -3e-7, -5e-8], dtype=torch.float64)
    weights = torch.rand(2, 4, 5, generator=generator, dtype=torch.float64)
    weights[1, 2] = 0.0
    return log_probs, weights


def powered_reference(log_probs, weights, exponent):
    return (bounded_power(-log_probs, exponent) * weights).flatten(start_dim=1).sum(dim=1)


def focal_reference(log_probs, weights, gamma):
    modulation = bounded_power(1.0 - log_probs.exp(), gamma)
    return -(modulation * log_probs * weights).flatten(start_dim=1).sum(dim=1)


def focal_from_probs(log_probs, weights, gamma):
    """focal_cross_entropy_sum given the target probabilities too, as the fused pass returns them."""
    return focal_cross_entropy_sum(log_probs, weights, gamma, log_probs.detach().exp())


PER_VOXEL_CASES = (
    [(powered_cross_entropy_sum, powered_reference, e) for e in (0.3, 0.75, 1.0, 2.0)]
    + [(focal_cross_entropy_sum, focal_reference, gamma) for gamma in (0.0, 0.5, 0.8, 1.0, 2.0)]
    + [(focal_from_probs, focal_reference, gamma) for gamma in (0.5, 0.8)]
)


@pytest.mark.parametrize(
    "fused, reference, exponent", PER_VOXEL_CASES, ids=[f"{f.__name__}-{e}" for f, _, e in PER_VOXEL_CASES]
)
def test_per_voxel_sum_matches_autograd(fused, reference, exponent):
    log_probs, weights = per_voxel_inputs()
    log_probs.requires_grad_(True)
    value = fused(log_probs, weights, exponent)
    expected = reference(log_probs, weights, exponent)
    torch.testing.assert_close(value, expected)

    upstream = torch.tensor([0.7, -1.3], dtype=torch.float64)
    (grad,) = torch.autograd.grad(value, log_probs, upstream)
    (expected_grad,) = torch.autograd.grad(expected, log_probs, upstream)
    torch.testing.assert_close(grad, expected_grad)

    # Away from the kink at the threshold, the slope is the finite-difference one.
    smooth = -(torch.rand(2, 3, 4, dtype=torch.float64) * 3.0 + 0.1)
    assert torch.autograd.gradcheck(lambda x: fused(x, weights[:, :3, :4], exponent), (smooth.requires_grad_(True),))


@pytest.mark.parametrize("ignore", [False, True], ids=["all-voxels", "ignored-voxels"])
def test_log_complement_sums_in_float32(ignore):
    # Sums of log(1 - p) over a volume whose voxel count is not a multiple of four, against float64.
    logits, labels, target, mask = inputs((2, 3, 9, 10, 11), dtype=torch.float32, ignore=ignore)
    terms = [("mask", "log_1mp"), ("target", "log_1mp"), ("nontarget", "log_1mp")]
    expected, _ = reference_sums(logits.double(), target.double(), None if mask is None else mask.double(), terms)
    for given_labels in (labels, None):
        sums, _ = softmax_class_sums(logits, target, mask, terms, given_labels)
        torch.testing.assert_close(sums.double(), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("terms", [[("target", "p")], [("mask", "log_p")]], ids=["target-probs", "log-softmax"])
def test_target_probs_are_exp_of_target_log_probs(terms):
    logits, labels, target, mask = inputs((2, 3, 5, 6), dtype=torch.float32, ignore=True)
    _, target_log_p, target_p = softmax_class_sums(logits, target, mask, terms, labels, with_target_probs=True)
    torch.testing.assert_close(target_p, target_log_p.exp())
    assert not target_p.requires_grad
    assert softmax_class_sums(logits, target, mask, terms, None, with_target_probs=True)[2] is None
