"""SegmentationInputs, the validated inputs that every loss shares."""

from __future__ import annotations

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
