"""Validation metrics that honour voxel spacing, and per-class summaries of MONAI's per-case metric details."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import (
    CumulativeIterationMetric,
    HausdorffDistanceMetric,
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from monai.metrics.utils import do_metric_reduction
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
        with warnings.catch_warnings():
            ignore_mask_edges_deprecation()
            for prediction, label in zip(predictions, labels):
                self.metric_fn(prediction[None], label[None], spacing=voxel_spacing(label))


def ignore_mask_edges_deprecation() -> None:
    """Ignore the deprecation warning about ``always_return_as_numpy`` inside a ``warnings.catch_warnings()`` block.

    MONAI 1.6.1's surface metrics pass ``get_mask_edges`` an argument that it marks deprecated, a warning that no
    caller can act on and that every validation would print.
    """
    warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")


def hausdorff_95(output_transform: Callable, include_background: bool = False) -> SpacingAwareMetric:
    """Return the 95th-percentile Hausdorff distance handler in the label's physical unit.

    A case whose prediction or label misses a class gives NaN for that class (MONAI's convention), which the mean
    leaves out; :func:`per_class_means` reports such classes as NaN when no case has a value.
    """
    metric = HausdorffDistanceMetric(include_background=include_background, percentile=95.0, reduction="mean")
    return SpacingAwareMetric(metric_fn=metric, output_transform=output_transform, save_details=True)


# The evaluation metrics of :class:`CaseMetric`, each with whether a higher value is better.
CASE_METRICS = {"dice": True, "hd95": False, "surface_dice": True, "assd": False, "empty_prediction": False}


class CaseMetric(CumulativeIterationMetric):
    """One evaluation metric per case and foreground class, with a value for every case, empty masks included.

    The metrics are MONAI's (1.6.1): the Dice score, the 95th-percentile Hausdorff distance (HD95), the normalised
    surface Dice at ``tolerance`` mm and the average symmetric surface distance. ASSD is the mean of the distances
    from each surface to the other, both directions pooled. Distances are in the unit of the spacing passed per
    case (millimetres with :class:`SpacingAwareMetric` on NIfTI data).

    MONAI returns NaN or infinity where the prediction or the label has no voxel of a class, and a mean that skips
    NaN would reward a network for missing a structure. This metric fills those cells instead:

    * the label has the class but the prediction does not (a missed structure), or the reverse (a structure
      predicted where there is none): Dice 0, surface Dice 0, HD95 and ASSD equal to the diagonal of the volume in
      the spacing's unit, the largest distance that two points of the volume can have;
    * neither has the class: Dice 1, surface Dice 1, HD95 0 and ASSD 0, a correct "absent".

    ``empty_prediction`` is 1 where the label has the class and the prediction does not, 0 elsewhere, so the number
    of missed structures can be counted next to the filled values.

    Args:
        metric: one of ``dice``, ``hd95``, ``surface_dice``, ``assd``, ``empty_prediction``.
        tolerance: the surface Dice tolerance, in the spacing's unit (mm); used by ``surface_dice`` only.

    Raises:
        ValueError: for an unknown metric or a negative or non-finite tolerance.
    """

    def __init__(self, metric: str, tolerance: float = 1.0) -> None:
        super().__init__()
        if metric not in CASE_METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(CASE_METRICS)}.")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"tolerance must be a finite distance >= 0 (mm), got {tolerance}.")
        self.metric = metric
        self.tolerance = float(tolerance)

    def _compute_tensor(self, y_pred: Tensor, y: Tensor, spacing: Sequence[float] | None = None) -> Tensor:
        """Return the ``(B, C - 1)`` values of one-hot ``y_pred`` and ``y``, shape ``(B, C, *spatial)``."""
        if y_pred.shape != y.shape or y_pred.ndim < 3:
            raise ValueError(
                f"expected one-hot prediction and label of one shape (B, C, *spatial), got "
                f"{tuple(y_pred.shape)} and {tuple(y.shape)}."
            )
        spatial_dims = y.ndim - 2
        spacing = [1.0] * spatial_dims if spacing is None else [float(value) for value in spacing]
        predicted = y_pred[:, 1:].flatten(2).any(-1)
        present = y[:, 1:].flatten(2).any(-1)
        if self.metric == "empty_prediction":
            return (present & ~predicted).float()

        with warnings.catch_warnings():
            # MONAI warns about every empty mask; the cells it cannot score are filled below.
            warnings.simplefilter("ignore", UserWarning)
            ignore_mask_edges_deprecation()
            values = self._monai_values(y_pred, y, spacing).float()

        diagonal = math.sqrt(sum((size * step) ** 2 for size, step in zip(y.shape[2:], spacing)))
        worst, best = {
            "dice": (0.0, 1.0),
            "surface_dice": (0.0, 1.0),
            "hd95": (diagonal, 0.0),
            "assd": (diagonal, 0.0),
        }[self.metric]
        values = torch.where(predicted != present, torch.full_like(values, worst), values)
        return torch.where(~predicted & ~present, torch.full_like(values, best), values)

    def _monai_values(self, y_pred: Tensor, y: Tensor, spacing: list[float]) -> Tensor:
        if self.metric == "dice":
            return compute_dice(y_pred, y, include_background=False)
        if self.metric == "hd95":
            return compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95.0, spacing=spacing)
        if self.metric == "surface_dice":
            thresholds = [self.tolerance] * (y.shape[1] - 1)
            return compute_surface_dice(y_pred, y, thresholds, include_background=False, spacing=spacing)
        return compute_average_surface_distance(y_pred, y, include_background=False, symmetric=True, spacing=spacing)

    def aggregate(self) -> Tensor:
        """Return the mean over cases and classes."""
        mean, _ = do_metric_reduction(self.get_buffer(), "mean")
        return mean


def case_metric(metric: str, output_transform: Callable, tolerance: float = 1.0) -> SpacingAwareMetric:
    """Return the ignite handler of :class:`CaseMetric` ``metric``, with each case's spacing and per-case details."""
    return SpacingAwareMetric(
        metric_fn=CaseMetric(metric, tolerance=tolerance), output_transform=output_transform, save_details=True
    )


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
