"""Focal loss: cross-entropy that down-weights the voxels the network already classifies well."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, check_number
from ..powers import bounded_power
from ..registry import register_loss


@register_loss(
    "focal",
    family="pixel",
    paper="Lin, Goyal, Girshick, He, Dollar, Focal loss for dense object detection, ICCV 2017",
    arxiv="1708.02002",
)
class FocalLoss(SegmentationLoss):
    r"""Focal loss, the softmax (or sigmoid) cross-entropy scaled by ``(1 - p)^gamma`` at every voxel.

    .. math:: L = \frac{1}{N} \sum_n \sum_{c} -\alpha_c \, t_{nc} \, (1 - p_{nc})^{\gamma} \log p_{nc}

    over the ``N`` voxels of a sample (of the batch with ``batch=True``). A voxel whose target class already has a
    high probability contributes little, so training concentrates on the hard voxels. ``gamma = 0`` and equal
    weights give cross-entropy.

    ``mean`` averages over voxels only. For a one-hot target the sum over classes is the target class's term.
    MONAI's ``FocalLoss(use_softmax=True)`` averages over classes too, so its value is ours divided by the number
    of channels it scores (``C``, or ``C - 1`` with ``include_background=False``). With one channel both equal
    MONAI's sigmoid ``FocalLoss`` at the same ``alpha`` and ``gamma``.

    Alpha: Lin et al. weigh the positives of their sigmoid (binary) form by ``alpha = 0.25`` and the negatives by
    ``1 - alpha``, and ``alpha`` reproduces this for one-channel (sigmoid) logits. For a softmax over ``C >= 2``
    classes, per-class alphas go in ``class_weights`` and ``alpha`` is not used (it warns once unless it is
    ``None``). With one channel, ``class_weights`` multiplies ``[1 - alpha, alpha]``. The weights scale the loss
    instead of cancelling in a weighted mean as in :class:`CrossEntropyLoss`, which is how alpha acts in the
    paper.

    The survey (Azad et al., eq. 4) prints the loss without alpha and as a sum over voxels. ``(1 - p)^gamma`` is
    computed as ``-expm1(log p)`` from the log-softmax, so it stays accurate for ``p`` near 1, and its gradient
    stays finite at ``p = 1`` for ``gamma < 1`` (see :func:`bounded_power`). With ``include_background=False``
    background voxels contribute zero but still count in ``N``, as in MONAI.

    Args:
        include_background: ``False`` gives the background class zero weight.
        class_weights: per-class alpha, length ``num_classes``.
        ignore_index: label of voxels to leave out, which do not count in ``N``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: average over all voxels of the batch at once.
        gamma: focusing parameter, ``>= 0``. The paper's best setting is 2.
        alpha: weight of the foreground of one-channel (sigmoid) logits, in ``[0, 1]``, with ``1 - alpha`` for the
            background, or ``None`` for no alpha weighting. The paper's best setting is 0.25.

    Example:
        >>> loss = FocalLoss(gamma=2.0, alpha=None, class_weights=[0.25, 1.0, 1.0])
        >>> loss(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8)))
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        gamma: float = 2.0,
        alpha: float | None = 0.25,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.alpha = None if alpha is None else check_number("alpha", alpha, low=0.0, high=1.0)
        self._warned_unused_alpha = False

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        voxel_loss = inputs.weighted_target_terms(self.focal_term, self.alpha_weights(inputs))
        return self.mean_over_voxels(voxel_loss, inputs)

    def focal_term(self, log_probs: Tensor) -> Tensor:
        """Return ``-(1 - p)^gamma log p`` elementwise from log-probabilities."""
        return -focal_modulation(log_probs, self.gamma) * log_probs

    def alpha_weights(self, inputs: SegmentationInputs) -> Tensor | None:
        """Return the per-class alpha: ``class_weights``, times ``[1 - alpha, alpha]`` for a sigmoid."""
        if self.alpha is None:
            return self.class_weights
        if not inputs.binary:
            if not self._warned_unused_alpha:
                warnings.warn(
                    f"FocalLoss alpha={self.alpha} applies only to one-channel (sigmoid) logits, but the logits have "
                    f"{inputs.num_classes} channels, so it is not used. Pass per-class weights as class_weights, "
                    "or set alpha=None to silence this warning.",
                    UserWarning,
                    stacklevel=2,
                )
                self._warned_unused_alpha = True
            return self.class_weights
        alpha = torch.tensor([1.0 - self.alpha, self.alpha], device=inputs.logits.device)
        return alpha if self.class_weights is None else alpha * self.class_weights.to(alpha.device)


def focal_modulation(log_probs: Tensor, gamma: float) -> Tensor:
    """Return the focal factor ``(1 - p)^gamma`` elementwise from log-probabilities.

    ``-expm1(log p)`` keeps ``1 - p`` accurate near ``p = 1``, where ``1 - exp(log p)`` cancels, and the power is
    bounded (:func:`bounded_power`), so a certain voxel has a finite gradient for ``gamma < 1``.
    """
    return bounded_power(-torch.expm1(log_probs), gamma)
