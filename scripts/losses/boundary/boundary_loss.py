"""Boundary loss (Kervadec et al.): class probabilities weighted by the signed distance to the target boundary."""

from __future__ import annotations

from ..registry import register_loss
from .class_map import ClassMapLoss


@register_loss(
    "boundary",
    family="boundary",
    paper="Kervadec et al., Boundary loss for highly unbalanced segmentation, MIDL 2019 / MedIA 67 (2021)",
    arxiv="1812.07032",
)
class BoundaryLoss(ClassMapLoss):
    r"""Boundary loss: the mean over classes and voxels of the predicted probability times the signed distance map.

    .. math:: L = \frac{1}{|K|} \sum_{c \in K} \frac{1}{N} \sum_n p_{nc} \, \phi_{nc}

    ``phi_c`` is the signed distance to the boundary of target class ``c``: positive outside, zero on the inner
    boundary, negative inside (:func:`scripts.distance_maps.signed_distance_map`). It is a precomputed extra input,
    ``signed_distance_map`` of shape ``(B, K, *spatial)``, made by :class:`scripts.transforms.DistanceMapd` with
    ``kind="signed"`` after spatial augmentation and with the label's voxel spacing. Probability mass outside a
    class costs its distance to the class, and mass inside earns its (negative) depth. Kervadec et al. derive it
    as an integral approximation of a distance between the predicted and target boundaries.

    Conventions a user should know:

    * The loss is negative at a good fit, and its minimum depends on the object's size; that is expected.
    * A class absent from the target (or filling the volume) has an all-zero map, so false positives in it are
      not penalised. Kervadec et al. pair it with a regional loss (generalised Dice) for this reason; the
      ``boundary`` overlay does so with their weight schedule (``weighted_sum`` and
      :class:`scripts.schedules.WeightTransfer`).
    * Distances are in the unit of the spacing (mm), so the loss grows with object size; tune its weight.

    ``mean`` averages per class over the voxels (those not ignored), then over the classes in ``K`` with the class
    weights. The authors' ``SurfaceLoss`` (``LIVIAETS/boundary-loss``, ``losses.py``) likewise averages over its
    selected classes ``idc``; ``include_background`` selects ``K``. With ``batch=True`` the voxel mean runs over
    the whole batch. The values equal MONAI 1.6's ``BoundaryLoss`` where its map agrees with ours. MONAI computes
    the map in every call (slow) and uses Kervadec's ``-(EDT - 1)`` inside, which differs behind concave corners.

    Args:
        include_background: include class 0 in ``K``. Kervadec et al. apply it to the foreground classes.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: average over the voxels of the whole batch.

    Example:
        >>> loss = BoundaryLoss(include_background=False)
        >>> loss(logits, labels, signed_distance_map=batch["signed_distance_map"])
    """

    extra_inputs = ("signed_distance_map",)
