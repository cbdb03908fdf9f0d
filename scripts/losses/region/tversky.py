"""Tversky and focal Tversky losses: overlap losses that weigh false positives and false negatives apart."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, check_number
from ..powers import bounded_power
from ..registry import register_loss

CLASS_REDUCTIONS = ("mean", "sum")


@register_loss(
    "tversky",
    family="region",
    paper="Salehi, Erdogmus, Gholipour, Tversky loss function for image segmentation using 3D fully "
    "convolutional deep networks, MLMI 2017",
    arxiv="1706.05721",
)
class TverskyLoss(SegmentationLoss):
    r"""Tversky loss, one minus the mean Tversky index over the classes.

    .. math:: TI_c = \frac{I_c + s_{nr}}{I_c + \alpha \, FP_c + \beta \, FN_c + s_{dr}}, \qquad
              L = 1 - \frac{1}{|K|} \sum_{c \in K} TI_c

    with the soft counts ``I_c = sum p t``, ``FP_c = sum p (1 - t)`` and ``FN_c = sum (1 - p) t`` over the voxels.
    ``alpha`` weighs false positives and ``beta`` false negatives, as in Salehi et al. and MONAI's
    ``TverskyLoss``. The survey (Azad et al., eq. 13-14) swaps the two names. ``alpha = beta = 0.5`` gives the
    Dice loss (linear form) and ``alpha = beta = 1`` the Jaccard loss. The defaults ``alpha = 0.3, beta = 0.7``
    are the paper's best setting for multiple-sclerosis lesions: missing lesion voxels costs more than
    over-segmenting them, which raises recall on small structures. With equal settings it equals MONAI's
    ``TverskyLoss(softmax=True, to_onehot_y=True)``.

    Args:
        include_background: average over class 0 too or over the foreground classes only.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out of every sum.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: sum over the batch before the ratio.
        alpha: weight of the false positives, ``>= 0``.
        beta: weight of the false negatives, ``>= 0``.
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
        alpha: float = 0.3,
        beta: float = 0.7,
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
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)
        self.smooth_nr = check_number("smooth_nr", smooth_nr, low=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        return self.average_classes(1.0 - self.tversky_index(inputs), inputs)

    def tversky_index(self, inputs: SegmentationInputs) -> Tensor:
        """Return the Tversky index of every class, shape ``(B, K)`` or ``(1, K)``."""
        return tversky_index(
            *inputs.class_sums(batch=self.batch),
            alpha=self.alpha,
            beta=self.beta,
            smooth_nr=self.smooth_nr,
            smooth_dr=self.smooth_dr,
        )


@register_loss(
    "focal_tversky",
    family="region",
    paper="Abraham, Khan, A novel focal Tversky loss function with improved attention U-Net for lesion "
    "segmentation, ISBI 2019",
    arxiv="1810.07842",
)
class FocalTverskyLoss(TverskyLoss):
    r"""Focal Tversky loss: the per-class Tversky loss raised to the power ``1 / gamma``.

    .. math:: L = \frac{1}{|K|} \sum_{c \in K} (1 - TI_c)^{1/\gamma} \quad \text{(class\_reduction="mean")},
              \qquad L = \sum_{c \in K} (1 - TI_c)^{1/\gamma} \quad \text{(class\_reduction="sum")}

    with ``TI_c`` the Tversky index of :class:`TverskyLoss`. With ``gamma > 1`` (the paper's best is
    ``4/3``, exponent 0.75) a class that is already segmented well (small ``1 - TI``) keeps a larger loss and
    gradient than under the Tversky loss, so training keeps working on the hard classes. ``gamma = 1`` gives the
    Tversky loss.

    Abraham & Khan's code weighs the false negatives by 0.7 and the false positives by 0.3 and smooths with 1.
    With the Tversky convention here (``alpha`` on false positives) the same weights are ``alpha=0.3,
    beta=0.7``, the defaults.

    Sum or mean over classes: the paper and the survey (Azad et al., eq. 15) sum over classes, most code averages.
    The default ``class_reduction="mean"`` keeps the scale independent of the number of classes, like every other
    region loss here, so the loss can be swapped without retuning a learning rate or a combination weight.
    ``"sum"`` gives the paper's form (with class weights: the weighted sum).

    The base ``1 - TI`` of the power is bounded as in :func:`bounded_power`, because the slope of ``x^0.75`` is
    unbounded at ``x = 0``. A perfectly segmented class reaches that point, and so does a class absent from target
    and prediction (``TI = 1`` through the smoothing). The gradient would be inf or NaN there.


    Args:
        include_background: take class 0 into the average (or sum) too.
        class_weights: weights of the class average (or sum), length ``num_classes``.
        ignore_index: label of voxels to leave out of every sum.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: sum over the batch before the ratio.
        alpha: weight of the false positives.
        beta: weight of the false negatives.
        smooth_nr: added to the numerator of the Tversky index.
        smooth_dr: added to the denominator of the Tversky index.
        gamma: focal parameter, ``> 0``. The exponent is ``1 / gamma``.
        class_reduction: ``"mean"`` or ``"sum"`` over the classes.
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        gamma: float = 4.0 / 3.0,
        class_reduction: str = "mean",
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
            alpha=alpha,
            beta=beta,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
        )
        self.gamma = check_number("gamma", gamma, low=0.0, low_open=True)
        if class_reduction not in CLASS_REDUCTIONS:
            raise ValueError(f"class_reduction must be one of {CLASS_REDUCTIONS}, got {class_reduction!r}.")
        self.class_reduction = class_reduction

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        class_loss = focal_tversky_term(self.tversky_index(inputs), 1.0 / self.gamma)
        mean = self.average_classes(class_loss, inputs)
        if self.class_reduction == "mean":
            return mean
        return mean * self.class_weight_total(inputs)

    def class_weight_total(self, inputs: SegmentationInputs) -> float | Tensor:
        """Return the number of classes in the loss, or their summed weights: the factor from mean to sum."""
        classes = range(inputs.num_classes)[inputs.region_classes]
        if self.class_weights is None:
            return float(len(classes))
        return self.class_weights[inputs.region_classes].sum().to(inputs.logits.dtype)


def tversky_index(
    intersection: Tensor,
    prediction_sum: Tensor,
    target_sum: Tensor,
    alpha: float,
    beta: float,
    smooth_nr: float,
    smooth_dr: float,
) -> Tensor:
    """Return ``(I + s_nr) / (I + alpha FP + beta FN + s_dr)`` from the class sums of ``class_sums()``."""
    false_positives = prediction_sum - intersection
    false_negatives = target_sum - intersection
    denominator = intersection + alpha * false_positives + beta * false_negatives + smooth_dr
    return (intersection + smooth_nr) / denominator


def focal_tversky_term(tversky: Tensor, exponent: float) -> Tensor:
    """Return ``(1 - TI)^exponent`` with a bounded slope at ``TI = 1`` (see :func:`bounded_power`)."""
    return bounded_power(1.0 - tversky, exponent)
