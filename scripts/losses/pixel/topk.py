"""TopK loss: cross-entropy over the hardest voxels only."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, check_number
from ..distributed import gather_across_ranks, pooling_across_ranks
from ..registry import register_loss


@register_loss(
    "topk",
    family="pixel",
    paper="Wu, Shen, van den Hengel, Bridging category-level and instance-level semantic image segmentation, "
    "2016 (online bootstrapping), in the k-percent form of nnU-Net's TopKLoss",
    arxiv="1605.06885",
)
class TopKLoss(SegmentationLoss):
    r"""Cross-entropy averaged over the ``k`` percent of voxels with the largest loss (hard-voxel mining).

    .. math:: L = \frac{1}{|S|} \sum_{n \in S} w_{y_n} \, (-\log p_{n y_n}), \qquad
              |S| = \max\left(1, \left\lfloor \frac{k N}{100} \right\rfloor\right)

    where ``S`` contains the ``|S|`` largest weighted voxel losses among the ``N`` voxels in the loss and ``w`` are
    the class weights. A soft target uses ``sum_c w_c t_c (-log p_c)`` as the voxel loss.

    This is the form of nnU-Net's ``TopKLoss`` (k = 10): per-voxel cross-entropy, the largest ``k`` percent, their
    mean. The survey (Azad et al., eq. 3) sums over the selected voxels instead, a scale factor. It cites Wu et
    al.'s online bootstrapping of hard pixels, and nnU-Net's percentage form is the one implemented here.

    3D adaptation and choices:

    * ``batch=False`` selects ``k`` percent of the voxels of each sample, so every volume contributes its own
      hard voxels. ``batch=True`` selects over the whole batch, as nnU-Net does.
    * Ignored voxels are removed before the selection and do not count in ``N``, so ignoring equals cropping
      (nnU-Net gives them a zero loss but keeps them in ``N``). A sample whose voxels are all ignored gives 0.
    * At least one voxel is selected, so tiny inputs do not average an empty set.
    * Class weights multiply the voxel losses before the selection (nnU-Net passes them to the cross-entropy),
      so a heavily weighted class is selected more often. With ``include_background=False`` background voxels
      have a zero loss. They stay in ``N`` and are selected only when fewer than ``|S|`` voxels have a loss.

    The loss is piecewise smooth: the selected set changes where two voxel losses cross.

    Args:
        include_background: ``False`` gives background voxels a zero loss.
        class_weights: weight of each class's voxel losses, length ``num_classes``.
        ignore_index: label of voxels to remove before the selection.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: select over the whole batch instead of per sample.
        k: percentage of voxels selected, in ``(0, 100]``, 10 as in nnU-Net. ``k = 100`` gives cross-entropy.

    Example:
        >>> loss = TopKLoss(k=10)
        >>> loss(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8)))
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        k: float = 10.0,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        self.k = check_number("k", k, low=0.0, high=100.0, low_open=True)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        voxel_loss = inputs.weighted_target_terms(torch.neg, self.class_weights)
        rows = 1 if self.batch else voxel_loss.shape[0]
        mask = inputs.mask
        if self.batch and pooling_across_ranks():
            # Every process must gather a mask, also one without ignored voxels, or the collectives mismatch.
            if mask is None:
                mask = torch.ones_like(voxel_loss).unsqueeze(1)
            voxel_loss = gather_across_ranks(voxel_loss)
            mask = gather_across_ranks(mask.to(voxel_loss.dtype))
        flat_loss = voxel_loss.reshape(rows, -1)

        if mask is None:
            selected_count = max(1, int(flat_loss.shape[1] * self.k / 100.0))
            return mean_of_largest(flat_loss, selected_count)

        # Ignored voxels get a loss below every real one (losses are >= 0), so they are selected last and the
        # position mask below drops them. Each row keeps its own count.
        valid = mask.reshape(rows, -1) > 0
        valid_count = valid.sum(dim=1)
        selected_count = torch.floor(valid_count.double() * self.k / 100.0).long().clamp_min(1)
        selected_count = torch.minimum(selected_count, valid_count)
        max_selected = int(selected_count.max())
        if max_selected == 0:
            return flat_loss.sum(dim=1) * 0.0
        values = torch.topk(flat_loss.masked_fill(~valid, -1.0), max_selected, dim=1, sorted=True).values
        selected = torch.arange(max_selected, device=values.device) < selected_count.unsqueeze(1)
        return (values * selected).sum(dim=1) / selected_count.clamp_min(1).to(values.dtype)


