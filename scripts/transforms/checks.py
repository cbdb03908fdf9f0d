"""Checks on loaded cases that turn a broken pair into a clear error naming its files."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import LoadImaged, MapTransform


class CheckImageLabelPaird(MapTransform):
    """Raise ``ValueError`` when the image and label of a case differ in spatial shape or affine.

    Place it right after loading (and channel-first), before any resampling, so that a label drawn on another
    grid is reported with both file names instead of failing later inside a crop or the loss.

    Args:
        keys: the image key then the label key.
        affine_atol: tolerance on the affine entries (millimetres for NIfTI), for rounding in the headers.
    """

    def __init__(self, keys: tuple[str, str] = ("image", "label"), affine_atol: float = 1e-3) -> None:
        super().__init__(keys)
        if len(self.keys) != 2:
            raise ValueError(f"keys must name the image and the label, got {self.keys}.")
        self.affine_atol = affine_atol

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        image_key, label_key = self.keys
        image, label = data[image_key], data[label_key]
        image_shape, label_shape = tuple(image.shape[1:]), tuple(label.shape[1:])
        if image_shape != label_shape:
            raise ValueError(
                f"image {_filename(image)} has spatial shape {image_shape} but its label {_filename(label)} has "
                f"{label_shape}; the label must be drawn on the image's voxel grid. Fix or remove this case."
            )
        image_affine, label_affine = getattr(image, "affine", None), getattr(label, "affine", None)
        if image_affine is not None and label_affine is not None:
            difference = float(
                torch.as_tensor(image_affine).double().sub(torch.as_tensor(label_affine).double()).abs().max()
            )
            if difference > self.affine_atol:
                raise ValueError(
                    f"image {_filename(image)} and label {_filename(label)} have different affines (largest "
                    f"difference {difference:.4g}); the label must share the image's geometry. Fix or remove this "
                    f"case.\nimage affine:\n{np.asarray(image_affine)}\nlabel affine:\n{np.asarray(label_affine)}"
                )
        return dict(data)


class CheckSpatialDimsd(MapTransform):
    """Raise ``ValueError`` naming the file when a channel-first image does not have ``spatial_dims`` spatial axes.

    The 3D network cannot segment a 2D slice or a 4D series. Without the check, a 2D image in an inference folder
    stops the sliding window with a shape error that names no file. Place it right after ``EnsureChannelFirstd``.

    Args:
        keys: the images to check.
        spatial_dims: the number of spatial axes the network takes.
    """

    def __init__(self, keys: Any, spatial_dims: int = 3) -> None:
        super().__init__(keys)
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        for key in self.key_iterator(data):
            image = data[key]
            spatial_shape = tuple(image.shape[1:])
            if len(spatial_shape) != self.spatial_dims:
                raise ValueError(
                    f"image {_filename(image)} has {len(spatial_shape)} spatial axes (shape {spatial_shape}, after "
                    f"the channel axis), but the network segments {self.spatial_dims}D volumes. Remove it from the "
                    "inputs, or convert it to a volume."
                )
        return dict(data)


def _filename(image: Any) -> str:
    meta = getattr(image, "meta", {}) or {}
    return str(meta.get("filename_or_obj", "<in memory>"))


class LoadImageNamingFilesd(LoadImaged):
    """MONAI's ``LoadImaged`` that names the file in the error when a file cannot be read.

    A truncated or corrupt image otherwise stops inference with the reader's own message (for example
    ``Compressed file ended before the end-of-stream marker was reached``) and no file name. The new error replaces
    the reader's (``from None``), so that it is also the last line of a bundle run. It keeps the reader's message.
    """

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        try:
            return super().__call__(data, reader)
        except Exception as error:
            files = ", ".join(str(data[key]) for key in self.keys if key in data)
            raise ValueError(
                f"cannot read {files}: {type(error).__name__}: {error}. Check the file with `python -m scripts.data "
                "check` (for a task folder) or replace it."
            ) from None
