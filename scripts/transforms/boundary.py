"""Ground-truth maps of label boundaries for the auxiliary-head boundary losses.

Each map has a plain function (tensor in, tensor out), used by the tests and by the losses' example inputs, and a
MONAI dictionary transform for the training chain (``loss_transforms``). The transform reads the augmented
``label`` and its voxel spacing and writes one new key:

* :func:`label_boundary` / :class:`LabelBoundaryd`: the voxels whose label differs from one of their face
  neighbours, on both sides of every interface (InverseForm's boundary target).
* :func:`label_boundary_distance` / :class:`LabelBoundaryDistanced`: the distance of every voxel to that
  boundary (the map that steers the active boundary loss).
* :func:`distance_bins` / :class:`DistanceBinsd`: per class, the truncated and quantised depth of each voxel inside
  the class (the target of the boundary-aware loss of Hayder et al.).

Every distance comes from :mod:`scripts.distance_maps` (exact, in the unit of the voxel spacing, mm in the
bundle). The image border is never a boundary: a patch border cuts objects, it does not end them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import Tensor

from ..distance_maps import euclidean_distance_transform, inner_boundary

# Distances within this tolerance of an integer count as that integer before the ceiling, so that a distance of
# exactly 2 mm that float arithmetic returns as 2.0000002 still lands in bin 2.
_CEIL_TOLERANCE = 1e-4


def label_boundary(labels: Tensor, spatial_dims: int | None = None) -> Tensor:
    """Return the voxels that have a face neighbour with another label (6-connectivity in 3D, 4 in 2D).

    Both sides of every interface are marked, so the boundary between two classes is two voxels thick. This is the
    union over the classes of :func:`scripts.distance_maps.inner_boundary`.

    Args:
        labels: integer (or integer-valued float) class indices ``(*batch, *spatial)``.
        spatial_dims: number of trailing spatial axes; default 3, or 2 for a 2D tensor.

    Returns:
        boolean tensor of the labels' shape.
    """
    labels = _as_integer_labels(labels)
    classes = torch.unique(labels)
    if classes.numel() < 2:
        return torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    spatial_dims = spatial_dims if spatial_dims is not None else min(labels.ndim, 3)
    masks = labels.unsqueeze(0) == classes.view(-1, *([1] * labels.ndim))
    return inner_boundary(masks, spatial_dims=spatial_dims).any(dim=0)


def label_boundary_distance(
    labels: Tensor, spacing: Sequence[float] | None = None, spatial_dims: int | None = None
) -> Tensor:
    """Return the distance of every voxel to the nearest :func:`label_boundary` voxel (0 on the boundary).

    A volume without any boundary (a single label) gets an all-zero map, the convention of
    :mod:`scripts.distance_maps` for "no boundary".

    Args:
        labels: class indices ``(*batch, *spatial)``.
        spacing: voxel size per spatial axis; distances are in its unit. ``None`` means 1 per axis.
        spatial_dims: number of trailing spatial axes; default ``len(spacing)`` or 3 (2 for a 2D tensor).

    Returns:
        float32 tensor of the labels' shape.
    """
    if spatial_dims is None:
        spatial_dims = len(spacing) if spacing is not None else min(labels.ndim, 3)
    boundary = label_boundary(labels, spatial_dims)
    distances = euclidean_distance_transform(~boundary, spacing, spatial_dims)
    return torch.nan_to_num(distances, posinf=0.0)


def distance_bins(
    labels: Tensor,
    num_classes: int,
    max_distance: int = 5,
    num_bins: int = 6,
    spacing: Sequence[float] | None = None,
    spatial_dims: int | None = None,
) -> Tensor:
    r"""Return, per class, the quantised truncated depth of every voxel inside that class.

    For class ``c`` the depth is :math:`D_c(v) = \min(\lceil d_c(v) \rceil, R)`, with :math:`R` =
    ``max_distance``. Inside the class, :math:`d_c(v)` is the distance to the nearest voxel of another class, so
    the voxels on the inner boundary have depth 1 with unit spacing; outside the class it is 0. The integer depths
    ``0..R`` are split into ``num_bins`` equal bins, ``bin = floor(D * K / (R + 1))``. With ``num_bins = R + 1``
    every depth has its own bin, and bin 0 means "outside the class".

    A class that fills the whole volume has no boundary in it; its voxels are at least as deep as the patch
    allows and get the deepest bin. An absent class is bin 0 everywhere.

    Args:
        labels: class indices ``(*spatial)`` or ``(1, *spatial)`` (the channel-first label of a transform).
        num_classes: number of classes of the network's softmax; 1 means a single sigmoid channel, whose only
            class in this map is the foreground (label 1).
        max_distance: truncation distance :math:`R`, in the unit of ``spacing`` (mm in the bundle).
        num_bins: number of bins :math:`K`, between 2 and ``max_distance + 1``.
        spacing: voxel size per spatial axis. ``None`` means 1 per axis.
        spatial_dims: number of spatial axes; default ``len(spacing)`` or 3 (2 for a 2D tensor).

    Returns:
        float32 tensor ``(num_classes, *spatial)`` (one channel for ``num_classes == 1``) of integer bin indices.

    Raises:
        ValueError: for a label outside ``[0, num_classes)`` or invalid ``num_classes``, ``max_distance`` or
            ``num_bins``.
    """
    check_bin_options(max_distance, num_bins)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    labels = _as_integer_labels(labels)
    if spatial_dims is None:
        spatial_dims = len(spacing) if spacing is not None else min(labels.ndim, 3)
    spatial = labels.reshape(labels.shape[labels.ndim - spatial_dims :])
    if spatial.numel() != labels.numel():
        raise ValueError(f"labels must hold one volume, (*spatial) or (1, *spatial), got shape {tuple(labels.shape)}.")
    _check_label_range(spatial, max(num_classes, 2))

    classes = [1] if num_classes == 1 else list(range(num_classes))
    masks = torch.stack([spatial == c for c in classes])
    depth = euclidean_distance_transform(masks, spacing, spatial_dims)
    # inf marks a class that fills the volume: deeper than any distance the patch can show.
    depth = torch.ceil(depth.clamp_max(float(max_distance)) - _CEIL_TOLERANCE).clamp_min(0.0).long()
    return (depth * num_bins // (max_distance + 1)).to(torch.float32)


def check_bin_options(max_distance: int, num_bins: int) -> None:
    """Raise ``ValueError`` unless ``max_distance >= 1`` and ``2 <= num_bins <= max_distance + 1`` are integers."""
    if isinstance(max_distance, bool) or not isinstance(max_distance, int) or max_distance < 1:
        raise ValueError(f"max_distance must be an integer of at least 1 (mm), got {max_distance!r}.")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or not 2 <= num_bins <= max_distance + 1:
        raise ValueError(
            f"num_bins must be an integer from 2 to max_distance + 1 = {max_distance + 1}, got {num_bins!r}; "
            "more bins than integer depths would leave bins that no voxel can reach."
        )


class _LabelMapd(MapTransform):
    """Write a map computed from ``data[key]`` (a channel-first label) under ``output_key``."""

    def __init__(self, keys: KeysCollection = "label", output_key: str = "", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} reads one label key, got keys {list(self.keys)}.")
        if not output_key:
            raise ValueError(f"{type(self).__name__} needs an output_key to write the map to.")
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            if not isinstance(label, Tensor) or label.ndim < 2:
                raise ValueError(
                    f"{type(self).__name__} expects data[{key!r}] to be a channel-first label tensor (1, *spatial), "
                    f"got {type(label).__name__} of shape {getattr(label, 'shape', None)}."
                )
            spacing = voxel_spacing(label)
            plain = label.as_tensor() if hasattr(label, "as_tensor") else label
            d[self.output_key] = self.compute(plain, spacing).to(torch.float32)
        return d

    def compute(self, label: Tensor, spacing: tuple[float, ...]) -> Tensor:
        raise NotImplementedError


class LabelBoundaryd(_LabelMapd):
    """Write :func:`label_boundary` of the label as a float ``(1, *spatial)`` 0/1 map (default key ``boundary``)."""

    def __init__(self, keys: KeysCollection = "label", output_key: str = "boundary", allow_missing_keys: bool = False):
        super().__init__(keys, output_key, allow_missing_keys)

    def compute(self, label: Tensor, spacing: tuple[float, ...]) -> Tensor:
        return label_boundary(label[0], spatial_dims=len(spacing)).unsqueeze(0)


class LabelBoundaryDistanced(_LabelMapd):
    """Write :func:`label_boundary_distance` of the label, ``(1, *spatial)`` in mm (key ``boundary_distance``)."""

    def __init__(
        self, keys: KeysCollection = "label", output_key: str = "boundary_distance", allow_missing_keys: bool = False
    ):
        super().__init__(keys, output_key, allow_missing_keys)

    def compute(self, label: Tensor, spacing: tuple[float, ...]) -> Tensor:
        return label_boundary_distance(label[0], spacing).unsqueeze(0)


class DistanceBinsd(_LabelMapd):
    """Write :func:`distance_bins` of the label, ``(num_classes, *spatial)`` (default key ``distance_bins``).

    Args:
        keys: the label key.
        num_classes: the network's output channels (1 for a sigmoid).
        max_distance: truncation distance in mm.
        num_bins: number of bins.
        output_key: where to write the map.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        num_classes: int = 2,
        max_distance: int = 5,
        num_bins: int = 6,
        output_key: str = "distance_bins",
        allow_missing_keys: bool = False,
    ):
        super().__init__(keys, output_key, allow_missing_keys)
        check_bin_options(max_distance, num_bins)
        self.num_classes = num_classes
        self.max_distance = max_distance
        self.num_bins = num_bins

    def compute(self, label: Tensor, spacing: tuple[float, ...]) -> Tensor:
        return distance_bins(label, self.num_classes, self.max_distance, self.num_bins, spacing)


