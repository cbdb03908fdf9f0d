"""Per-class sums of softmax quantities in one pass, with a hand-written backward.

Most region and combination losses reduce the softmax output to a few sums per sample and class before any
nonlinearity: the soft intersection ``sum t p``, the prediction volume ``sum p``, the cross-entropy sum
``sum t log p``, the sum of ``log(1 - p)``. Written with autograd, every product, every ``log`` and ``exp`` and the
softmax itself store a full ``(B, C, *spatial)`` tensor and replay it backwards, and a loss that needs both the
probabilities and their logarithm runs two softmax backward passes. :func:`softmax_class_sums` computes all the
requested sums from one softmax (or log-softmax) of the logits, and returns the gradient of the logits from the
saved probabilities:

.. math:: \\frac{\\partial L}{\\partial z_{nc}} = G_{nc} - p_{nc} \\sum_k G_{nk}, \\qquad
          G_{nc} = \\frac{\\partial L}{\\partial \\log p_{nc}}
                 = a_{nc} + b_{nc} \\, p_{nc} + 2 e_{nc} \\, p_{nc}^2 - d_{nc} \\frac{p_{nc}}{1 - p_{nc}}

where ``a``, ``b``, ``e`` and ``d`` collect the incoming gradients of the sums of ``log p``, ``p``, ``p^2`` and
``log(1 - p)``, each weighted as its sum was (by the target, by the mask of the voxels in the loss, or by their
difference).

The result equals the autograd computation to rounding, and ``tests/test_fused.py`` checks both the values and the
gradient (``gradcheck`` in float64). Only the softmax case is fused. A sigmoid (one channel) keeps the autograd
path of :class:`~scripts.losses.base.SegmentationInputs`.

The per-voxel terms of the combination losses, a power of the cross-entropy (:func:`powered_cross_entropy_sum`) and
the focal cross-entropy (:func:`focal_cross_entropy_sum`), are summed the same way: the forward keeps the pieces of
the power that the slope needs, and the backward is a few elementwise passes over the voxels. Through autograd each
clamp, power and product records a node whose backward is one or two more passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .powers import bounded_power, power_and_ratio, power_slope

# The values that can be summed over the voxels of each class, and their weights. The "target" weight is the one-hot
# or soft target (zero at ignored voxels), "mask" is one at every voxel in the loss, and "nontarget" is mask minus
# target (the negatives of a binary cross-entropy).
VALUES = ("log_p", "p", "p_squared", "log_1mp")
WEIGHTS = ("target", "mask", "nontarget")


def softmax_class_sums(
    logits: Tensor,
    target: Tensor,
    mask: Tensor | None,
    terms: Sequence[tuple[str, str]],
    labels: Tensor | None = None,
    with_target_probs: bool = False,
) -> tuple[Tensor, Tensor | None] | tuple[Tensor, Tensor | None, Tensor | None]:
    """Return ``sum_n w_nc v(p_nc)`` for each ``(weight, value)`` in ``terms``, and the target log-probabilities.

    The sums have shape ``(len(terms), B, C)``. With ``labels``, the second result is ``log p`` of each voxel's
    target class, ``(B, *spatial)``, for a per-voxel term such as a powered cross-entropy; otherwise ``None``.
    ``with_target_probs=True`` adds a third result: ``p`` of each voxel's target class, without gradient (the
    gradient of a term in ``p`` goes through the log-probability), or ``None`` without ``labels``.

    Args:
        logits: ``(B, C, *spatial)`` with ``C >= 2``; the probabilities are their softmax over ``C``.
        target: ``(B, C, *spatial)`` one-hot or soft target, zero at ignored voxels; no gradient flows into it.
        mask: ``(B, 1, *spatial)`` with one at the voxels in the loss, or ``None`` when every voxel counts.
        terms: pairs of a weight in ``WEIGHTS`` (``"target"``, ``"mask"``, or ``"nontarget"``, the mask minus the
            target) and a value in ``VALUES``. ``log_1mp`` is ``log(1 - p)`` with ``1 - p`` clamped to
            :func:`complement_floor`, where its gradient is zero (a voxel whose probability rounds to one).
        labels: ``(B, *spatial)`` int64 class indices whose one-hot is ``target`` (any class at ignored voxels:
            the gradient of their log-probability is dropped, so the caller must leave them out of its loss).
            They also let a ``("target", "log_p")`` sum take the log of the target class's probability alone
            instead of a whole ``log_softmax``. ``None`` for a soft target.

    Raises:
        ValueError: for an unknown weight or value, or a single channel.
    """
    terms = tuple((str(weight), str(value)) for weight, value in terms)
    for weight, value in terms:
        if weight not in WEIGHTS or value not in VALUES:
            raise ValueError(f"unknown term ({weight!r}, {value!r}); weights are {WEIGHTS}, values are {VALUES}.")
    if logits.shape[1] < 2:
        raise ValueError(f"softmax_class_sums needs at least two channels, got logits of shape {tuple(logits.shape)}.")
    sums, target_log_probs, target_probs = _SoftmaxClassSums.apply(
        logits, target.detach(), None if mask is None else mask.detach(), terms, labels
    )
    if labels is None:
        target_log_probs = target_probs = None
    if with_target_probs:
        return sums, target_log_probs, target_probs
    return sums, target_log_probs


class _SoftmaxClassSums(torch.autograd.Function):
    """The forward and backward of :func:`softmax_class_sums`.

    On CPU, a fresh ``(B, C, *spatial)`` tensor costs about as much as the arithmetic that fills it (the pages are
    new to the process each time), so both passes reuse buffers and work in place where they can.
    """

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        target: Tensor,
        mask: Tensor | None,
        terms: tuple[tuple[str, str], ...],
        labels: Tensor | None,
    ):
        ctx.set_materialize_grads(False)
        dims = tuple(range(2, logits.ndim))
        values = {value for _, value in terms}
        # With index labels, the target-weighted sum of log p needs log p at the target class only.
        full_log_p = any(value == "log_p" and (weight == "mask" or labels is None) for weight, value in terms)
        with torch.no_grad():
            log_probs = None
            if full_log_p:
                log_probs = torch.log_softmax(logits, dim=1)
                probs = log_probs.exp()
            else:
                probs = torch.softmax(logits, dim=1)
            target_log_probs = logits.new_empty(0)
            picked = None
            if labels is not None:
                if log_probs is not None:
                    target_log_probs = log_probs.gather(1, labels.unsqueeze(1))[:, 0]
                else:
                    picked = probs.gather(1, labels.unsqueeze(1))[:, 0]
                    target_log_probs = _target_log_probs(logits, picked, labels)
            computed: dict[str, Tensor] = {"p": probs}
            # A mask-weighted sum of log(1 - p) needs no log(1 - p) tensor (see _sum_of_logs), and neither does a
            # target-weighted or non-target-weighted one with labels.
            needs_log_complement = {"target": picked is None, "mask": False, "nontarget": labels is None}
            if any(value == "log_1mp" and needs_log_complement[weight] for weight, value in terms):
                # log1p(-p) measured faster than log(1 - p) on CPU.
                log_complement = probs.neg().log1p_()
                computed["log_1mp"] = log_complement.clamp_min_(math.log(complement_floor(probs.dtype)))
            if "p_squared" in values:
                # probs * probs: square() dispatches to the slower pow kernel on CPU.
                computed["p_squared"] = probs * probs
            if log_probs is not None:
                computed["log_p"] = log_probs
            elif "log_p" in values:
                # Only target-weighted: the target is one-hot, so t * log p = t * (log p of the target class).
                computed["log_p"] = target_log_probs.unsqueeze(1)
            at_labels = {}
            if picked is not None:
                target_values = [value for weight, value in terms if weight == "target"]
                at_labels = _sums_at_labels(target, picked, target_log_probs, target_values)
            sums = []
            scratch = None
            for weight, value in terms:
                if weight == "target" and value in at_labels:
                    sums.append(at_labels[value])
                    continue
                if value == "log_1mp" and value not in computed:
                    sums.append(_log_complement_sums(probs, target if weight == "nontarget" else None, mask))
                    continue
                if weight == "nontarget":
                    scale = torch.rsub(target, 1.0) if mask is None else torch.rsub(target, 1.0).mul_(mask)
                else:
                    scale = target if weight == "target" else mask
                if scale is None:
                    sums.append(computed[value].sum(dim=dims))
                    continue
                if scratch is None:
                    scratch = torch.empty_like(probs)
                sums.append(torch.mul(computed[value], scale, out=scratch).sum(dim=dims))
            if labels is None:
                target_probs = logits.new_empty(0)
            elif picked is None:
                target_probs = target_log_probs.exp()
            else:
                target_probs = picked
        ctx.terms = terms
        ctx.save_for_backward(target, mask, probs)
        if labels is None:
            ctx.mark_non_differentiable(target_log_probs)
        ctx.mark_non_differentiable(target_probs)
        stacked = torch.stack(sums) if sums else logits.new_zeros((0, *logits.shape[:2]))
        return stacked, target_log_probs, target_probs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_sums: Tensor | None, grad_target_log_probs: Tensor | None, _: Tensor | None):
        target, mask, probs = ctx.saved_tensors
        # The incoming gradient of each sum, per weight, shaped to broadcast over the voxels, with its value.
        coefficients: dict[str, list[tuple[str, Tensor]]] = {"target": [], "mask": []}
        if grad_sums is not None:
            broadcast = (*grad_sums.shape[1:], *(1,) * (probs.ndim - 2))
            for (weight, value), grad in zip(ctx.terms, grad_sums, strict=True):
                grad = grad.reshape(broadcast)
                if value == "log_1mp":
                    # The factor below is p / (1 - p), so the minus sign of d log(1 - p) / d log p goes here.
                    grad = -grad
                elif value == "p_squared":
                    # The factor below is p^2, so the 2 of d p^2 / d log p = 2 p^2 goes here.
                    grad = grad * 2.0
                if weight == "nontarget":
                    # Mask minus target.
                    coefficients["mask"].append((value, grad))
                    coefficients["target"].append((value, -grad))
                else:
                    coefficients[weight].append((value, grad))
        if grad_target_log_probs is not None:
            # The target log-probability is the target-weighted log p, so its gradient is a per-voxel coefficient.
            coefficients["target"].append(("log_p", grad_target_log_probs.unsqueeze(1)))

        # d value / d log p is 1 for log p, p for p, 2 p^2 for p^2 and -p / (1 - p) for log(1 - p). The last
        # factor is stored as p / (1 - p) because its coefficient carries the sign. It is zero where 1 - p was
        # clamped: p / 0 gives inf there, which is set to 0.
        factors: dict[str, Tensor | None] = {"log_p": None, "p": probs}
        needed = {value for by_weight in coefficients.values() for value, _ in by_weight}
        if "p_squared" in needed:
            factors["p_squared"] = probs * probs
        if "log_1mp" in needed:
            ratio = torch.rsub(probs, 1.0)
            factors["log_1mp"] = torch.div(probs, ratio, out=ratio).nan_to_num_(nan=0.0, posinf=0.0)

        # G = t * sum_v a_v f_v + m * sum_v b_v f_v, built in one buffer.
        grad_log_p = _accumulate(None, coefficients["target"], factors, None, probs.shape)
        if grad_log_p is not None:
            grad_log_p.mul_(target)
        grad_log_p = _accumulate(grad_log_p, coefficients["mask"], factors, mask, probs.shape)
        if grad_log_p is None:
            return None, None, None, None, None
        # Through the softmax: dL/dz = G - p * sum_k G_k.
        grad_logits = grad_log_p.addcmul_(probs, grad_log_p.sum(dim=1, keepdim=True), value=-1.0)
        return grad_logits, None, None, None, None


def target_log_softmax(logits: Tensor, labels: Tensor) -> Tensor:
    """Return ``log_softmax(logits)`` at each voxel's label, ``(B, *spatial)``, with a hand-written backward.

    The values equal ``log_softmax(logits, 1).gather(1, labels)`` to about ``1e-7``. Through autograd, that
    gather stores the whole log-softmax, and its backward scatters the gradient into a zero tensor and takes the
    ``exp`` of the log-softmax again. Here the forward keeps the probabilities, so the backward
    ``dL/dz_nc = g_n ([c = y_n] - p_nc)`` takes two passes.

    Args:
        logits: ``(B, C, *spatial)`` with ``C >= 2``.
        labels: ``(B, *spatial)`` int64 class indices.
    """
    return _TargetLogSoftmax.apply(logits, labels)


class _TargetLogSoftmax(torch.autograd.Function):
    """The forward and backward of :func:`target_log_softmax`."""

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor):
        with torch.no_grad():
            probs = torch.softmax(logits, dim=1)
            log_probs = _target_log_probs(logits, probs.gather(1, labels.unsqueeze(1))[:, 0], labels)
        ctx.save_for_backward(probs, labels)
        return log_probs

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        probs, labels = ctx.saved_tensors
        grad = grad.unsqueeze(1)
        grad_logits = torch.mul(probs, grad.neg())
        grad_logits.scatter_add_(1, labels.unsqueeze(1), grad)
        return grad_logits, None


def powered_cross_entropy_sum(target_log_probs: Tensor, voxel_weights: Tensor, exponent: float) -> Tensor:
    """Return ``sum_n w_n (-log p_n) ** exponent`` per sample, ``(B,)``, with the power bounded as in
    :func:`~scripts.losses.powers.bounded_power`.

    Args:
        target_log_probs: ``(B, *spatial)`` log-probability of each voxel's target class (``<= 0``).
        voxel_weights: ``(B, *spatial)`` weight of each voxel, zero at voxels outside the loss; no gradient flows
            into it.
        exponent: ``> 0``. Exponents of one or more take the autograd path.
    """
    if exponent >= 1.0:
        return (bounded_power(-target_log_probs, exponent) * voxel_weights).flatten(start_dim=1).sum(dim=1)
    return _PoweredCrossEntropySum.apply(target_log_probs, voxel_weights.detach(), float(exponent))


class _PoweredCrossEntropySum(torch.autograd.Function):
    """The forward and backward of :func:`powered_cross_entropy_sum` for ``0 < exponent < 1``."""

    @staticmethod
    def forward(ctx, target_log_probs: Tensor, voxel_weights: Tensor, exponent: float):
        batch_size = target_log_probs.shape[0]
        with torch.no_grad():
            # A log-probability is at most 0, so the base needs no clamp.
            base = target_log_probs.reshape(batch_size, -1).neg()
            weights = voxel_weights.reshape(batch_size, -1)
            powered, ratio = power_and_ratio(base, exponent)
            total = powered.mul_(weights).sum(dim=1)
        ctx.save_for_backward(base, ratio, weights)
        ctx.exponent = exponent
        ctx.spatial_shape = target_log_probs.shape
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        base, ratio, weights = ctx.saved_tensors
        # d/dl of w (-l)^e is -w times the slope of the power at -l.
        grad_log_probs = power_slope(base, ratio, ctx.exponent).mul_(weights).mul_(grad.neg().unsqueeze(1))
        return grad_log_probs.view(ctx.spatial_shape), None, None


def focal_cross_entropy_sum(
    target_log_probs: Tensor, voxel_weights: Tensor, gamma: float, target_probs: Tensor | None = None
) -> Tensor:
    """Return ``sum_n w_n (1 - p_n) ** gamma (-log p_n)`` per sample, ``(B,)``, the focal factor bounded as in
    :func:`~scripts.losses.powers.bounded_power`.

    ``1 - p`` is ``1 - target_probs`` when given (as exact as ``p`` itself), otherwise ``-expm1(log p)``, which
    keeps it accurate near ``p = 1``.

    Args:
        target_log_probs: ``(B, *spatial)`` log-probability of each voxel's target class (``<= 0``).
        voxel_weights: ``(B, *spatial)`` weight of each voxel, zero at voxels outside the loss; no gradient flows
            into it.
        gamma: ``>= 0``. Zero gives the weighted cross-entropy; one or more takes the autograd path.
        target_probs: ``(B, *spatial)`` probability of each voxel's target class, the ``exp`` of
            ``target_log_probs`` (:func:`softmax_class_sums` with ``with_target_probs=True``), or ``None``.
    """
    if gamma == 0.0 or gamma >= 1.0:
        modulation = bounded_power(-torch.expm1(target_log_probs), gamma)
        return (modulation * target_log_probs * voxel_weights).flatten(start_dim=1).sum(dim=1).neg()
    return _FocalCrossEntropySum.apply(target_log_probs, voxel_weights.detach(), float(gamma), target_probs)


class _FocalCrossEntropySum(torch.autograd.Function):
    """The forward and backward of :func:`focal_cross_entropy_sum` for ``0 < gamma < 1``."""

    @staticmethod
    def forward(ctx, target_log_probs: Tensor, voxel_weights: Tensor, gamma: float, target_probs: Tensor | None = None):
        batch_size = target_log_probs.shape[0]
        with torch.no_grad():
            log_probs = target_log_probs.reshape(batch_size, -1)
            weights = voxel_weights.reshape(batch_size, -1)
            # 1 - p, which is at least 0 because p is at most 1.
            if target_probs is None:
                complement = torch.expm1(log_probs).neg_()
            else:
                complement = torch.rsub(target_probs.reshape(batch_size, -1), 1.0)
            modulation, ratio = power_and_ratio(complement, gamma)
            total = torch.mul(modulation, log_probs).mul_(weights).sum(dim=1).neg_()
        ctx.save_for_backward(log_probs, weights, complement, modulation, ratio)
        ctx.gamma = gamma
        ctx.spatial_shape = target_log_probs.shape
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        log_probs, weights, complement, modulation, ratio = ctx.saved_tensors
        # With q = 1 - p = 1 - exp(l) and m = q^gamma: d/dl of -m l is l m'(q) p - m, since dq/dl = -p.
        grad_log_probs = power_slope(complement, ratio, ctx.gamma).mul_(log_probs)
        grad_log_probs.mul_(torch.rsub(complement, 1.0)).sub_(modulation)
        grad_log_probs.mul_(weights * grad.unsqueeze(1))
        return grad_log_probs.view(ctx.spatial_shape), None, None, None


def complement_floor(dtype: torch.dtype) -> float:
    """Return the clamp of ``1 - p`` in ``log(1 - p)``: half the machine epsilon, ``2^-24`` in float32.

    That is the smallest positive ``1 - p`` of a probability below one, so only ``p == 1`` is clamped. Four such
    factors still multiply to a normal number, which :func:`_sum_of_logs` needs.
    """
    return torch.finfo(dtype).eps / 2.0


def _log_complement_sums(probs: Tensor, one_hot: Tensor | None, mask: Tensor | None) -> Tensor:
    """Return ``sum_n log(1 - p_nc)`` per sample and class, ``(B, C)``, over the voxels in the loss.

    With a ``one_hot`` target, each voxel's target class is left out (the ``"nontarget"`` weight).
    """
    complement = torch.rsub(probs, 1.0)
    if one_hot is not None:
        # 1 - p + p t is 1 at the target class, and log 1 = 0 drops it from the sum.
        complement.addcmul_(probs, one_hot)
    complement.clamp_min_(complement_floor(probs.dtype))
    if mask is not None:
        # Voxels outside the loss drop out the same way.
        complement.masked_fill_(mask == 0, 1.0)
    return _sum_of_logs(complement.flatten(start_dim=2))


def _sum_of_logs(values: Tensor) -> Tensor:
    """Return the sum of ``log(values)`` over the last dimension for ``values`` in ``[complement_floor, 1]``.

    Four values are multiplied before the ``log``, which then runs on a quarter of them: on CPU the ``log`` costs
    several times a product, and this measured about a quarter faster than ``log`` of every value. The products stay
    normal numbers (at least ``2^-96`` in float32), so each log is as accurate as a sum of four logs.
    """
    count = values.shape[-1]
    quarter = count // 4
    halves = values[..., : 2 * quarter] * values[..., 2 * quarter : 4 * quarter]
    quarters = halves[..., :quarter].mul_(halves[..., quarter:])
    total = quarters.log_().sum(dim=-1)
    if 4 * quarter < count:
        total = total + values[..., 4 * quarter :].log().sum(dim=-1)
    return total


# Target probabilities below this take the exact path. The smallest normal float32 number is about 1.2e-38, and
# below it a softmax output loses precision or rounds to zero.
_SMALLEST_ACCURATE_PROBABILITY = 1e-30


def _sums_at_labels(
    target: Tensor, picked: Tensor, target_log_probs: Tensor, values: Sequence[str]
) -> dict[str, Tensor]:
    """Return ``sum_n t_nc v(p_nc)``, ``(B, C)``, for each of ``values``, from the target class's probability alone.

    With a one-hot ``target``, ``t_nc v(p_nc)`` is ``v`` of the voxel's target probability ``picked``
    (``(B, *spatial)``) in the row of its class. So each value is computed for ``N`` voxels instead of ``C N``, and a
    batched product of the ``(B, 1, N)`` values with the ``(B, N, C)`` target gives its sums. On CPU that measured
    about twice as fast as a product and a sum over ``(B, C, N)``.
    """
    batch_size, classes = target.shape[:2]
    flat_target = target.reshape(batch_size, classes, -1).transpose(1, 2)
    sums = {}
    for value in values:
        if value == "p":
            per_voxel = picked
        elif value == "p_squared":
            per_voxel = picked * picked
        elif value == "log_p":
            per_voxel = target_log_probs
        else:
            # log(1 - p), clamped as in the pass over every class.
            per_voxel = picked.neg().log1p_().clamp_min_(math.log(complement_floor(picked.dtype)))
        sums[value] = torch.bmm(per_voxel.reshape(batch_size, 1, -1), flat_target)[:, 0]
    return sums


def _target_log_probs(logits: Tensor, picked: Tensor, labels: Tensor) -> Tensor:
    """Return ``log p`` of each voxel's target class, ``(B, *spatial)``, from its softmax output ``picked``.

    The log of ``N`` probabilities costs about a third of a ``log_softmax`` over three classes (measured on CPU),
    and it saves the ``exp``
    that would turn it back into probabilities. A probability is accurate to a few units in the last place as
    long as it is a normal number, so its log is accurate to about ``1e-7``. Voxels whose target probability is
    smaller (a confidently wrong voxel) take ``log_softmax`` of their own logits instead, which stays finite.
    """
    log_picked = picked.log()
    # One reduction decides first, so the mask of low voxels is built only when there are some.
    if bool(picked.amin() < _SMALLEST_ACCURATE_PROBABILITY):
        low = picked < _SMALLEST_ACCURATE_PROBABILITY
        low_logits = logits.detach().movedim(1, -1)[low]
        exact = torch.log_softmax(low_logits, dim=-1).gather(-1, labels[low].unsqueeze(-1))[:, 0]
        log_picked[low] = exact
    return log_picked


def _accumulate(
    buffer: Tensor | None,
    coefficients: list[tuple[str, Tensor]],
    factors: dict[str, Tensor | None],
    mask: Tensor | None,
    shape: torch.Size,
) -> Tensor | None:
    """Add ``mask * sum_v coefficient_v * factors[v]`` to ``buffer``, or to a new tensor when it is ``None``.

    ``coefficients`` pairs a value with its coefficient. A factor of ``None`` stands for one, and a mask of ``None``
    for every voxel. A new buffer starts from a product, so that no pass copies a broadcast coefficient.
    """
    scaled, plain = [], []
    for value, coefficient in coefficients:
        if mask is not None:
            coefficient = coefficient * mask
        factor = factors[value]
        if factor is None:
            plain.append(coefficient)
        else:
            scaled.append((factor, coefficient))
    # A per-voxel coefficient without factor can start the buffer: addcmul with it measured faster than a product
    # and an add. With a coefficient that is constant over the voxels, addcmul measured about twice as slow, so
    # such a coefficient is added afterwards.
    per_voxel = [index for index, coefficient in enumerate(plain) if coefficient.shape[2:].numel() > 1]
    for factor, coefficient in scaled:
        if buffer is None and per_voxel:
            buffer = torch.addcmul(plain.pop(per_voxel[0]), factor, coefficient)
        elif buffer is None:
            buffer = factor * coefficient
        else:
            buffer.addcmul_(factor, coefficient)
    for coefficient in plain:
        if buffer is None:
            # empty().copy_() measured about a third faster on CPU than clone() of the expanded coefficient.
            buffer = torch.empty(shape, dtype=coefficient.dtype, device=coefficient.device).copy_(coefficient)
        else:
            buffer.add_(coefficient)
    return buffer
