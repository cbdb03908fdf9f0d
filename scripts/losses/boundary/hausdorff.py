"""Hausdorff distance losses (Karimi and Salcudean): squared errors weighted by how far they lie from the boundaries."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ...distance_maps import boundary_distance_map
from ...transforms.distance import sample_spacings
from ..base import SegmentationInputs, SegmentationLoss
from ..extra_inputs import check_extra_input_names, class_map_input
from ..registry import register_loss

VARIANTS = ("dt", "erosion", "convolution")

# Soft thresholds of the erosion and convolution variants: a value counts once it passes one half.
_SOFT_THRESHOLD = 0.5


@register_loss(
    "hausdorff",
    family="boundary",
    paper="Karimi and Salcudean, Reducing the Hausdorff distance in medical image segmentation with convolutional "
    "neural networks, IEEE TMI 39(2) 2020",
    arxiv="1904.10030",
)
class HausdorffLoss(SegmentationLoss):
    r"""Hausdorff distance loss: squared errors weighted by their distance to the boundaries, in three variants.

    With ``p`` the predicted probabilities and ``q`` the one-hot target of a class, averaged over the classes in
    ``K`` (with the class weights) and over the voxels ``Omega``:

    * ``variant="dt"`` (distance transforms, the default):

      .. math:: L = \frac{1}{|\Omega|} \sum_\Omega (p - q)^2 \, (d_p^\alpha + d_q^\alpha)

      ``d_q`` is the distance of each voxel to the target boundary, the extra input ``boundary_distance_map``
      ``(B, K, *spatial)`` from :class:`scripts.transforms.DistanceMapd` with ``kind="boundary"``. ``d_p`` is the
      same map for the predicted segmentation (the argmax of the logits, ``p > 0.5`` for one sigmoid channel),
      computed in every call on the logits' device with :func:`scripts.distance_maps.boundary_distance_map`
      (SciPy on CPU, cuCIM or torch on CUDA), without gradient, as in the paper. Its spacing is ``spacing``, or
      the spacing in each sample's affine of a MetaTensor ``boundary_distance_map``, or 1 per axis.
    * ``variant="erosion"``: ``K`` successive soft erosions of the squared error ``(p - q)^2``, the ``k``-th
      weighted by ``k^alpha``:

      .. math:: L = \frac{1}{|\Omega|} \sum_{k=1}^{K} k^\alpha \sum_\Omega E_k, \qquad
                E_0 = (p - q)^2, \quad E_k = \frac{\max(B * E_{k-1} - 0.5, 0)}{\max_\Omega \max(B * E_{k-1} - 0.5, 0)}

      ``B`` is the cross-shaped structuring element (the voxel and its 4 face neighbours in 2D, 6 in 3D) as a
      mean filter, so an error region loses a layer per erosion and what survives ``k`` erosions lies at least
      ``k`` voxels inside it. Erosions count voxels and ignore the spacing.
    * ``variant="convolution"``: ball-shaped mean filters ``B_r`` of radii ``r`` (in the spacing's unit),
      weighted by ``r^alpha``:

      .. math:: L = \frac{1}{|\Omega|} \sum_{r} r^\alpha \sum_\Omega \big[f_s(B_r * \bar p) f_{q \setminus p}
                + f_s(B_r * p) f_{p \setminus q} + f_s(B_r * \bar q) f_{p \setminus q}
                + f_s(B_r * q) f_{q \setminus p}\big]

      with ``bar p = 1 - p``, ``f_{q\p} = (p - q)^2 q`` (missed target voxels), ``f_{p\q} = (p - q)^2 p`` (false
      positives) and the soft threshold ``f_s(x) = clamp(2x - 1, 0, 1)``. A missed voxel whose ``r``-ball lies
      outside the prediction is at least ``r`` from it, and likewise for the other three terms. The filters run
      as FFT convolutions.

    Every variant treats the image border, and ignored voxels, as unknown rather than as background: filters
    average over the valid voxels only, so ignoring voxels equals cropping them in the erosion and convolution
    variants. In ``dt``, ignored voxels belong to no predicted class, as they belong to no class in a map from
    ``DistanceMapd(ignore_index=...)``.

    NOTE: the paper's text was not available to this implementation; ``K = 10`` erosions (used by the public
    reimplementations), the radii ``(2, 4, 6, 8)``, the soft threshold at 0.5 and the normalisation after each
    erosion are this library's choices, and the convolution terms follow our reading of the paper. ``alpha = 2``
    is the paper's default.

    Differences from MONAI 1.6's ``HausdorffDTLoss`` (``dt`` only): MONAI's distance field is
    ``EDT(fg) + EDT(bg)``, at least 1 everywhere, so a voxel inside the object counts one voxel more than here,
    where the inner boundary is 0; both agree outside the object. MONAI computes ``d_q`` in every call, thresholds
    each channel at 0.5 rather than taking the argmax, uses unit spacing and defaults to
    ``include_background=False``. The survey gives only the Hausdorff metric (eqs. 24-26), not the losses.

    Early in training the prediction is noise and ``d_p`` is large; Karimi and Salcudean combine the loss with
    Dice, and ``weighted_sum`` with :class:`scripts.schedules.WeightTransfer` can phase it in. The scale grows
    with ``distance^alpha``.

    Args:
        include_background: include class 0 in ``K``.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: average over the voxels of the whole batch.
        variant: ``"dt"``, ``"erosion"`` or ``"convolution"``.
        alpha: exponent of the distance, erosion count or radius weights.
        erosions: number of erosions ``K`` of the erosion variant.
        radii: ball radii of the convolution variant, in the spacing's unit.
        spacing: voxel size per spatial axis for ``d_p`` and the balls; ``None`` reads it from a MetaTensor map or
            uses 1 per axis. It must match the spacing of the pipeline's ``boundary_distance_map``.
    """

    extra_inputs = ("boundary_distance_map",)

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        variant: str = "dt",
        alpha: float = 2.0,
        erosions: int = 10,
        radii: Sequence[float] = (2.0, 4.0, 6.0, 8.0),
        spacing: Sequence[float] | None = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")
        if not (_is_number(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be a non-negative number, got {alpha!r}; the paper uses 2.")
        if isinstance(erosions, bool) or not isinstance(erosions, int) or erosions < 1:
            raise ValueError(f"erosions must be a positive integer, got {erosions!r}.")
        if not _positive_numbers(radii):
            raise ValueError(f"radii must be a list of one or more positive numbers, got {radii!r}, e.g. [2, 4, 6, 8].")
        if spacing is not None and not _positive_numbers(spacing):
            raise ValueError(f"spacing must be a list of positive voxel sizes, one per axis, got {spacing!r}.")
        radii = tuple(float(radius) for radius in radii)
        spacing = None if spacing is None else tuple(float(value) for value in spacing)
        self.variant = variant
        self.alpha = float(alpha)
        self.erosions = erosions
        self.radii = radii
        self.spacing = spacing
        # Only the distance-transform variant reads a map from the pipeline.
        self.extra_inputs = ("boundary_distance_map",) if variant == "dt" else ()

    def per_sample_loss(self, inputs: SegmentationInputs, **extra_inputs: Any) -> Tensor:
        classes = inputs.region_classes
        probs = inputs.probs[:, classes]
        target = inputs.target[:, classes]
        valid = torch.ones_like(target[:, :1]) if inputs.mask is None else inputs.mask

        if self.variant == "dt":
            voxel_loss = self._distance_transform_terms(inputs, extra_inputs, probs, target)
        else:
            check_extra_input_names(self, extra_inputs)
            if self.variant == "erosion":
                voxel_loss = self._erosion_terms(probs, target, valid)
            else:
                voxel_loss = self._convolution_terms(probs, target, valid, inputs)

        class_loss = inputs.voxel_mean(voxel_loss, batch=self.batch)
        skipped = class_loss.new_zeros(class_loss.shape[0], inputs.num_classes - class_loss.shape[1])
        return self.average_classes(torch.cat([skipped, class_loss], dim=1), inputs)

    def _distance_transform_terms(
        self, inputs: SegmentationInputs, extra_inputs: dict[str, Any], probs: Tensor, target: Tensor
    ) -> Tensor:
        spatial_dims = len(inputs.spatial_dims)
        batch_size = probs.shape[0]
        if self.spacing is not None:
            spacings = [self.spacing] * batch_size
        else:
            spacings = sample_spacings(extra_inputs.get("boundary_distance_map"), spatial_dims)
            spacings = spacings or [None] * batch_size
        target_distance = class_map_input(self, extra_inputs, "boundary_distance_map", inputs)
        target_distance = target_distance[:, inputs.region_classes]
        with torch.no_grad():
            predicted = predicted_masks(inputs)[:, inputs.region_classes]
            if len(set(spacings)) == 1:
                predicted_distance = boundary_distance_map(predicted, spacings[0], spatial_dims)
            else:
                # Random scaling gives the samples of a batch different spacings, as in their target maps.
                predicted_distance = torch.cat(
                    [
                        boundary_distance_map(predicted[index : index + 1], spacing, spatial_dims)
                        for index, spacing in enumerate(spacings)
                    ]
                )
            predicted_distance = predicted_distance.to(probs.dtype)
            weight = predicted_distance**self.alpha + target_distance**self.alpha
        return (probs - target) ** 2 * weight

    def _erosion_terms(self, probs: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        spatial_dims = probs.ndim - 2
        neighbour_count = _cross_sum(valid, spatial_dims)
        eroded = (probs - target) ** 2 * valid
        total = torch.zeros_like(eroded)
        for step in range(1, self.erosions + 1):
            averaged = _cross_sum(eroded, spatial_dims) / neighbour_count.clamp_min(1.0)
            eroded = F.relu(averaged - _SOFT_THRESHOLD) * valid
            peak = eroded.flatten(2).amax(dim=2).reshape(*eroded.shape[:2], *(1,) * spatial_dims)
            # Where everything was eroded, dividing by 1 keeps the zeros and their gradients finite.
            eroded = eroded / torch.where(peak > 0, peak, 1.0)
            total = total + step**self.alpha * eroded
        return total

    def _convolution_terms(self, probs: Tensor, target: Tensor, valid: Tensor, inputs: SegmentationInputs) -> Tensor:
        spatial_dims = probs.ndim - 2
        spacing = self.spacing or (1.0,) * spatial_dims
        squared_error = (probs - target) ** 2 * valid
        missed = squared_error * target
        false_positive = squared_error * probs
        total = torch.zeros_like(squared_error)
        for radius in self.radii:
            kernel = ball_kernel(radius, spacing).to(probs)
            valid_count = _fft_convolve(valid, kernel).clamp_min(1.0)
            predicted = (_fft_convolve(probs * valid, kernel) / valid_count).clamp(0.0, 1.0)
            expected = (_fft_convolve(target * valid, kernel) / valid_count).clamp(0.0, 1.0)
            terms = (
                _soft_threshold(1.0 - predicted) * missed
                + _soft_threshold(predicted) * false_positive
                + _soft_threshold(1.0 - expected) * false_positive
                + _soft_threshold(expected) * missed
            )
            total = total + radius**self.alpha * terms
        return total


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_numbers(values: Any) -> bool:
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) == 0:
        return False
    return all(_is_number(value) and value > 0 for value in values)


def predicted_masks(inputs: SegmentationInputs) -> Tensor:
    """Return the one-hot argmax segmentation ``(B, K, *spatial)`` as booleans; ignored voxels are in no class."""
    if inputs.binary:
        foreground = inputs.logits > 0
        masks = torch.cat([~foreground, foreground], dim=1)
    else:
        # max().indices is the argmax (first maximum on ties) and about ten times faster than argmax() on the CPU.
        labels = inputs.logits.max(dim=1, keepdim=True).indices
        classes = torch.arange(inputs.num_classes, device=labels.device)
        masks = labels == classes.reshape(1, -1, *(1,) * (labels.ndim - 2))
    if inputs.mask is not None:
        masks = masks & (inputs.mask > 0.5)
    return masks


def ball_kernel(radius: float, spacing: Sequence[float]) -> Tensor:
    """Return the float64 indicator of the voxels within ``radius`` of the centre, in the spacing's unit."""
    axes = []
    for step in spacing:
        half = int(math.floor(radius / step))
        axes.append(torch.arange(-half, half + 1, dtype=torch.float64) * step)
    grids = torch.meshgrid(*axes, indexing="ij")
    squared = sum(grid**2 for grid in grids)
    return (squared <= radius**2 + 1e-9).to(torch.float64)


