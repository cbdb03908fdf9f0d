"""Exact Euclidean distance maps with voxel spacing, for the losses that weigh voxels by their distance to a boundary.

One module serves every distance-based loss. The core is :func:`euclidean_distance_transform`, the exact distance
from each voxel of a mask to the nearest voxel outside it, on the tensor's own device:

* CPU tensors use the ``edt`` package (Seung lab's multi-threaded exact transform, about ten times faster than
  SciPy on a 64^3 volume) when it is installed, and ``scipy.ndimage.distance_transform_edt`` otherwise; both are
  exact and linear in the number of voxels.
* CUDA tensors use cuCIM's exact transform when it is installed (as MONAI's ``distance_transform_edt`` does), and
  otherwise a separable exact transform written in torch (one brute-force lower envelope per axis, chunked to
  bound memory), so no distance map of a prediction goes through the host.

On top of it, :func:`signed_distance_map`, :func:`boundary_distance_map`, :func:`region_wise_map` and
:func:`inverted_distance_map` build per-class maps with explicit conventions for empty and full masks. SciPy's
transform of a mask without any background voxel measures distances to a phantom point outside the image; here a
class that fills its volume, or is absent from it, has no boundary and gets a constant map (zero for the distance
maps), which the losses document as "no boundary penalty".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage
import torch
from monai.utils import optional_import
from torch import Tensor

cucim_morphology, has_cucim = optional_import("cucim.core.operations.morphology")
edt_package, has_edt = optional_import("edt")
cupy, has_cupy = optional_import("cupy")

# Elements of the (lines, n, n) tensor that one brute-force chunk may allocate: 2**24 float32 values are 64 MiB.
_BRUTE_FORCE_CHUNK_ELEMENTS = 2**24

METHODS = ("auto", "edt", "scipy", "torch", "cucim")


def euclidean_distance_transform(
    mask: Tensor, spacing: Sequence[float] | None = None, spatial_dims: int | None = None, method: str = "auto"
) -> Tensor:
    """Return the exact Euclidean distance from every voxel of ``mask`` to the nearest voxel outside it.

    Voxels outside the mask get 0. A volume without any voxel outside the mask has no defined distance; its
    voxels get ``inf``, so that a caller cannot mistake it for a real distance (see :func:`signed_distance_map`).

    Args:
        mask: boolean (or 0/1) tensor ``(*batch, *spatial)``; every leading dimension is an independent volume.
        spacing: voxel size per spatial axis, in the unit of the result (e.g. mm). ``None`` means 1 per axis.
        spatial_dims: number of trailing spatial axes; default ``len(spacing)``, or 3 for a 3+ dimensional mask
            without spacing, 2 for a 2D mask.
        method: ``"auto"`` (edt, else scipy on CPU; cuCIM, else torch on CUDA), ``"edt"``, ``"scipy"``,
            ``"torch"`` or ``"cucim"``.

    Returns:
        float32 tensor of the mask's shape, on the mask's device.

    Raises:
        ValueError: for a spacing of the wrong length or with non-positive entries, or an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    mask = mask.bool()
    spatial_dims = _spatial_dims(mask, spacing, spatial_dims)
    spacing = _check_spacing(spacing, spatial_dims)
    if method == "auto":
        if mask.device.type == "cpu":
            method = "edt" if has_edt else "scipy"
        else:
            method = "cucim" if (has_cucim and has_cupy and mask.device.type == "cuda") else "torch"

    spatial_shape = mask.shape[mask.ndim - spatial_dims :]
    volumes = mask.reshape(-1, *spatial_shape)
    if method == "edt":
        distances = _edt_transform(volumes, spacing)
    elif method == "scipy":
        distances = _scipy_transform(volumes, spacing)
    elif method == "cucim":
        distances = _cucim_transform(volumes, spacing)
    else:
        distances = _torch_transform(volumes, spacing)

    no_background = volumes.flatten(1).all(dim=1)
    if bool(no_background.any()):
        distances[no_background] = torch.inf
    return distances.reshape(mask.shape)


def inner_boundary(mask: Tensor, spatial_dims: int | None = None) -> Tensor:
    """Return the voxels of ``mask`` with a face neighbour outside it (6-connectivity in 3D, 4 in 2D).

    The image border is not a boundary: a mask voxel on the border only counts when one of its neighbours inside
    the image lies outside the mask. This is what a patch needs, since a crop border cuts objects, not ends them.
    """
    mask = mask.bool()
    spatial_dims = _spatial_dims(mask, None, spatial_dims)
    return mask & has_face_neighbour(~mask, spatial_dims)


def has_face_neighbour(mask: Tensor, spatial_dims: int) -> Tensor:
    """Return the voxels that have a face neighbour in the boolean ``mask``; voxels beyond the border do not count.

    Args:
        mask: boolean tensor ``(*batch, *spatial)``.
        spatial_dims: number of trailing spatial axes.
    """
    found = torch.zeros_like(mask)
    for axis in range(mask.ndim - spatial_dims, mask.ndim):
        size = mask.shape[axis]
        if size < 2:
            continue
        # Shifting by one voxel along the axis, each way; the in-place OR writes through the views into found.
        towards_end = found.narrow(axis, 1, size - 1)
        towards_end |= mask.narrow(axis, 0, size - 1)
        towards_start = found.narrow(axis, 0, size - 1)
        towards_start |= mask.narrow(axis, 1, size - 1)
    return found