def voxel_spacing(label: Tensor) -> tuple[float, ...]:
    """Return the voxel size of a channel-first label: its MetaTensor ``pixdim``, or 1 per axis for a plain tensor."""
    spatial_dims = label.ndim - 1
    pixdim = getattr(label, "pixdim", None)
    if pixdim is None:
        return (1.0,) * spatial_dims
    values = np.asarray(torch.as_tensor(pixdim).detach().cpu(), dtype=np.float64).reshape(-1)[:spatial_dims]
    if values.size != spatial_dims or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(
            f"the label's voxel spacing {values.tolist()} is not one positive size per spatial axis; check its "
            "affine (a MetaTensor's pixdim) after the spatial transforms."
        )
    return tuple(float(value) for value in values)


def _as_integer_labels(labels: Tensor) -> Tensor:
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}.")
    if hasattr(labels, "as_tensor"):
        labels = labels.as_tensor()
    if labels.is_floating_point():
        invalid = ~torch.isfinite(labels) | (labels != labels.round())
        if invalid.any():
            raise ValueError(
                f"labels must be integer class indices, but they contain {labels[invalid][0].item()}; pass the "
                "label map, not probabilities or an interpolated label."
            )
    return labels.long()


def _check_label_range(labels: Tensor, num_classes: int) -> None:
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"the label contains the class {bad}, outside 0 to {num_classes - 1}; set num_classes to the network's "
            "output channels."
        )


__all__ = [
    "DistanceBinsd",
    "LabelBoundaryDistanced",
    "LabelBoundaryd",
    "check_bin_options",
    "distance_bins",
    "label_boundary",
    "label_boundary_distance",
    "voxel_spacing",
]
