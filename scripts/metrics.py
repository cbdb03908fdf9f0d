"""Validation metrics that honour voxel spacing, and per-class summaries of MONAI's per-case metric details."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import HausdorffDistanceMetric
from torch import Tensor


def voxel_spacing(image: Tensor) -> list[float]:
    """Return the voxel size per spatial axis of a channel-first MetaTensor (1 per axis for a plain tensor)."""
    spatial_dims = image.ndim - 1
    pixdim = getattr(image, "pixdim", None)
    if pixdim is None:
        return [1.0] * spatial_dims
    values = [float(value) for value in torch.as_tensor(pixdim).reshape(-1)[:spatial_dims]]
    return values if len(values) == spatial_dims else [1.0] * spatial_dims


class SpacingAwareMetric(IgniteMetricHandler):
    """An ignite metric handler that passes each case's voxel spacing (from the label's affine) to the metric.

    MONAI's ``HausdorffDistance`` handler measures distances in voxels; with this handler they are in the unit of
    the affine (millimetres for NIfTI), one case at a time because each case can have its own spacing.
    """

    def update(self, output: Sequence[Sequence[Tensor]]) -> None:
        if len(output) != 2:
            raise ValueError(f"output must have length 2 (prediction, label), got {len(output)}.")
        predictions, labels = output
        for prediction, label in zip(predictions, labels):
            self.metric_fn(prediction[None], label[None], spacing=voxel_spacing(label))


def hausdorff_95(output_transform: Callable, include_background: bool = False) -> SpacingAwareMetric:
    """Return the 95th-percentile Hausdorff distance handler in the label's physical unit.

    A case whose prediction or label misses a class gives NaN for that class (MONAI's convention), which the mean
    leaves out; :func:`per_class_means` reports such classes as NaN when no case has a value.
    """
    metric = HausdorffDistanceMetric(include_background=include_background, percentile=95.0, reduction="mean")
    return SpacingAwareMetric(metric_fn=metric, output_transform=output_transform, save_details=True)


def per_class_means(details: Tensor | np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Average a ``(cases, classes)`` table of per-case metric values over the cases, ignoring NaN, per class."""
    table = np.asarray(torch.as_tensor(details).detach().cpu(), dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != len(class_names):
        raise ValueError(f"expected a (cases, {len(class_names)}) table of metric values, got shape {table.shape}.")
    means = {}
    for index, name in enumerate(class_names):
        column = table[:, index]
        finite = column[np.isfinite(column)]
        means[name] = float(finite.mean()) if finite.size else float("nan")
    return means
