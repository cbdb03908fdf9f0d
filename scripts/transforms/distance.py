"""Per-class distance maps of the augmented label, for the losses that weigh voxels by their distance to a boundary.

:class:`DistanceMapd` runs in the training chain after all spatial augmentation (the bundle's ``loss_transforms``
hook), so each map matches the patch that the network receives. A map of the full volume, cropped afterwards, would
differ near the crop border. It reads the voxel spacing from the label's affine and stores a ``(K, *spatial)`` float32
map, one channel per class, under the key that the matching loss expects as an extra input:

============  ==========================  ===========================================  ====================
kind          key                         map of class ``k``                           loss
============  ==========================  ===========================================  ====================
signed        ``signed_distance_map``     signed distance to the boundary of ``k``     ``boundary``
boundary      ``boundary_distance_map``   unsigned distance to the boundary of ``k``   ``hausdorff``
region_wise   ``region_wise_map``         rectified region-wise map (RRW)              ``region_wise``
inverted      ``inverted_distance_map``   inverted distance map, in ``[0, 1)``         ``distance_map_ce``
============  ==========================  ===========================================  ====================

:mod:`scripts.distance_maps` defines each map and its convention for empty and full classes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.transforms import MapTransform
from torch import Tensor

from ..distance_maps import boundary_distance_map, inverted_distance_map, region_wise_map, signed_distance_map

MAP_FUNCTIONS: dict[str, Callable[..., Tensor]] = {
    "signed": signed_distance_map,
    "boundary": boundary_distance_map,
    "region_wise": region_wise_map,
    "inverted": inverted_distance_map,
}

# The batch key of each kind, equal to the ``extra_inputs`` name of the loss that reads it.
MAP_KEYS: dict[str, str] = {
    "signed": "signed_distance_map",
    "boundary": "boundary_distance_map",
    "region_wise": "region_wise_map",
    "inverted": "inverted_distance_map",
}


def class_distance_maps(
    labels: Tensor | np.ndarray,
    num_classes: int,
    kind: str,
    spacing: Sequence[float] | None = None,
    ignore_index: int | None = None,
    batched: bool = False,
) -> Tensor:
    """Compute one distance map per class from class-index labels.

    Args:
        labels: class indices, channel first: ``(1, *spatial)``, or ``(B, 1, *spatial)`` with ``batched=True``.
            Any integer or integer-valued float dtype.
        num_classes: number of classes ``K``, background included (2 for a binary problem with a sigmoid).
        kind: ``"signed"``, ``"boundary"``, ``"region_wise"`` or ``"inverted"`` (see the module docstring).
        spacing: voxel size per spatial axis. ``None`` reads it from the affine of a MetaTensor label, and uses 1
            per axis for a plain tensor.
        ignore_index: a label value that belongs to no class (unlabelled voxels).
        batched: whether ``labels`` carries a leading batch axis.

    Returns:
        float32 maps ``(K, *spatial)``, or ``(B, K, *spatial)`` with ``batched=True``, on the labels' device.

    Raises:
        ValueError: for an unknown kind, fewer than two classes, a label shape without a single channel, or a
            label outside ``[0, num_classes)`` that is not ``ignore_index``.
    """
    _check_options(kind, num_classes)
    channel_axis = 1 if batched else 0
    if spacing is None:
        spacing = label_spacing(labels, labels.ndim - channel_axis - 1)
    masks = _class_masks(labels, num_classes, ignore_index, channel_axis)
    spatial_dims = masks.ndim - channel_axis - 1
    return MAP_FUNCTIONS[kind](masks, spacing, spatial_dims)


def label_spacing(label: Tensor | np.ndarray, spatial_dims: int) -> tuple[float, ...] | None:
    """Return the voxel spacing recorded in a MetaTensor's affine, or ``None`` for a tensor without metadata.

    A batched MetaTensor must have the same spacing in every sample; distance maps of mixed spacings need one call
    per sample.
    """
    if not isinstance(label, MetaTensor):
        return None
    affine = label.affine
    if affine.ndim == 3:
        spacings = set(sample_spacings(label, spatial_dims))
        if len(spacings) > 1:
            raise ValueError(
                f"the samples of this batch have different voxel spacings {sorted(spacings)}; compute the distance "
                "maps per sample, or resample the images to one spacing first."
            )
        return spacings.pop()
    return tuple(affine_to_spacing(affine, r=spatial_dims).tolist())


def sample_spacings(label: Tensor | np.ndarray, spatial_dims: int) -> list[tuple[float, ...]] | None:
    """Return the voxel spacing of every sample of a batched MetaTensor, or ``None`` for a tensor without metadata.

    Random scaling in the training transforms changes each sample's affine. The samples of one batch can thus have
    different spacings, and a map computed per sample uses its own.
    """
    if not isinstance(label, MetaTensor):
        return None
    affine = label.affine
    matrices = affine if affine.ndim == 3 else affine.unsqueeze(0).expand(label.shape[0], -1, -1)
    return [tuple(affine_to_spacing(matrix, r=spatial_dims).tolist()) for matrix in matrices]


class DistanceMapd(MapTransform):
    """Compute per-class distance maps from a class-index label and store them under a new key.

    Place it after all spatial augmentation (the bundle's ``loss_transforms``). The label is the channel-first
    ``(1, *spatial)`` class-index image of the training chain. The map is a float32 ``(K, *spatial)`` tensor with
    the label's affine and metadata, so it can be saved and inspected like the label.

    Args:
        keys: the label key; exactly one.
        num_classes: number of classes ``K``, background included (2 for a binary problem with a sigmoid).
        kind: ``"signed"`` (``boundary`` loss), ``"boundary"`` (``hausdorff``), ``"region_wise"``
            (``region_wise``) or ``"inverted"`` (``distance_map_ce``).
        output_key: where to store the map; default the key that the matching loss expects, e.g.
            ``signed_distance_map`` for ``kind="signed"``.
        spacing: voxel size per spatial axis. ``None`` reads it from the label's affine (``label.pixdim``), which
            spatial transforms keep up to date; a label without metadata gets 1 per axis.
        ignore_index: a label value that belongs to no class. Voxels next to an ignored region then count as
            boundary voxels of their class.
        allow_missing_keys: skip a sample without the label key instead of raising ``KeyError``.

    Example:
        In ``configs/losses/boundary.yaml``::

            loss_transforms:
              - _target_: scripts.transforms.DistanceMapd
                keys: label
                num_classes: "@num_classes"
                kind: signed
            loss_input_keys: [signed_distance_map]
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        kind: str = "signed",
        output_key: str | None = None,
        spacing: Sequence[float] | None = None,
        ignore_index: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(
                f"DistanceMapd takes exactly one label key, got {list(self.keys)}; add one transform per label."
            )
        _check_options(kind, num_classes)
        self.num_classes = num_classes
        self.kind = kind
        self.output_key = output_key or MAP_KEYS[kind]
        self.spacing = None if spacing is None else tuple(float(value) for value in spacing)
        self.ignore_index = ignore_index

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        sample = dict(data)
        for key in self.key_iterator(sample):
            label = sample[key]
            maps = class_distance_maps(label, self.num_classes, self.kind, self.spacing, self.ignore_index)
            if isinstance(label, MetaTensor):
                meta = dict(label.meta)
                meta["affine"] = label.affine.clone()
                maps = MetaTensor(maps, meta=meta)
            sample[self.output_key] = maps
        return sample


def _check_options(kind: str, num_classes: int) -> None:
    if kind not in MAP_FUNCTIONS:
        raise ValueError(f"kind must be one of {sorted(MAP_FUNCTIONS)}, got {kind!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer of at least 2 (background included), got {num_classes!r}; "
            "use 2 for a binary problem with one sigmoid output channel."
        )


def _class_masks(labels: Tensor | np.ndarray, num_classes: int, ignore_index: int | None, channel_axis: int) -> Tensor:
    """Validate index labels and return one boolean mask per class, the channel axis becoming the class axis."""
    labels = torch.as_tensor(labels.as_tensor() if isinstance(labels, MetaTensor) else labels)
    if labels.ndim < channel_axis + 2 or labels.shape[channel_axis] != 1:
        expected = "(B, 1, *spatial)" if channel_axis else "(1, *spatial)"
        raise ValueError(
            f"the label must hold class indices of shape {expected} with one channel, got shape "
            f"{tuple(labels.shape)}; convert a one-hot label with argmax over its channels first."
        )
    labels = labels.squeeze(channel_axis)
    if labels.is_floating_point():
        invalid = ~torch.isfinite(labels) | (labels != labels.round())
        if bool(invalid.any()):
            raise ValueError(
                f"the label contains the non-integer value {labels[invalid][0].item()}; distance maps need class "
                f"indices 0 to {num_classes - 1}. Resample labels with nearest-neighbour interpolation."
            )
    labels = labels.long()
    valid = (labels >= 0) & (labels < num_classes)
    if ignore_index is not None:
        valid |= labels == ignore_index
    if not bool(valid.all()):
        hint = f" or the ignore_index {ignore_index}" if ignore_index is not None else ""
        raise ValueError(
            f"the label contains the value {labels[~valid][0].item()}, outside the classes 0 to {num_classes - 1}"
            f"{hint}. Set num_classes to the number of classes, background included, or set ignore_index for "
            "unlabelled voxels."
        )
    classes = torch.arange(num_classes, device=labels.device).reshape(num_classes, *(1,) * (labels.ndim - channel_axis))
    return labels.unsqueeze(channel_axis) == classes
