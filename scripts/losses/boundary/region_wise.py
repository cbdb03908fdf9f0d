"""Region-wise loss (Valverde and Tohka): class probabilities weighted by the rectified region-wise map."""

from __future__ import annotations

from ..registry import register_loss
from .class_map import ClassMapLoss


@register_loss(
    "region_wise",
    family="boundary",
    paper="Valverde and Tohka, Region-wise loss for biomedical image segmentation, Pattern Recognition 136 (2023)",
    arxiv="2108.01405",
)
class RegionWiseLoss(ClassMapLoss):
    r"""Region-wise loss with rectified region-wise (RRW) maps: the mean of the softmax times a per-class map.

    .. math:: L = \frac{1}{|K|} \sum_{c \in K} \frac{1}{N} \sum_n p_{nc} \, z_{nc}, \qquad
              z_{nc} = \begin{cases} -d_{nc} / \max_m d_{mc} & n \in c \\ 1 & \text{otherwise} \end{cases}

    with ``d_nc`` the distance from voxel ``n`` of class ``c`` to the nearest voxel of another class, maximised over
    the class's voxels in the image. Probability on a wrong class costs 1 wherever it sits, and probability on the
    right class earns between 0 (next to the boundary) and -1 (deepest voxel). A class filling the image is -1
    everywhere; an absent class is +1 everywhere, so, unlike the boundary loss, its false positives are penalised.
    The loss is negative at a good fit. ``z`` is a precomputed extra input, ``region_wise_map`` of shape
    ``(B, K, *spatial)``, made by :class:`scripts.transforms.DistanceMapd` with ``kind="region_wise"`` after
    spatial augmentation and with the label's voxel spacing (:func:`scripts.distance_maps.region_wise_map`).

    The survey's eq. 31 writes a sum over pixels; this is the mean, as in the authors' code
    (``jmlipman/RegionWiseLoss``, ``rwexp_loss.py``), which only rescales the loss. ``mean`` averages per class
    over the voxels (those not ignored), then over the classes in ``K`` with the class weights; with
    ``batch=True`` the voxel mean runs over the whole batch. The RRW map is normalised per image and per class, so
    its scale does not grow with the object. For a class that fills the image, the authors' code takes SciPy's
    distances to a phantom voxel outside it; here the class is -1 everywhere. Their "gradual" variants weigh
    cross-entropy or Dice by ``max((100 - epoch) / 100, 0.01)`` and this loss by one minus that. ``weighted_sum``
    with :class:`scripts.schedules.WeightTransfer` (start 1 and 0, step 0.01, floor 0.01, ``keep_total=True``)
    reproduces it. MONAI 1.6 has no region-wise loss.

    Args:
        include_background: include class 0 in ``K``; Valverde and Tohka's maps cover every class.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: average over the voxels of the whole batch.

    Example:
        >>> loss = RegionWiseLoss()
        >>> loss(logits, labels, region_wise_map=batch["region_wise_map"])
    """

    extra_inputs = ("region_wise_map",)