def signed_distance_map(
    mask: Tensor, spacing: Sequence[float] | None = None, spatial_dims: int | None = None
) -> Tensor:
    """Return the signed distance map of ``mask``: positive outside, zero on the inner boundary, negative inside.

    Outside the object a voxel gets its distance to the nearest object voxel; inside, minus its distance to the
    nearest inner-boundary voxel (:func:`inner_boundary`). Kervadec et al. use ``EDT(outside)`` outside and
    ``-(EDT(inside) - 1)`` inside, and a row ``0111110`` gives ``1 0 -1 -2 -1 0 1`` in both. The two maps agree
    wherever the nearest background voxel of an inside voxel lies along a grid axis, as in rows and boxes. Behind a
    concave corner their offset of 1 gives ``-(sqrt(2) - 1)`` where this map gives -1. With anisotropic spacing
    their offset would leave inner-boundary voxels at ``1 - spacing``, whereas this map keeps them at exactly 0.

    A volume in which the mask is empty or fills everything has no boundary and gets an all-zero map.

    Args:
        mask: boolean tensor ``(*batch, *spatial)``, e.g. a one-hot target ``(B, C, D, H, W)``.
        spacing: voxel size per spatial axis.
        spatial_dims: number of trailing spatial axes (see :func:`euclidean_distance_transform`).

    Returns:
        float32 tensor of the mask's shape.
    """
    mask = mask.bool()
    distances = boundary_distance_map(mask, spacing, spatial_dims)
    return torch.where(mask, -distances, distances)


def boundary_distance_map(
    mask: Tensor, spacing: Sequence[float] | None = None, spatial_dims: int | None = None
) -> Tensor:
    """Return the unsigned distance of every voxel to the inner boundary of ``mask`` (the absolute signed map).

    Zero on the inner boundary; an empty or full mask gets an all-zero map. One transform serves both sides,
    because the nearest mask voxel of an outside voxel is always an inner-boundary voxel. Were it an interior
    voxel, its face neighbour one step closer along an axis would be a closer mask voxel.
    """
    mask = mask.bool()
    spatial_dims = _spatial_dims(mask, spacing, spatial_dims)
    distances = euclidean_distance_transform(~inner_boundary(mask, spatial_dims), spacing, spatial_dims)
    return _zero_without_boundary(distances, mask, spatial_dims)


def region_wise_map(mask: Tensor, spacing: Sequence[float] | None = None, spatial_dims: int | None = None) -> Tensor:
    """Return Valverde and Tohka's rectified region-wise (RRW) map of ``mask``.

    Inside the mask a voxel gets ``-d / max(d)``. Here ``d`` is its distance to the nearest voxel outside the
    mask, and the maximum runs over the mask's voxels in the volume. Every other voxel gets +1. The values lie in
    ``[-1, 0)`` inside, most negative at the centre: a row ``0111110`` gives ``1 -1/3 -2/3 -1 -2/3 -1/3 1``. A mask
    that fills its volume is -1 everywhere and an empty mask +1 everywhere.

    Args:
        mask: boolean tensor ``(*batch, *spatial)``.
        spacing: voxel size per spatial axis.
        spatial_dims: number of trailing spatial axes (see :func:`euclidean_distance_transform`).

    Returns:
        float32 tensor of the mask's shape.
    """
    mask = mask.bool()
    depth = _normalised_depth(mask, spacing, spatial_dims)
    return torch.where(mask, -depth, 1.0)


def inverted_distance_map(
    mask: Tensor, spacing: Sequence[float] | None = None, spatial_dims: int | None = None
) -> Tensor:
    """Return the inverted distance map of ``mask``: largest next to the boundary, zero at its deepest voxels.

    Inside the mask a voxel gets ``(max(d) - d) / max(d)``. Here ``d`` is its distance to the nearest voxel
    outside the mask, and the maximum runs over the mask's voxels in the volume. Every other voxel gets 0. A row
    ``0111110`` gives ``0 2/3 1/3 0 1/3 2/3 0``. Values lie in ``[0, 1)``, so the map does not depend on the image
    size. A mask whose deepest voxels touch the boundary (thickness one voxel) is 0 everywhere, as is an empty or
    full mask.

    Args:
        mask: boolean tensor ``(*batch, *spatial)``.
        spacing: voxel size per spatial axis.
        spatial_dims: number of trailing spatial axes (see :func:`euclidean_distance_transform`).

    Returns:
        float32 tensor of the mask's shape.
    """
    mask = mask.bool()
    depth = _normalised_depth(mask, spacing, spatial_dims)
    inverted = torch.where(mask, 1.0 - depth, 0.0)
    return _zero_without_boundary(inverted, mask, _spatial_dims(mask, spacing, spatial_dims))


