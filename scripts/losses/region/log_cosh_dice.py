"""Log-cosh Dice loss: the Dice loss passed through log(cosh(x))."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ..base import SegmentationInputs
from ..registry import register_loss
from .dice import DiceLoss


@register_loss(
    "log_cosh_dice",
    family="region",
    paper="Jadon, A survey of loss functions for semantic segmentation, IEEE CIBCB 2020",
    arxiv="2006.14822",
)
class LogCoshDiceLoss(DiceLoss):
    r"""Log-cosh Dice loss: ``log(cosh(L_Dice))`` of the class-averaged Dice loss.

    .. math:: L = \log \cosh \Big( 1 - \frac{1}{|K|} \sum_{c \in K} DSC_c \Big), \qquad
              \cosh x = \frac{e^x + e^{-x}}{2}

    with ``DSC_c`` the soft Dice coefficient of :class:`DiceLoss`, whose options this loss shares. Because the
    Dice loss lies in ``[0, 1]``, the value lies in ``[0, log cosh 1] = [0, 0.4338]``. Its gradient is
    ``tanh(L_Dice)`` times the Dice gradient, so it is smaller than the Dice gradient and fades near a perfect
    fit, where the loss behaves like ``L_Dice^2 / 2``. With ``batch=False`` each sample's Dice loss goes through
    the log-cosh before the reduction over samples.

    Choices and differences:

    * The survey (Azad et al., eq. 8) defines ``cosh x = (e^x - e^{-x}) / 2``, which is ``sinh``. The plus sign is
      the correct one and the one of Jadon's code.
    * Multi-class form: log-cosh of the class-averaged Dice loss, i.e. the survey's eq. 8 applied to its eq. 7, so
      the value is a monotone function of the Dice loss and only rescales its gradient by ``tanh(L_Dice)``.
      Log-cosh per class and then the mean would be a different loss that weighs poorly segmented classes more.
      Jadon's Keras code flattens every channel into a single Dice instead.
    * The Dice uses the linear denominator ``sum p + sum t`` by default, as Jadon's code and the survey's eq. 6,
      and ``squared_pred=True`` gives the V-Net form. Jadon's code smooths with 1, whereas the default here is the
      library's ``1e-5``, which does not bias small structures.
    * ``log(cosh(x))`` is computed as ``x + softplus(-2x) - log 2``, which equals it and never overflows.

    Args:
        include_background: average the Dice over class 0 too or over the foreground classes only.
        class_weights: weights of the Dice class average, length ``num_classes``.
        ignore_index: label of voxels to leave out of every sum.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: sum over the batch before the Dice ratio.
        squared_pred: square the terms of the Dice denominator (V-Net).
        smooth_nr: added to the Dice numerator.
        smooth_dr: added to the Dice denominator.
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        squared_pred: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
            squared_pred=squared_pred,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
        )

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        return log_cosh(super().per_sample_loss(inputs))


def log_cosh(x: Tensor) -> Tensor:
    """Compute ``log(cosh(x))`` as ``x + softplus(-2x) - log 2``, which cannot overflow for any ``x``."""
    return x + F.softplus(-2.0 * x) - math.log(2.0)
