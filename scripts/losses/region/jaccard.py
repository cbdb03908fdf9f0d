"""Jaccard (IoU) loss: one minus the soft intersection over union."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ...options import as_bool
from ..base import SegmentationInputs, SegmentationLoss, check_number
from ..registry import register_loss


@register_loss(
    "jaccard",
    family="region",
    paper="Rahman, Wang, Optimizing intersection-over-union in deep neural networks for image segmentation, "
    "ISVC 2016 (LNCS 10072)",
)
class JaccardLoss(SegmentationLoss):
    r"""Soft Jaccard (intersection over union) loss, one minus the mean soft IoU over the classes.

    .. math:: L = 1 - \frac{1}{|K|} \sum_{c \in K} \frac{I_c + s_{nr}}{U_c + s_{dr}}, \qquad
              I_c = \sum_n p_{nc} t_{nc}, \quad U_c = \sum_n (p_{nc} + t_{nc} - p_{nc} t_{nc})

    Rahman & Wang define it for one sigmoid output, and the survey (Azad et al., eq. 10-11) averages it over all
    classes, as here. ``squared_pred=True`` uses ``U_c = sum p^2 + sum t^2 - I_c``, MONAI's squared form. On hard
    sets the Jaccard index ``J`` and the Dice coefficient ``D`` are tied by ``J = D / (2 - D)``. The soft losses
    differ, and the Jaccard gradient is weaker when the overlap is small.

    MONAI's ``DiceLoss(jaccard=True)`` computes ``(2 I + s_nr) / (2 U + s_dr)``, which equals this loss with half
    the smoothing: ``smooth_nr=1e-5`` here matches MONAI's ``smooth_nr=2e-5``. A class absent from target and
    prediction scores ``s_nr / s_dr = 1`` (zero loss).

    Args:
        include_background: average over class 0 too or over the foreground classes only.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out of every sum.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: sum over the batch before the ratio.
        squared_pred: square the prediction and target terms of the union.
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
        )
        self.squared_pred = as_bool("squared_pred", squared_pred)
        self.smooth_nr = check_number("smooth_nr", smooth_nr, low=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        intersection, prediction_sum, target_sum = inputs.class_sums(squared=self.squared_pred, batch=self.batch)
        union = prediction_sum + target_sum - intersection
        jaccard = (intersection + self.smooth_nr) / (union + self.smooth_dr)
        return self.average_classes(1.0 - jaccard, inputs)
