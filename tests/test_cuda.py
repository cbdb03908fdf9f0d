"""Every registered loss on a GPU: the CPU's values and gradients in float32, and float32 results under autocast.

Skipped without CUDA. ``SEGLOSSES_TEST_DEVICE=cpu`` runs the same checks on the CPU (against itself, and with
bfloat16 autocast), which exercises the test code on a machine without a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch
from loss_cases import blob_labels, build, extra_inputs, make_logits

from scripts.losses import list_losses

DEVICE = torch.device(os.environ.get("SEGLOSSES_TEST_DEVICE", "cuda"))
NAMES = [spec.name for spec in list_losses()]

pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")


def to_device(value):
    """Move a tensor or module extra input to the test device, and return anything else unchanged."""
    if torch.is_tensor(value) or isinstance(value, torch.nn.Module):
        return value.to(DEVICE)
    return value


def value_and_gradient(name: str, logits: torch.Tensor, labels: torch.Tensor, device: torch.device, dtype=None):
    """Return the loss of ``name`` computed on ``device``, and the gradient of its logits on the CPU in float32."""
    loss = build(name).to(device)
    extras = {
        key: to_device(value) if device == DEVICE else value
        for key, value in extra_inputs(name, logits, labels).items()
    }
    # A copy, so that the caller's logits (from which the extra inputs were built) stay without gradient.
    inputs = logits.to(device=device, dtype=dtype or logits.dtype, copy=True).requires_grad_()
    value = loss(inputs, labels.to(device), **extras)
    (gradient,) = torch.autograd.grad(value, inputs)
    return value, gradient.float().cpu()


@pytest.mark.parametrize("name", NAMES)
def test_loss_on_device_equals_cpu(name):
    shape = (2, 3, 8, 10, 6)
    labels = blob_labels(shape, shape[1])
    logits = make_logits(shape)

    expected, expected_gradient = value_and_gradient(name, logits, labels, torch.device("cpu"))
    value, gradient = value_and_gradient(name, logits, labels, DEVICE)

    assert value.device.type == DEVICE.type
    torch.testing.assert_close(value.cpu(), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gradient, expected_gradient, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_autocast_on_device_computes_in_float32(name):
    # 2 x 3 x 48^3 = 663,552 values: float16 sums of this size overflow unless the loss accumulates in float32.
    shape = (2, 3, 48, 48, 48)
    labels = blob_labels(shape, shape[1])
    logits = make_logits(shape, scale=1.0)
    half = torch.float16 if DEVICE.type == "cuda" else torch.bfloat16
    expected, _ = value_and_gradient(name, logits, labels, torch.device("cpu"))

    with torch.autocast(device_type=DEVICE.type, dtype=half):
        value, gradient = value_and_gradient(name, logits, labels, DEVICE, dtype=half)

    assert value.dtype == torch.float32
    assert torch.isfinite(gradient).all()
    torch.testing.assert_close(value.cpu(), expected, rtol=2e-2, atol=2e-2)
