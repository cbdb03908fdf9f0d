"""Helpers shared by the boundary losses that take network heads and ground-truth maps as extra inputs.

On CPU, ``argmax`` and ``F.normalize`` over dim 1 of a ``(B, K, *spatial)`` tensor and ``max_pool3d`` ran 5 to 20
times slower than equivalent elementwise operations (torch 2.13 on this project's 2-core development machine,
2 x 3 x 64^3 tensors). The helpers here use the fast forms.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ...options import count
from ..base import SegmentationInputs, _plain_tensor
from ..distributed import sum_across_ranks


def extra_tensor(
    name: str,
    value: object,
    inputs: SegmentationInputs,
    channels: int | None,
    producer: str,
    integer_below: int | None = None,
) -> Tensor:
    """Validate an extra input of shape ``(B, channels, *spatial)`` and return it as a plain tensor.

    Floating extras come back in the logits' compute dtype (float32, or float64 for float64 logits).

    Args:
        name: the keyword argument's name, for the messages.
        value: the tensor passed to the loss.
        inputs: the validated logits and target of the call.
        channels: the expected channel count; ``None`` accepts any.
        producer: what produces the input (a transform or a network wrapper), named in the messages.
        integer_below: check that the values are integers in ``[0, integer_below)`` and return them as int64.

    Raises:
        ValueError: for a missing or non-tensor input, a wrong shape or device, non-finite values, or (with
            ``integer_below``) values that are not integers in range.
    """
    if value is None:
        raise ValueError(f"the loss needs the extra input {name!r}; it comes from {producer}.")
    value = _plain_tensor(value)
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}; it comes from {producer}.")
    logits = inputs.logits
    expected_channels = value.shape[1] if channels is None and value.ndim > 1 else channels
    expected = (logits.shape[0], expected_channels, *logits.shape[2:])
    if tuple(value.shape) != expected:
        channel_text = "C" if channels is None else channels
        raise ValueError(
            f"{name} has shape {tuple(value.shape)} but the loss expects (B, {channel_text}, *spatial) = "
            f"{(logits.shape[0], channel_text, *logits.shape[2:])} for logits of shape {tuple(logits.shape)}; it "
            f"comes from {producer}."
        )
    if value.device != logits.device:
        raise ValueError(f"{name} is on {value.device} but the logits are on {logits.device}; move both to one device.")
    if value.is_floating_point():
        detached = value.detach()
        if not torch.isfinite(detached.sum()) and not torch.isfinite(detached).all():
            bad = detached[~torch.isfinite(detached)]
            raise ValueError(
                f"{name} contains {count(bad.numel(), 'non-finite value')} (first: {bad[0].item()}); check "
                f"{producer} and lower the learning rate if a head diverged."
            )
    if integer_below is None:
        return value.to(logits.dtype) if value.is_floating_point() else value
    with torch.no_grad():
        detached = value.detach()
        if detached.is_floating_point() and (detached != detached.round()).any():
            bad = detached[detached != detached.round()][0].item()
            raise ValueError(f"{name} must hold integer indices, got {bad}; it comes from {producer}.")
        low, high = torch.aminmax(detached)
        if low < 0 or high >= integer_below:
            bad = int(low.item() if low < 0 else high.item())
            raise ValueError(
                f"{name} contains {bad}, outside 0 to {integer_below - 1}; make {producer} and the loss use the "
                "same settings."
            )
    return value.long()


def check_weights(**weights: float) -> dict[str, float]:
    """Return the term weights as floats; raise ``ValueError`` naming the first one that is negative or not finite."""
    for name, value in weights.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
    return {name: float(value) for name, value in weights.items()}


def neighbour_offsets(spatial_dims: int, radius: int = 1, device: torch.device | None = None) -> Tensor:
    """Return the ``(N, spatial_dims)`` offsets of the cube of side ``2 * radius + 1`` around a voxel, centre
    excluded, in lexicographic order (``N = (2 r + 1)^d - 1``: 8 in 2D and 26 in 3D for ``r = 1``)."""
    steps = range(-radius, radius + 1)
    offsets = [offset for offset in itertools.product(steps, repeat=spatial_dims) if any(offset)]
    return torch.tensor(offsets, dtype=torch.long, device=device)


class NeighbourGrid:
    """Flat indices into a padded copy of ``(B, K, *spatial)`` tensors, to read the neighbours of listed voxels.

    Every tensor is padded by ``radius`` on each spatial side and laid out as rows ``(B * padded voxels, K)``, so
    a voxel is one integer index and its neighbours are that index plus fixed offsets. Padding keeps every
    neighbour of an unpadded voxel inside the rows.

    Args:
        spatial_shape: the unpadded spatial shape.
        radius: the neighbourhood's radius (1 for the 3x3x3 cube).
        device: where the offsets live.
    """

    def __init__(self, spatial_shape: tuple[int, ...], radius: int = 1, device: torch.device | None = None) -> None:
        self.radius = radius
        self.padding = (radius, radius) * len(spatial_shape)
        padded_shape = [size + 2 * radius for size in spatial_shape]
        strides = [math.prod(padded_shape[axis + 1 :]) for axis in range(len(padded_shape))]
        self.voxels_per_sample = math.prod(padded_shape)
        offsets = neighbour_offsets(len(spatial_shape), radius, device)
        self.offsets = offsets @ torch.tensor(strides, dtype=torch.long, device=device)

    def select(self, mask: Tensor) -> Tensor:
        """Return the ``(n,)`` row indices of the voxels where the ``(B, *spatial)`` ``mask`` is true."""
        padded = F.pad(mask.to(torch.uint8), self.padding)
        return torch.nonzero(padded.flatten()).squeeze(1)

    def rows(self, values: Tensor, value: float = 0.0) -> Tensor:
        """Return the ``(B * padded voxels, K)`` rows of a ``(B, K, *spatial)`` tensor padded with ``value``."""
        return F.pad(values, self.padding, value=value).movedim(1, -1).reshape(-1, values.shape[1])

    def channels(self, values: Tensor, value: float = 0.0) -> Tensor:
        """Return ``(K, B * padded voxels)``: each channel of a ``(B, K, *spatial)`` tensor, padded with ``value``,
        as one flat row indexed like :meth:`rows`."""
        return F.pad(values, self.padding, value=value).movedim(1, 0).reshape(values.shape[1], -1)

    def neighbours(self, index: Tensor) -> Tensor:
        """Return the ``(n, N)`` row indices of the neighbours of the voxels at ``index``."""
        return index.unsqueeze(1) + self.offsets

    def sample_of(self, index: Tensor) -> Tensor:
        """Return the sample (batch index) of each row index."""
        return torch.div(index, self.voxels_per_sample, rounding_mode="floor")


def box_max(values: Tensor, size: int) -> Tensor:
    """Return the maximum of ``(B, K, *spatial)`` values over the cube of side ``size`` (odd) around each voxel.

    Outside the image counts as 0, so use it on non-negative values (masks, one-hot maps). Separable: one pass of
    shifted maxima per axis, which on CPU is far faster than ``max_pool3d``.
    """
    radius = size // 2
    spatial_dims = values.ndim - 2
    for axis in range(spatial_dims):
        dim = 2 + axis
        padding = [0, 0] * spatial_dims
        padding[2 * (spatial_dims - 1 - axis)] = radius
        padding[2 * (spatial_dims - 1 - axis) + 1] = radius
        padded = F.pad(values, padding)
        length = values.shape[dim]
        result = padded.narrow(dim, 0, length)
        for shift in range(1, size):
            result = torch.maximum(result, padded.narrow(dim, shift, length))
        values = result
    return values


def channel_argmax(values: Tensor) -> Tensor:
    """Return the argmax over dim 1 of ``(B, K, *spatial)`` values (``Tensor.max`` is faster than ``argmax`` there)."""
    return values.max(dim=1).indices


def per_sample_sum(values: Tensor, sample: Tensor, batch_size: int) -> Tensor:
    """Add ``(n,)`` values into ``(batch_size,)`` sums by their sample index; keeps the autograd path when ``n = 0``."""
    return torch.zeros(batch_size, dtype=values.dtype, device=values.device).index_add(0, sample, values)


def pool_batch(totals: Tensor, counts: Tensor, batch: bool) -> Tensor:
    """Return ``totals / counts`` per sample, or the batch-pooled ratio as shape ``(1, ...)`` when ``batch``.

    A zero count gives 0 (an empty set adds nothing to the loss).
    """
    if batch:
        totals = sum_across_ranks(totals.sum(dim=0, keepdim=True))
        counts = sum_across_ranks(counts.sum(dim=0, keepdim=True))
    return totals / counts.clamp_min(1.0)
