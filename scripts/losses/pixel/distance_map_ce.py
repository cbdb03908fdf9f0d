"""Distance-map-derived cross-entropy (Caliva et al.): cross-entropy weighted up next to the target boundaries."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss
from ..extra_inputs import class_map_input
from ..registry import register_loss
from .cross_entropy import voxel_cross_entropy


@register_loss(
    "distance_map_ce",
    family="pixel",
    paper="Caliva et al., Distance map loss penalty term for semantic segmentation, MIDL 2019 extended abstract",
    arxiv="1908.03679",
)
class DistanceMapCrossEntropyLoss(SegmentationLoss):
    r"""Cross-entropy in which each voxel's term is scaled by one plus an inverted distance map of its target class.

    .. math:: L = \frac{\sum_n w_{y_n} (1 + \Phi_n) \, (-\log p_{n, y_n})}{\sum_n w_{y_n}}, \qquad
              \Phi_n = \frac{\max_m d_m - d_n}{\max_m d_m}

    where ``d_n`` is the distance from voxel ``n`` to the nearest voxel of another class and the maximum runs over
    the voxels of ``n``'s target class in the image. The weight ``1 + Phi`` is almost 2 next to every boundary
    and falls to 1 at the deepest voxel of each class, so errors along the contours cost up to twice as much.
    Both sides of a boundary are weighted up, because each side is the inside of its own class. With equal class
    weights the denominator is the voxel count ``N``, Caliva et al.'s normalisation.

    Caliva et al. do not specify how ``Phi`` is inverted and normalised. This library uses the per-image,
    per-class normalised form above (:func:`scripts.distance_maps.inverted_distance_map`), chosen because

    * it lies in ``[0, 1)`` whatever the image size and spacing, so ``1 + Phi`` keeps the cross-entropy's scale
      and the loss needs no extra hyperparameter (``exp(-d / sigma)`` would need a decay length per dataset);
    * distances are Euclidean in the label's voxel spacing, so an anisotropic volume is weighted by physical
      distance;
    * it peaks next to the boundary on both sides: a 1 x 7 row ``0111110`` gives ``Phi = 0 2/3 1/3 0 1/3 2/3 0``
      (the outer zeros are background voxels whose class is one voxel deep).

    For several classes a voxel takes the ``Phi`` of its target class (``sum_c t_nc Phi_nc`` for a soft target).
    The map stores each class's values on that class's voxels and zero elsewhere, so this equals the maximum
    over classes. Pitfalls: a structure one voxel thick gets ``Phi = 0`` (its deepest voxels are its boundary), and
    noisy target boundaries are weighted up with the rest.

    ``Phi`` is a precomputed extra input, ``inverted_distance_map`` of shape ``(B, K, *spatial)``, made by
    :class:`scripts.transforms.DistanceMapd` with ``kind="inverted"`` after spatial augmentation. Class weights,
    ``include_background``, ``ignore_index`` and ``batch`` act as in ``cross_entropy``. MONAI 1.6 has no such loss.

    Args:
        include_background: ``False`` gives background voxels zero weight.
        class_weights: weight of each class, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: average over all voxels of the batch at once.

    Example:
        >>> loss = DistanceMapCrossEntropyLoss()
        >>> loss(logits, labels, inverted_distance_map=batch["inverted_distance_map"])
    """

    extra_inputs = ("inverted_distance_map",)

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
        inverted_map = class_map_input(self, extra_inputs, "inverted_distance_map", inputs)
        if inputs.has_index_target:
            phi = inverted_map.gather(1, inputs.labels.unsqueeze(1)).squeeze(1)
        else:
            phi = (inputs.target * inverted_map).sum(dim=1)
        return self.average_voxels((1.0 + phi) * voxel_cross_entropy(inputs), inputs)
