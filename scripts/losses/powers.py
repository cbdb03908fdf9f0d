"""Powers below one with a bounded slope at zero, shared by the focal, focal Tversky and combination losses.

The slope ``e * x ** (e - 1)`` of a power ``x ** e`` with ``e < 1`` is unbounded at ``x = 0``, which a perfectly
segmented class (``1 - TI = 0``) or a certain voxel (``1 - p = 0``) reaches, and autograd then returns inf or NaN.
Below ``POWER_LINEAR_BELOW`` the power is replaced by its chord ``x * POWER_LINEAR_BELOW ** (e - 1)``: equal at the
threshold, zero at zero and with a finite slope.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Bases below this value make the power linear. Float32 resolves 1 - x only to about 1e-7 near x = 1, so
# smaller bases of "1 - index" or "-log(p)" are mostly rounding error and would only feed the steep slope.
POWER_LINEAR_BELOW = 1e-6


def bounded_power(base: Tensor, exponent: float) -> Tensor:
    """Compute ``base ** exponent`` for ``base >= 0`` with a bounded gradient when ``exponent < 1``.

    Below ``POWER_LINEAR_BELOW`` the value is the chord of the module docstring. Negative bases, which only
    rounding produces (an index a hair above one), count as zero.
    """
    base = base.clamp_min(0.0)
    if exponent == 0.0:
        return torch.ones_like(base)
    if exponent >= 1.0:
        return base.pow(exponent)
    return _BoundedPower.apply(base, float(exponent))


def power_and_ratio(base: Tensor, exponent: float) -> tuple[Tensor, Tensor]:
    """Return the bounded power of a non-negative ``base`` for ``0 < exponent < 1``, and ``max(base, t) ** (e - 1)``.

    The second tensor gives the slope (:func:`power_slope`) without another ``pow``. Both serve hand-written backward
    passes, and :func:`bounded_power` is the differentiable form.
    """
    ratio = base.clamp_min(POWER_LINEAR_BELOW).pow_(exponent - 1.0)
    return base * ratio, ratio


def power_slope(base: Tensor, ratio: Tensor, exponent: float) -> Tensor:
    """Return the slope of the bounded power at ``base``, from the ``ratio`` of :func:`power_and_ratio`.

    That is ``e * x ** (e - 1)`` above the threshold and the chord's slope ``t ** (e - 1)`` below it. When no base
    lies below the threshold, which one reduction decides, the select over every voxel is skipped. On a GPU that
    reduction waits for the device.
    """
    if base.numel() > 0 and bool(base.amin() >= POWER_LINEAR_BELOW):
        return ratio * exponent
    return torch.where(base >= POWER_LINEAR_BELOW, ratio * exponent, ratio)


class _BoundedPower(torch.autograd.Function):
    """``x * max(x, t) ** (e - 1)`` with the analytic slope of :func:`power_slope`.

    Autograd would differentiate the power with a second ``pow`` over the whole tensor, whereas this slope reuses
    the forward's ``max(x, t) ** (e - 1)``. Only first derivatives are supported.
    """

    @staticmethod
    def forward(ctx, base: Tensor, exponent: float) -> Tensor:
        value, ratio = power_and_ratio(base, exponent)
        ctx.save_for_backward(base, ratio)
        ctx.exponent = exponent
        return value

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        base, ratio = ctx.saved_tensors
        return grad * power_slope(base, ratio, ctx.exponent), None
