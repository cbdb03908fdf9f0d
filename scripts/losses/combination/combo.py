"""Combo loss: class-balanced cross-entropy minus the Dice coefficient."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, check_number
from ..distributed import sum_across_ranks
from ..registry import register_loss


@register_loss(
    "combo",
    family="combination",
    paper="Taghanaki et al., Combo loss: handling input and output imbalance in multi-organ segmentation, "
    "CMIG 75 (2019)",
    arxiv="1805.02798",
)
class ComboLoss(SegmentationLoss):
    r"""Combo loss: an alpha-weighted sum of a beta-balanced binary cross-entropy and the negated Dice score.

    .. math:: L = \alpha \, L_{mBCE} - (1 - \alpha) \frac{1}{|K|} \sum_{c \in K} DSC_c, \qquad
              L_{mBCE} = -\frac{1}{N} \sum_n \frac{1}{|K|} \sum_{c \in K}
              \big[\beta \, t_{nc} \ln p_{nc} + (1 - \beta)(1 - t_{nc}) \ln (1 - p_{nc})\big]

    with ``DSC_c = (2 sum p t + s_nr) / (sum p + sum t + s_dr)`` and ``K`` the classes in the loss, each treated
    one-vs-rest on the softmax probabilities. ``beta > 0.5`` penalises false negatives more than false positives;
    ``alpha`` balances the two terms. Class weights weigh the average over ``K`` in both terms.

    This follows Taghanaki et al.: the Dice *coefficient* is subtracted, so the loss is negative at a good fit
    (its minimum is ``-(1 - alpha)``) and beta sits inside the BCE. The survey's eq. 32 adds the Dice *loss*
    instead, which differs by the constant ``1 - alpha``, and drops beta. The authors' public code puts beta
    outside both BCE terms by a misplaced parenthesis; we follow the paper's equation.

    The class sums come from one fused softmax pass (:func:`~scripts.losses.fused.softmax_class_sums`); ``log p``
    is the log-softmax, so a confidently wrong voxel keeps its gradient. In ``log(1 - p)`` a probability that
    rounds to one is clamped (:func:`~scripts.losses.fused.complement_floor`, ``1 - p = 2^-24`` in float32) and
    gets no gradient from that term. With one sigmoid channel, ``log(1 - p)`` of a class is the log-sigmoid of the
    other class.

    Args:
        include_background: include class 0 in ``K``. With a sigmoid, ``K`` is the foreground alone, as in the
            paper's binary form.
        class_weights: weights of the class averages, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: pool the whole batch in both terms.
        alpha: weight of the cross-entropy term; ``1 - alpha`` weighs the Dice term.
        beta: weight of the positive (foreground) part of the cross-entropy; ``1 - beta`` weighs the negatives.
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
        alpha: float = 0.5,
        beta: float = 0.5,
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
        for name, value in (("alpha", alpha), ("beta", beta)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}.")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.smooth_nr = check_number("smooth_nr", smooth_nr, low=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        # Class sums instead of a (B, K, *spatial) BCE tensor: sum t log p and sum (1 - t) log(1 - p).
        if inputs.binary:
            positive, negative, intersection, prediction_sum = self._sigmoid_sums(inputs)
        else:
            positive, negative, intersection, prediction_sum = inputs.softmax_sums(
                [("target", "log_p"), ("nontarget", "log_1mp"), ("target", "p"), ("mask", "p")], batch=self.batch
            ).unbind()
        target_sum = inputs.target_volumes
        voxels = inputs.voxel_count(batch=self.batch).unsqueeze(1)
        if self.batch:
            target_sum = sum_across_ranks(target_sum.sum(dim=0, keepdim=True))
            voxels = sum_across_ranks(voxels)
        class_bce = -(self.beta * positive + (1.0 - self.beta) * negative) / voxels
        dice = (2.0 * intersection + self.smooth_nr) / (prediction_sum + target_sum + self.smooth_dr)

        return self.alpha * self.average_classes(class_bce, inputs) - (1.0 - self.alpha) * self.average_classes(
            dice, inputs
        )

    def _sigmoid_sums(self, inputs: SegmentationInputs) -> tuple[Tensor, ...]:
        """Return the four class sums of :meth:`per_sample_loss` for one sigmoid channel, through autograd."""
        log_probs = inputs.log_probs
        probs = inputs.probs
        target = inputs.target
        # With two classes, log(1 - p) of one class is the log-probability of the other.
        log_complement = log_probs.flip(1)
        # The target is zero at ignored voxels, so only the sums without it need the mask.
        valid = 1.0 if inputs.mask is None else inputs.mask
        masked_probs = probs if inputs.mask is None else probs * inputs.mask
        dims = inputs.spatial_dims
        sums = torch.stack(
            [
                (target * log_probs).sum(dim=dims),
                ((valid - target) * log_complement).sum(dim=dims),
                (target * probs).sum(dim=dims),
                masked_probs.sum(dim=dims),
            ]
        )
        if self.batch:
            sums = sum_across_ranks(sums.sum(dim=1, keepdim=True))
        return sums.unbind()
