"""Cross-entropy, the pixel-level baseline of every comparison."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss
from ..registry import register_loss


@register_loss(
    "cross_entropy",
    family="pixel",
    paper="Categorical cross-entropy (multinomial log-loss), class-weighted as in Azad et al. 2023, eq. 2",
)
class CrossEntropyLoss(SegmentationLoss):
    r"""Cross-entropy between the softmax (or sigmoid) output and the target, with optional class weights.

    .. math:: L = \frac{\sum_n w_{y_n} \, (-\log p_{n, y_n})}{\sum_n w_{y_n}}

    over the voxels ``n`` of a sample (of the batch with ``batch=True``), where ``w`` are the class weights. With
    equal weights this is the voxel mean. A soft target uses ``-sum_c t_c log p_c`` and the weight
    ``sum_c w_c t_c``. This is the normalisation of ``torch.nn.CrossEntropyLoss``, which divides by the summed
    weights; the survey's eq. 1-2 write a plain sum over voxels instead, which differs only by a scale.

    ``reduction="mean"`` with ``batch=False`` averages the per-sample voxel means, so it equals PyTorch's value
    when every sample has the same number of valid voxels and equal weights; ``batch=True`` gives PyTorch's global
    weighted mean exactly. With one channel it is binary cross-entropy on the sigmoid.

    Args:
        include_background: ``False`` gives background voxels zero weight (the loss covers foreground voxels only).
        class_weights: weight of each class, length ``num_classes``, e.g. inverse class frequencies.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: average over all voxels of the batch at once.

    Example:
        >>> loss = CrossEntropyLoss(class_weights=[0.2, 1.0, 1.0])
        >>> loss(torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 1, 8, 8, 8)))
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        return self.average_voxels(voxel_cross_entropy(inputs), inputs)


def voxel_cross_entropy(inputs: SegmentationInputs) -> Tensor:
    """Return the unweighted cross-entropy of every voxel, shape ``(B, *spatial)``."""
    if inputs.has_index_target:
        # Ignored voxels carry label 0 and get zero weight later.
        return -inputs.target_log_probs
    return -(inputs.target * inputs.log_probs).sum(dim=1)