def _soft_threshold(fraction: Tensor) -> Tensor:
    """Map a ball fraction to 0 at or below one half and linearly to 1 at a full ball."""
    return ((fraction - _SOFT_THRESHOLD) / (1.0 - _SOFT_THRESHOLD)).clamp(0.0, 1.0)


def _cross_sum(values: Tensor, spatial_dims: int) -> Tensor:
    """Return each voxel's value plus its face neighbours' values; outside the image counts as 0."""
    total = values.clone()
    for axis in range(values.ndim - spatial_dims, values.ndim):
        size = values.shape[axis]
        if size < 2:
            continue
        # The in-place additions write through the views into total, and autograd records them.
        towards_end = total.narrow(axis, 1, size - 1)
        towards_end += values.narrow(axis, 0, size - 1)
        towards_start = total.narrow(axis, 0, size - 1)
        towards_start += values.narrow(axis, 1, size - 1)
    return total


def _fft_convolve(values: Tensor, kernel: Tensor) -> Tensor:
    """Convolve the trailing spatial axes of ``values`` with a symmetric ``kernel``, zero outside the image."""
    spatial_dims = kernel.ndim
    spatial_shape = values.shape[-spatial_dims:]
    halves = [size // 2 for size in kernel.shape]
    padded_shape = [size + 2 * half for size, half in zip(spatial_shape, halves)]
    dims = tuple(range(-spatial_dims, 0))
    spectrum = torch.fft.rfftn(values, s=padded_shape, dim=dims)
    kernel_spectrum = torch.fft.rfftn(kernel, s=padded_shape, dim=dims)
    full = torch.fft.irfftn(spectrum * kernel_spectrum, s=padded_shape, dim=dims)
    for dim, (size, half) in zip(dims, zip(spatial_shape, halves)):
        full = full.narrow(dim, half, size)
    return full