def _normalised_depth(mask: Tensor, spacing: Sequence[float] | None, spatial_dims: int | None) -> Tensor:
    """Return ``d / max(d)`` inside ``mask``, ``d`` being the distance to the nearest outside voxel (1 if full)."""
    spatial_dims = _spatial_dims(mask, spacing, spatial_dims)
    depth = euclidean_distance_transform(mask, spacing, spatial_dims)
    # A full volume has no outside voxel: its depth is inf everywhere, which this normalisation turns into 1.
    depth = torch.where(torch.isinf(depth), 1.0, depth)
    deepest = depth.flatten(depth.ndim - spatial_dims).amax(dim=-1)
    deepest = deepest.reshape(*deepest.shape, *(1,) * spatial_dims)
    return depth / deepest.clamp_min(torch.finfo(depth.dtype).tiny)


def _zero_without_boundary(distances: Tensor, mask: Tensor, spatial_dims: int) -> Tensor:
    volumes = mask.flatten(mask.ndim - spatial_dims)
    no_boundary = volumes.all(dim=-1) | ~volumes.any(dim=-1)
    if bool(no_boundary.any()):
        distances = distances.masked_fill(no_boundary.reshape(*no_boundary.shape, *(1,) * spatial_dims), 0.0)
    return distances


def _spatial_dims(mask: Tensor, spacing: Sequence[float] | None, spatial_dims: int | None) -> int:
    if spatial_dims is None:
        spatial_dims = len(spacing) if spacing is not None else min(mask.ndim, 3)
    if not 1 <= spatial_dims <= mask.ndim:
        raise ValueError(f"spatial_dims must lie in [1, {mask.ndim}] for a mask of shape {tuple(mask.shape)}.")
    return spatial_dims


def _check_spacing(spacing: Sequence[float] | None, spatial_dims: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * spatial_dims
    values = tuple(float(value) for value in np.asarray(spacing, dtype=np.float64).reshape(-1))
    if len(values) != spatial_dims or any(not np.isfinite(value) or value <= 0 for value in values):
        raise ValueError(
            f"spacing must give one positive voxel size per spatial axis ({spatial_dims}), got {list(values)}."
        )
    return values


def _edt_transform(volumes: Tensor, spacing: tuple[float, ...]) -> Tensor:
    masks = volumes.detach().cpu().numpy().astype(np.uint8)
    distances = np.zeros(masks.shape, dtype=np.float32)
    threads = max(1, torch.get_num_threads())
    for index, volume in enumerate(masks):
        if volume.any() and not volume.all():
            # black_border=False: the image border is not background, as in SciPy's transform.
            distances[index] = edt_package.edt(volume, anisotropy=spacing, black_border=False, parallel=threads)
    return torch.from_numpy(distances).to(volumes.device)


def _scipy_transform(volumes: Tensor, spacing: tuple[float, ...]) -> Tensor:
    masks = volumes.detach().cpu().numpy()
    distances = np.zeros(masks.shape, dtype=np.float32)
    for index, volume in enumerate(masks):
        if volume.any() and not volume.all():
            distances[index] = scipy.ndimage.distance_transform_edt(volume, sampling=spacing)
    return torch.from_numpy(distances).to(volumes.device)


def _cucim_transform(volumes: Tensor, spacing: tuple[float, ...]) -> Tensor:
    distances = torch.zeros(volumes.shape, dtype=torch.float32, device=volumes.device)
    for index, volume in enumerate(volumes):
        if bool(volume.any()) and not bool(volume.all()):
            result = cucim_morphology.distance_transform_edt(cupy.asarray(volume), sampling=spacing)
            distances[index] = torch.as_tensor(result, device=volumes.device)
    return distances


def _torch_transform(volumes: Tensor, spacing: tuple[float, ...]) -> Tensor:
    """Exact squared distances by separable lower envelopes, one axis at a time, then the square root.

    Along one axis the squared distance is ``f'(i) = min_j f(j) + (s (i - j))^2``, where ``f`` is the result of
    the previous axes (0 outside the mask, a large value inside). Each line is solved by brute force over all
    ``j``, which is exact and vectorises across lines; chunks keep the ``(lines, n, n)`` tensor bounded.
    """
    spatial_dims = volumes.ndim - 1
    # Larger than any squared distance in the volume, yet far from float32 overflow.
    extent = sum((size * step) ** 2 for size, step in zip(volumes.shape[1:], spacing))
    squared = torch.where(volumes, torch.tensor(4.0 * extent + 1.0, device=volumes.device), 0.0)
    for axis in range(spatial_dims):
        moved = squared.movedim(axis + 1, -1)
        size = moved.shape[-1]
        lines = moved.reshape(-1, size)
        positions = torch.arange(size, device=volumes.device, dtype=torch.float32) * spacing[axis]
        parabola = (positions[:, None] - positions[None, :]) ** 2
        chunk = max(1, _BRUTE_FORCE_CHUNK_ELEMENTS // (size * size))
        solved = torch.cat([(part.unsqueeze(1) + parabola).amin(dim=-1) for part in lines.split(chunk)], dim=0)
        squared = solved.reshape(moved.shape).movedim(-1, axis + 1)
    return squared.sqrt()
