"""The shared form of the boundary and region-wise losses: class probabilities weighted by a per-class map."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss
from ..extra_inputs import class_map_input


class ClassMapLoss(SegmentationLoss):
    """Average over the classes in ``K`` of the voxel mean of ``probs * map``, the map an extra input.

    A subclass names its map as the single entry of ``extra_inputs``. ``mean`` averages per class over the voxels
    (those not ignored), then over the classes in ``K`` with the class weights; with ``batch=True`` the voxel mean
    runs over the whole batch.

    Args:
        include_background: include class 0 in ``K``.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: average over the voxels of the whole batch.
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

    def per_sample_loss(self, inputs: SegmentationInputs, **extra_inputs: Any) -> Tensor:
        class_map = class_map_input(self, extra_inputs, self.extra_inputs[0], inputs)
        class_loss = inputs.voxel_mean(inputs.probs * class_map, batch=self.batch)
        return self.average_classes(class_loss, inputs)
