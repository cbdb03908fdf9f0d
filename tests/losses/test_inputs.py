"""SegmentationInputs, the validated inputs that every loss shares."""

from __future__ import annotations

import pytest
import torch
from loss_cases import blob_labels, make_logits

from scripts.losses import SegmentationInputs


def test_cached_tensors_keep_gradients_after_a_no_grad_access():
    logits = make_logits((2, 3, 6, 6, 6)).requires_grad_()
    inputs = SegmentationInputs(logits, blob_labels((2, 3, 6, 6, 6), 3))

    with torch.no_grad():
        first_log_probs = inputs.log_probs
        first_probs = inputs.probs
        first_target = inputs.target_log_probs

    assert first_log_probs.requires_grad
    assert first_probs.requires_grad
    assert first_target.requires_grad
    (inputs.log_probs.sum() + inputs.probs.sum() + inputs.target_log_probs.sum()).backward()
    assert logits.grad.abs().sum() > 0


def test_one_hot_target_has_no_gradient():
    logits = make_logits((1, 3, 4, 4)).requires_grad_()
    inputs = SegmentationInputs(logits, blob_labels((1, 3, 4, 4), 3))

    assert not inputs.target.requires_grad
    assert torch.equal(inputs.target.sum(dim=1), torch.ones(1, 4, 4))


@pytest.mark.parametrize("exponent", [0.3, 0.5, 0.75])
def test_bounded_power_power_and_chord(exponent):
    from scripts.losses.powers import POWER_LINEAR_BELOW, bounded_power

    above = torch.tensor([1e-5, 0.01, 0.5, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    bounded_power(above, exponent).sum().backward()
    torch.testing.assert_close(bounded_power(above.detach(), exponent), above.detach() ** exponent)
    torch.testing.assert_close(above.grad, exponent * above.detach() ** (exponent - 1.0))

    below = torch.tensor([0.0, 1e-8, 5e-7], dtype=torch.float64, requires_grad=True)
    bounded_power(below, exponent).sum().backward()
    slope = POWER_LINEAR_BELOW ** (exponent - 1.0)
    torch.testing.assert_close(bounded_power(below.detach(), exponent), below.detach() * slope)
    torch.testing.assert_close(below.grad, torch.full_like(below, slope))