# The size of the sample that estimates a row's threshold. Rows shorter than four samples go straight to torch.topk.
_SAMPLE_SIZE = 8192


def mean_of_largest(rows: Tensor, count: int) -> Tensor:
    """Return the mean of the ``count`` largest entries of each row of ``rows``, ``(R, n)`` to ``(R,)``.

    The value is that of ``torch.topk(rows, count).values.mean(dim=1)``. On CPU, ``topk`` partially sorts a copy of
    every row and scatters its gradient back, which together take about as long as the cross-entropy it selects
    from. Here the ``count``-th largest value of each row comes from its candidates alone, and the loss is the
    sum of the entries at or above it, a masked sum with an elementwise backward (see :func:`_kth_largest`).

    The gradient is ``1 / count`` on each selected entry, as with ``topk``. Where several entries equal the
    ``count``-th largest value and only some of them fit, ``topk`` picks some of them. Here they share the
    remaining weight equally, which is an equally valid subgradient.

    On other devices ``topk`` is already fast, and a fallback decision would wait for the device.
    """
    length = rows.shape[1]
    if rows.device.type != "cpu" or length < 4 * _SAMPLE_SIZE or 4 * count > length:
        return torch.topk(rows, count, dim=1, sorted=False).values.mean(dim=1)
    with torch.no_grad():
        values = rows.detach()
        kth = _kth_largest(values, count)
        if kth is None:
            weights = None
        else:
            weights = (values >= kth).to(values.dtype)
            selected = weights.sum(dim=1, keepdim=True)
            if bool((selected != count).any()):
                above = (values > kth).sum(dim=1, keepdim=True).to(values.dtype)
                share = (count - above) / (selected - above)
                weights = torch.where(values > kth, 1.0, torch.where(values == kth, share, 0.0))
    if weights is None:
        return torch.topk(rows, count, dim=1, sorted=False).values.mean(dim=1)
    return (rows * weights).sum(dim=1) / count


def _kth_largest(values: Tensor, count: int) -> Tensor | None:
    """Return the ``count``-th largest entry of each row, ``(R, 1)``, or ``None`` when the filter does not apply.

    The candidates of a row are its entries at or above a threshold read from a random sample of the row. The
    threshold is set so that about 1.25 ``count`` entries pass, and ``topk`` runs on those alone. A row that keeps
    fewer than ``count`` candidates (an unlucky sample) or more than half of its entries (many equal values) gives
    ``None``, and the caller falls back to ``topk`` on the whole rows, so the result is exact in every case.
    """
    length = values.shape[1]
    sample = values[:, _sample_positions(length)]
    sample_count = min(_SAMPLE_SIZE, math.ceil(1.25 * count * _SAMPLE_SIZE / length) + 8)
    threshold = torch.topk(sample, sample_count, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    candidates = values >= threshold
    candidate_counts = candidates.sum(dim=1)
    if bool((candidate_counts < count).any()) or bool((2 * candidate_counts > length).any()):
        return None
    # The candidates of all rows, row after row, and one topk per row (the rows are samples, a handful).
    candidate_rows = values[candidates].split(candidate_counts.tolist())
    return torch.stack([torch.topk(row, count, sorted=False).values.amin() for row in candidate_rows]).unsqueeze(1)


@functools.lru_cache(maxsize=8)
def _sample_positions(length: int) -> Tensor:
    """Return ``_SAMPLE_SIZE`` random positions in a row of ``length``, the same in every call.

    A generator of their own draws them, so the global random state is left untouched.
    """
    generator = torch.Generator().manual_seed(length)
    return torch.randint(length, (_SAMPLE_SIZE,), generator=generator)
