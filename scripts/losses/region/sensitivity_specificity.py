"""Sensitivity-specificity loss: squared errors on the positives and on the negatives, weighed apart."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, check_number
from ..distributed import sum_across_ranks
from ..registry import register_loss


@register_loss(
    "sensitivity_specificity",
    family="region",
    paper="Brosch, Yoo, Tang, Li, Traboulsee, Tam, Deep convolutional encoder networks for multiple sclerosis "
    "lesion segmentation, MICCAI 2015 (LNCS 9351)",
)
class SensitivitySpecificityLoss(SegmentationLoss):
    r"""Sensitivity-specificity loss: a weighted sum of the mean squared errors on the positives and the negatives.

    .. math:: L_c = r \, \frac{\sum_n (t_{nc} - p_{nc})^2 \, t_{nc}}{\sum_n t_{nc} + s}
              + (1 - r) \, \frac{\sum_n (t_{nc} - p_{nc})^2 \, (1 - t_{nc})}{\sum_n (1 - t_{nc}) + s},
              \qquad L = \frac{1}{|K|} \sum_{c \in K} L_c

    The first term is the error on the voxels of class ``c`` (one minus a soft sensitivity), the second the error
    on the others (one minus a soft specificity). Brosch et al. define it for one lesion class with
    ``r = 0.05``: lesion voxels are rare, so the specificity term gets most of the weight to stop the network
    from labelling everything as lesion, while the sensitivity term still gives each lesion voxel a large
    weight (each sum is divided by the size of its own voxel set). NiftyNet's multi-class implementation cites the
    authors: ``r`` from 0.01 to 0.10 behaves alike. Several classes: per class, then the (weighted) mean, where
    NiftyNet sums over the classes instead.

    The survey (Azad et al., eq. 16-20) prints a garbled form, ``1 - alpha * sensitivity + (1 - alpha) *
    specificity`` with both terms written as squared errors, which does not decrease as the fit improves. We
    implement Brosch et al.'s equation. ``s`` only guards the denominators: a class absent from the target has a
    zero sensitivity term (it has no positives to miss), not a 0/0. Squared errors on probabilities give weak
    gradients to confidently wrong voxels, so combine it with cross-entropy if that matters.

    Args:
        include_background: average over class 0 too or over the foreground classes only.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out of every sum.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: sum over the batch before the ratios.
        r: weight of the sensitivity term, in ``[0, 1]``. ``1 - r`` weighs the specificity term.
        smooth_dr: added to both denominators.
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        r: float = 0.05,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        self.r = check_number("r", r, low=0.0, high=1.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        positive_error, negative_error = self.squared_errors(inputs)
        positives = inputs.target_volumes
        negatives = inputs.voxel_count().unsqueeze(1) - positives
        if self.batch:
            positive_error, negative_error, positives, negatives = (
                sum_across_ranks(value.sum(dim=0, keepdim=True))
                for value in (positive_error, negative_error, positives, negatives)
            )

        sensitivity_term = positive_error / (positives + self.smooth_dr)
        specificity_term = negative_error / (negatives + self.smooth_dr)
        class_loss = self.r * sensitivity_term + (1.0 - self.r) * specificity_term
        return self.average_classes(class_loss, inputs)

    def squared_errors(self, inputs: SegmentationInputs) -> tuple[Tensor, Tensor]:
        """Return ``sum (t - p)^2 t`` and ``sum (t - p)^2 (1 - t)`` per class over the voxels in the loss."""
        target = inputs.target
        squared_error = (target - inputs.probs).square()
        if inputs.mask is not None:
            squared_error = squared_error * inputs.mask
        positive_error = (squared_error * target).sum(dim=inputs.spatial_dims)
        # For a one-hot target the remainder is exactly the error on the negatives.
        negative_error = squared_error.sum(dim=inputs.spatial_dims) - positive_error
        return positive_error, negative_error
