"""Lovász-softmax loss, a convex surrogate of the Jaccard (IoU) loss built from sorted per-voxel errors."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss
from ..distributed import gather_across_ranks
from ..registry import register_loss

CLASS_MODES = ("present", "all")


@register_loss(
    "lovasz_softmax",
    family="region",
    paper="Berman, Rannen Triki, Blaschko, The Lovász-Softmax loss, CVPR 2018",
    arxiv="1705.08790",
)
class LovaszSoftmaxLoss(SegmentationLoss):
    r"""Lovász-softmax loss: the Lovász extension of the Jaccard loss, evaluated on the per-voxel errors.

    For each class ``c`` the errors :math:`m_n(c) = |t_{nc} - p_{nc}|` of the ``N`` voxels are sorted in
    decreasing order, :math:`m_{\pi_1} \ge \dots \ge m_{\pi_N}`, and

    .. math:: \overline{\Delta J_c}(m) = \sum_{k=1}^{N} m_{\pi_k} \, g_k, \qquad
              g_k = J_k - J_{k-1}, \qquad J_k = 1 - \frac{|T_c| - \sum_{j \le k} t_{\pi_j c}}
              {|T_c| + \sum_{j \le k} (1 - t_{\pi_j c})}

    where :math:`|T_c| = \sum_n t_{nc}` and :math:`J_k` is the Jaccard loss when the ``k`` largest errors are
    mispredicted (:func:`lovasz_grad`). The loss is the mean of :math:`\overline{\Delta J_c}` over the classes,
    weighted by ``class_weights``. ``classes="present"`` (the paper's default) averages only over the classes that
    occur in the target, so a sample without any of the included classes scores 0; ``"all"`` keeps every class,
    and an absent class then scores its largest predicted probability.

    The survey (eq. 12) calls this a "Lovász hinge applied to the IoU loss". That is loose wording: the hinge
    variant of Berman et al. is the binary loss on logit margins ``1 - y s``, whereas the multi-class loss sorts
    absolute probability errors. With one output channel this class applies the same construction to the sigmoid
    probability of the foreground, not the hinge.

    The value is continuous in the errors, so tied errors give the same value in any order. Only the subgradient
    at a tie depends on the order.

    3D and batches: every voxel of a volume is one element of the sort. ``batch=False`` (the bundle default)
    computes one loss per volume, which matches the per-case IoU/Dice that medical segmentation reports.
    Berman et al. pool the whole batch for the softmax loss (``per_image=False``) because Pascal VOC's metric is
    the dataset-wide IoU; ``batch=True`` gives that form. Ignored voxels get error 0 and target 0, so they sort
    after every valid voxel with a positive error and add nothing (the bucket counts below leave them out): the
    value equals the loss on the remaining voxels, as if they were removed before sorting. If every voxel is
    ignored the loss is 0.

    Large rows need no sort. With a 0/1 target (indices or one-hot) in float32 and at least 2^15 voxels per row (a
    64^3 volume, a 256^2 slice), the errors fall into 2^16 buckets of equal width, and the Lovász gradient follows
    from the number of target and other voxels in each bucket (:func:`binned_lovasz_chunk`). The buckets lower the
    value by at most 2^-16. On typical inputs the difference from the exact value is about 1e-8 either way, the size
    of float32 rounding. Voxels in one bucket get one deterministic gradient. Smaller rows, soft targets and float64
    are sorted: float32 on a key quantised to a step of 2^-19 or finer (:func:`sort_errors`), float64 exactly.
    Either way the value carries the gradient through :class:`_LovaszValue`, without the autograd passes of
    ``|p - t|``.

    Args:
        include_background: average over class 0 too (the paper's form) or over the foreground classes only.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: sort the voxels of the whole batch together (the paper's default for the softmax loss).
        classes: ``"present"`` averages over the classes found in the target, ``"all"`` over every class.

    Example:
        >>> loss = LovaszSoftmaxLoss()
        >>> loss(torch.randn(2, 3, 16, 16, 16), torch.randint(0, 3, (2, 1, 16, 16, 16)))
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        classes: str = "present",
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        if classes not in CLASS_MODES:
            raise ValueError(
                f"classes must be one of {CLASS_MODES}, got {classes!r}; use class_weights to select classes."
            )
        self.classes = classes

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        region = inputs.region_classes
        probs = inputs.probs[:, region]
        target = inputs.target[:, region]
        mask = inputs.mask
        if self.batch and mask is None:
            # Every rank gathers the same tensors, whether or not its own batch has ignored voxels.
            mask = torch.ones_like(target[:, :1])
        elif mask is not None:
            mask = mask.to(target.dtype)

        # One row per (sample, class), or per class when the whole batch is pooled.
        batch_size, num_region = probs.shape[:2]

        def as_rows(value: Tensor) -> Tensor:
            value = value.expand(batch_size, num_region, *value.shape[2:])
            if self.batch:
                return gather_across_ranks(value).transpose(0, 1).reshape(num_region, -1)
            return value.reshape(batch_size * num_region, -1)

        probs = as_rows(probs)
        target = as_rows(target)
        # A one-hot target given as floats is as hard as class indices. Its values lie in [0, 1], so rounding
        # changes none of them exactly when each is 0 or 1.
        hard_target = inputs.has_index_target or torch.equal(target, target.round())
        with torch.no_grad():
            value, slope, target_size = lovasz_terms(
                probs.detach(), target, None if mask is None else as_rows(mask), hard_target=hard_target
            )
        region_loss = _LovaszValue.apply(probs, value, slope).view(-1, num_region)

        rows = region_loss.shape[0]
        class_loss = region_loss.new_zeros(rows, inputs.num_classes)
        class_loss[:, region] = region_loss
        if self.classes == "all":
            return self.average_classes(class_loss, inputs)
        present_classes = torch.zeros_like(class_loss, dtype=torch.bool)
        present_classes[:, region] = (target_size > 0).view(-1, num_region)
        return self.average_classes(class_loss, inputs, present=present_classes)


class _LovaszValue(torch.autograd.Function):
    """Pass the Lovász value of each row through, with ``slope`` as its gradient with respect to ``probs``."""

    @staticmethod
    def forward(ctx, probs: Tensor, value: Tensor, slope: Tensor) -> Tensor:
        ctx.save_for_backward(slope)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (slope,) = ctx.saved_tensors
        return grad_output.unsqueeze(1) * slope, None, None


def lovasz_grad(target_sorted: Tensor, negate_target: bool = False, positions: Tensor | None = None) -> Tensor:
    r"""Compute the gradient of the Lovász extension of the Jaccard loss along each row of sorted targets.

    ``target_sorted`` is ``(R, N)``: the (soft) target of each voxel, in decreasing order of its error. Returns
    ``g_k = J_k - J_{k-1}`` with ``J_0 = 0`` (Algorithm 1 of Berman et al.). After ``k`` voxels the
    intersection is ``I_k = |T| - sum_{j <= k} t_j`` and the union ``U_k = I_k + k``, so
    ``g_k = (I_{k-1} + (k - 1) t_k) / (U_{k-1} U_k)``, with ``I_0 = U_0 = 1`` giving ``g_1 = 1 / U_1``. This form
    adds non-negative terms and keeps its relative precision in float32, where the difference of two Jaccard
    values near 1 would not.

    ``negate_target=True``, for a 0/1 target, returns ``-g_k`` where ``t_k = 1``: the numerator is then
    ``I_{k-1} - t_k (I_{k-1} + U_{k-1})``, which is ``-U_{k-1}`` on the target and ``I_{k-1}`` elsewhere, at no
    extra cost. ``positions``, if given, is ``arange(N + 1)`` in the target's dtype, for callers that reuse it.
    """
    rows, size = target_sorted.shape
    # ``before[:, k]`` is I_k for k = 0 .. N, with I_0 = 1, and ``index[k]`` is k.
    before = torch.empty((rows, size + 1), dtype=target_sorted.dtype, device=target_sorted.device)
    before[:, 0] = 1.0
    torch.cumsum(target_sorted, dim=1, out=before[:, 1:])
    torch.sub(target_sorted.sum(dim=1, keepdim=True), before[:, 1:], out=before[:, 1:])
    index = positions
    if index is None:
        index = torch.arange(size + 1, dtype=target_sorted.dtype, device=target_sorted.device)
    union = before + index
    previous_intersection, previous_union = before[:, :-1], union[:, :-1]
    # In-place steps on the numerator's one buffer: on CPU each new (R, N) tensor costs about as much as its
    # arithmetic.
    if negate_target:
        numerator = torch.add(previous_intersection, previous_union).mul_(target_sorted)
        torch.sub(previous_intersection, numerator, out=numerator)
    else:
        numerator = torch.addcmul(previous_intersection, target_sorted, index[:-1])
    # U_k >= k >= 1 for k >= 1, and U_0 = 1, so the denominator is never 0.
    return numerator.div_(previous_union * union[:, 1:])


# torch.sort of a 1D int32 tensor took about 7 ns per element from 2^15 to 2^18 elements, twice that from 2^21,
# and three to six times that below 2^15 (torch 2.13, one thread of this project's 2-core machine). So rows go
# through the whole computation in chunks of about 2^17 voxels, which also stay in the cache. The bucket tables
# of the binned path are also about that size per chunk.
_CHUNK_ELEMENTS = 2**17

# The binned path counts float32 errors of a 0/1 target in 2^16 buckets of equal width per row (see
# :func:`binned_lovasz_chunk`). A chunk has at most 16 rows, so its float keys stay below 2^21, where float32
# resolves steps of 1/8. Rows of fewer than 2^15 voxels are sorted instead: below that, the work on the 2^17
# buckets of a row costs more than the sort (2^14 voxels took 1.5 times as long binned, 2^16 voxels half as long).
BUCKET_BITS = 16
_MAX_BINNED_ROWS = 16
_MIN_BINNED_SIZE = 2**15


def lovasz_terms(
    probs: Tensor, target: Tensor, mask: Tensor | None, hard_target: bool
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Return the Lovász value, its gradient and the target size of each row.

    ``probs``, ``target`` and ``mask`` (or ``None``) are ``(R, N)``: one row per class of a sample, or of the
    batch. Returns the ``(R,)`` values :math:`\sum_n |p_n - t_n| g_n` (masked voxels have error 0), the
    ``(R, N)`` gradient :math:`s_n = g_n \operatorname{sign}(p_n - t_n)` in the voxels' own order, and the
    ``(R,)`` sums of the target. Rows go through the whole computation in chunks of whole rows of about 2^17
    voxels (one row for a 64^3 volume), while a chunk is in the cache.

    A float32 0/1 target with rows of at least 2^15 voxels takes :func:`binned_lovasz_chunk`, which needs no sort.
    Smaller rows, soft targets and other dtypes take :func:`sorted_lovasz_chunk`.
    """
    rows, size = probs.shape
    slope = torch.empty_like(probs)
    value = probs.new_empty(rows)
    target_size = probs.new_empty(rows)
    binned = hard_target and probs.dtype == torch.float32 and size >= _MIN_BINNED_SIZE
    rows_per_chunk = max(1, min(rows, _CHUNK_ELEMENTS // max(size, 1)))
    if binned:
        rows_per_chunk = min(rows_per_chunk, _MAX_BINNED_ROWS)
    positions = None if binned else torch.arange(size + 1, dtype=probs.dtype, device=probs.device)
    for start in range(0, rows, rows_per_chunk):
        chunk = slice(start, min(start + rows_per_chunk, rows))
        chunk_mask = None if mask is None else mask[chunk]
        difference = probs[chunk] - target[chunk]
        if chunk_mask is not None:
            difference.mul_(chunk_mask)
        if binned:
            target_size[chunk] = binned_lovasz_chunk(difference, target[chunk], chunk_mask, slope[chunk])
        else:
            target_size[chunk] = sorted_lovasz_chunk(
                difference, target[chunk], chunk_mask, slope[chunk], positions, hard_target
            )
        value[chunk] = torch.linalg.vecdot(difference, slope[chunk])
    return value, slope, target_size


def binned_lovasz_chunk(difference: Tensor, target: Tensor, mask: Tensor | None, slope: Tensor) -> Tensor:
    r"""Fill ``slope`` with the Lovász gradient of float32 rows with a 0/1 target, from bucket counts; no sort.

    ``difference`` is ``p - t`` (0 at masked voxels), and ``slope`` is written in place; returns the target size
    of each row. The errors ``|p - t|`` fall into ``2^16`` buckets of equal width per row, in decreasing order,
    and a ``bincount`` gives the number of target voxels (``f``) and other voxels (``b``) in each bucket. Within a
    bucket the target voxels are taken first. With ``F`` target and ``B_0`` other voxels in the buckets before,
    and ``B_1 = B_0 + b``, every target voxel of the bucket then has

    .. math:: g = J(F + 1, B_0) - J(F, B_0) = \frac{1}{|T| + B_0},

    where :math:`J(F, B) = 1 - (|T| - F) / (|T| + B)`. The other voxels' gradients sum to
    :math:`J(F + f, B_1) - J(F + f, B_0)`, and each gets their mean,

    .. math:: \bar g = \frac{|T| - F - f}{(|T| + B_0)(|T| + B_1)}

    (``1 / b`` in the first bucket of a row without target, where :math:`J(0, 0) = 0`). Both are sums of positive
    terms, precise in float32.

    This is the Lovász extension with the errors of each bucket in one particular order and the other voxels'
    gradients averaged, which is a mean of such orders. The extension is the largest value over all orders,
    because the greedy order is optimal for a submodular loss. Each bucket's gradients also have the same sum in
    any order. So the value lies below the exact one by at most one bucket width times the row's Jaccard loss,
    which is at most 2^-16. On this project's benchmark inputs the difference is about 1e-8 either way, the size
    of float32 rounding. Ties get one deterministic gradient. Masked voxels count in no bucket and get gradient 0,
    exactly as if they were removed.
    """
    rows, size = difference.shape
    buckets = 2**BUCKET_BITS
    # Keys: bucket + buckets * t + 2 * buckets * row, computed in float32 and truncated. The error's factor is
    # just below ``buckets``, so an error of 0 stays in the row's last bucket. Rounding is monotone, so a larger
    # error never gets a larger key.
    scale = buckets - 0.25
    key_base = torch.arange(rows, dtype=difference.dtype, device=difference.device).mul_(2 * buckets).add_(scale)
    key = torch.add(key_base.unsqueeze(1), target, alpha=buckets)
    key.sub_(difference.abs(), alpha=scale)
    excluded = rows * 2 * buckets
    if mask is not None:
        key.masked_fill_(mask == 0, excluded)
    key = key.to(torch.int32).view(-1)

    # Inclusive counts per bucket, other voxels then target voxels: (rows, 2, buckets).
    counts = torch.bincount(key, minlength=excluded + 1)[:excluded].view(rows, 2, buckets)
    counts = torch.cumsum(counts, dim=2, dtype=difference.dtype)
    other_end, target_end = counts[:, 0], counts[:, 1]
    target_size = target_end[:, -1:]
    # union[:, k] = |T| + B before bucket k, for k = 0 .. buckets.
    union = torch.empty((rows, buckets + 1), dtype=difference.dtype, device=difference.device)
    union[:, :1] = target_size
    torch.add(other_end, target_size, out=union[:, 1:])
    before, after = union[:, :-1], union[:, 1:]

    table = difference.new_empty(excluded + 1)
    table[-1] = 0.0
    table_rows = table[:-1].view(rows, 2, buckets)
    # ``first`` is 1 where |T| + B_0 = 0 (a row without target, before its first voxel): there I_0 = U_0 = 1.
    first = torch.rsub(before, 1.0).clamp_min_(0.0)
    numerator = torch.sub(target_size, target_end).add_(first)
    torch.div(numerator, before.add(first).mul_(after), out=table_rows[:, 0])
    # Target voxels have |T| >= 1; the slope is -g because sign(p - t) = -1 there.
    torch.reciprocal(before, out=table_rows[:, 1]).neg_()
    torch.index_select(table, 0, key, out=slope.view(-1))
    return target_size.squeeze(1)


def sorted_lovasz_chunk(
    difference: Tensor, target: Tensor, mask: Tensor | None, slope: Tensor, positions: Tensor, hard_target: bool
) -> Tensor:
    """Fill ``slope`` with the Lovász gradient of the rows from their sorted errors; return the target sizes.

    ``difference`` is ``p - t`` (0 at masked voxels), ``slope`` is written in place, and ``positions`` is
    ``arange(N + 1)`` in the rows' dtype. Used for soft targets, for rows of fewer than 2^15 voxels, and for float64
    (gradient checks), which is sorted exactly.
    """
    order, target_sorted = sort_errors(difference.abs(), target)
    # With a 0/1 target, sign(p - t) is -1 on the target's voxels and +1 elsewhere.
    sorted_gradient = lovasz_grad(target_sorted, negate_target=hard_target, positions=positions)
    slope.view(-1).scatter_(0, order, sorted_gradient.view(-1))
    if not hard_target:
        slope.mul_(difference.sign())
    elif mask is not None:
        # Ignored voxels have a zero difference; like every other zero error, they get no gradient.
        slope.masked_fill_(difference == 0, 0.0)
    return target_sorted.sum(dim=1)


def sort_errors(errors: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Sort each row of ``(R, N)`` errors in ``[0, 1]`` in decreasing order.

    Returns the flat indices of the sorted voxels (row ``r`` fills positions ``r * N`` to ``(r + 1) * N - 1``)
    and the ``(R, N)`` target in that order.

    Float32 errors are sorted in one call on one integer key per voxel: the row in the high bits, then the error
    quantised to ``bits = 31 - ceil(log2 R)`` bits. PyTorch sorts a 1D integer tensor several times faster than
    rows of floats. Below 19 bits (more than about 4,000 rows) the key is int64 with 40 bits. Errors closer than
    one step may be ranked in either order, which changes the value by at most two steps because every ``g_k``
    is non-negative and they sum to at most 1. Other dtypes (float64 for gradient checks) are sorted exactly.
    """
    rows, size = errors.shape
    if errors.dtype != torch.float32:
        order = errors.sort(dim=1, descending=True).indices
        order = (order + torch.arange(rows, device=errors.device).unsqueeze(1) * size).view(-1)
        return order, torch.gather(target.reshape(-1), 0, order).view(rows, size)

    key_dtype = torch.int32
    value_bits = 31 - max(rows - 1, 1).bit_length()
    if value_bits < 19:
        key_dtype, value_bits = torch.int64, 40
    # Larger errors get smaller keys. The scale is the largest float32 below 2^bits (23 bits of mantissa), so
    # the truncated product stays below 2^bits.
    scale = 2.0**value_bits * (1.0 - 2.0**-23)
    key = torch.rsub(errors, scale, alpha=scale).to(key_dtype)
    if rows > 1:
        row_start = torch.arange(rows, device=errors.device, dtype=key_dtype) << value_bits
        key.add_(row_start.unsqueeze(1))
    order = key.view(-1).sort().indices
    return order, torch.gather(target.reshape(-1), 0, order).view(rows, size)
