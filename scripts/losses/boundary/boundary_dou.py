"""Boundary difference over union loss (Sun et al.): an IoU-style ratio that weighs the boundary band."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ...distance_maps import has_face_neighbour
from ..base import SegmentationInputs, SegmentationLoss
from ..distributed import sum_across_ranks
from ..registry import register_loss


@register_loss(
    "boundary_dou",
    family="boundary",
    paper="Sun, Luo, Li, Boundary difference over union loss for medical image segmentation, MICCAI 2023",
    arxiv="2308.00220",
)
class BoundaryDoULoss(SegmentationLoss):
    r"""Boundary DoU loss: the difference set over a union from which a share ``alpha`` of the overlap is removed.

    .. math:: L = \frac{1}{|K|} \sum_{c \in K}
              \frac{\sum p_c^2 + \sum g_c^2 - 2 \sum p_c g_c + \epsilon}
                   {\sum p_c^2 + \sum g_c^2 - (1 + \alpha_c) \sum p_c g_c + \epsilon}, \qquad
              \alpha_c = \min\Big(1 - \frac{2 (C_c + \epsilon)}{S_c + \epsilon}, \ \alpha_{max}\Big)

    with the sums over the voxels of a sample. ``S_c`` is the number of target voxels of class ``c``, and ``C_c``
    the number of its boundary voxels, those with a face neighbour (4 in 2D, 6 in 3D) outside the class. The
    numerator is the soft difference ``G u P - G n P``; a larger ``alpha`` shrinks the denominator towards the
    boundary band, so boundary errors weigh more. Large compact objects (``C << S``) get ``alpha`` near
    ``alpha_max``; small ones get ``alpha`` near 0, which is the squared IoU loss. ``C`` and ``S`` come from the
    target alone, so ``alpha`` carries no gradient.

    ``alpha`` goes **negative** for thin or small objects, when more than half of their voxels are boundary voxels
    (``C / S > 0.5``). The authors only clip it from above; so does this class. For ``-1 <= alpha < 0`` the loss
    lies between the squared IoU loss (``alpha = 0``) and the squared Dice loss (``alpha = -1``, reached when every
    target voxel is a boundary voxel), a milder boundary emphasis rather than a failure. The authors calibrated
    ``alpha_max = 0.8`` on 2D slices, where ``C / S`` is a perimeter-to-area ratio. In 3D it is a
    surface-to-volume ratio, which is larger for the same width: an 8 x 8 square gives ``C / S = 28 / 64`` and
    ``alpha = 0.125``, an 8 x 8 x 8 cube ``296 / 512`` and ``alpha = -0.156``. Thin 3D structures such as the
    hippocampus therefore sit mostly in the Dice-like regime.

    A class absent from the target scores ``(sum p^2 + eps) / (sum p^2 + eps) = 1`` whatever the prediction: a
    constant without gradient, so false positives in an absent class are not penalised and the value is inflated
    by one such class. This follows the authors' code (``sunfan-bvb/BoundaryDoULoss``).

    Differences from the authors' code, which is 2D: face neighbours are 6-connected in 3D; the image border (or a
    patch border) is not a boundary, because a crop cuts objects rather than ends them (their zero padding counts
    target pixels on the border as boundary); ignored voxels are treated like the image border, so ignoring voxels
    equals cropping them; a soft target counts ``C`` and ``S`` on ``target > 0.5``. The survey's eq. 30 matches the
    original. MONAI 1.6 has no such loss.

    ``mean`` averages the per-class ratios over the classes in ``K`` (the authors include the background) with the
    class weights. With ``batch=True`` the sums, ``C`` and ``S`` run over the whole batch, as in the authors' code.

    Args:
        include_background: include class 0 in ``K``.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: pool the sums and the counts over the batch.
        max_alpha: upper clip of ``alpha``, in ``[-1, 1)``; the authors' value is 0.8.
        smooth: ``epsilon`` added to the numerator, the denominator and both counts.
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        max_alpha: float = 0.8,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        if not -1.0 <= max_alpha < 1.0:
            raise ValueError(
                f"max_alpha must lie in [-1, 1), got {max_alpha}; at 1 the denominator equals the numerator and "
                "the loss is constant. The authors use 0.8."
            )
        if not smooth > 0.0:
            raise ValueError(f"smooth must be positive, got {smooth}; it keeps an absent class finite (try 1e-5).")
        self.max_alpha = float(max_alpha)
        self.smooth = float(smooth)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        intersection, prediction_sum, target_sum = inputs.class_sums(squared=True, batch=self.batch)
        alpha = self.boundary_alpha(inputs)
        union = prediction_sum + target_sum
        ratio = (union - 2.0 * intersection + self.smooth) / (union - (1.0 + alpha) * intersection + self.smooth)
        return self.average_classes(ratio, inputs)

    def boundary_alpha(self, inputs: SegmentationInputs) -> Tensor:
        """Return ``alpha`` of every class, ``(B, K)`` or ``(1, K)`` with ``batch=True``, from the target alone."""
        with torch.no_grad():
            if inputs.has_index_target:
                classes = torch.arange(inputs.num_classes, device=inputs.labels.device)
                target = inputs.labels.unsqueeze(1) == classes.reshape(1, -1, *(1,) * len(inputs.spatial_dims))
            else:
                target = inputs.target > 0.5
            if inputs.mask is None:
                outside = ~target
            else:
                valid = inputs.mask > 0.5
                target &= valid
                outside = valid & ~target
            boundary = target & has_face_neighbour(outside, len(inputs.spatial_dims))
            dims = inputs.spatial_dims if not self.batch else (0, *inputs.spatial_dims)
            boundary_count = boundary.sum(dim=dims).to(inputs.logits.dtype).reshape(-1, target.shape[1])
            size = target.sum(dim=dims).to(inputs.logits.dtype).reshape(-1, target.shape[1])
            if self.batch:
                boundary_count, size = sum_across_ranks(boundary_count), sum_across_ranks(size)
            alpha = 1.0 - 2.0 * (boundary_count + self.smooth) / (size + self.smooth)
        return alpha.clamp_max(self.max_alpha)
