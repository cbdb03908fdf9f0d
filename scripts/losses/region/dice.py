"""Dice loss, the region-level loss that mirrors the Dice similarity coefficient."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, as_bool, check_number
from ..registry import register_loss


@register_loss("dice", family="region", paper="Milletari, Navab, Ahmadi, V-Net, 3DV 2016", arxiv="1606.04797")
class DiceLoss(SegmentationLoss):
    r"""Soft Dice loss, one minus the mean soft Dice coefficient over the classes.

    .. math:: L = 1 - \frac{1}{|K|} \sum_{c \in K} \frac{2 \sum_n p_{nc} t_{nc} + s_{nr}}
              {\sum_n p_{nc}^2 + \sum_n t_{nc}^2 + s_{dr}}

    Milletari et al. define the denominator with squares (``squared_pred=True``, the default here). The survey's
    eq. 6 and MONAI's ``DiceLoss`` default use the linear form ``sum p + sum t`` (``squared_pred=False``); the
    two agree on hard predictions and differ on soft ones. With ``batch=True`` the sums run over the whole batch
    (nnU-Net's "batch Dice"), which lowers the variance on small structures.

    A class absent from the target and the prediction scores ``smooth_nr / smooth_dr = 1`` (zero loss); absent
    from the target but predicted with a small mass, it scores about 0 (loss about 1).

    Args:
        include_background: average over class 0 too (the survey's form) or over the foreground classes only.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out of every sum.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: sum over the batch before the ratio.
        squared_pred: square the terms of the denominator (V-Net).
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        squared_pred: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        self.squared_pred = as_bool("squared_pred", squared_pred)
        self.smooth_nr = check_number("smooth_nr", smooth_nr, low=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        return self.average_classes(1.0 - self.dice_coefficient(inputs), inputs)

    def dice_coefficient(self, inputs: SegmentationInputs) -> Tensor:
        """Return the soft Dice coefficient of every class, shape ``(B, K)`` or ``(1, K)``."""
        intersection, prediction_sum, target_sum = inputs.class_sums(squared=self.squared_pred, batch=self.batch)
        return soft_dice(intersection, prediction_sum, target_sum, self.smooth_nr, self.smooth_dr)


def soft_dice(
    intersection: Tensor, prediction_sum: Tensor, target_sum: Tensor, smooth_nr: float, smooth_dr: float
) -> Tensor:
    """Return the Dice coefficient ``(2 I + s_nr) / (P + T + s_dr)`` from the class sums of ``class_sums()``."""
    return (2.0 * intersection + smooth_nr) / (prediction_sum + target_sum + smooth_dr)
