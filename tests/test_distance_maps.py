"""Distance maps against a brute-force transform, with anisotropic spacing and empty or full masks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from scripts.distance_maps import (
    boundary_distance_map,
    euclidean_distance_transform,
    inner_boundary,
    inverted_distance_map,
    region_wise_map,
    signed_distance_map,
)


def brute_force_distance(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance from every mask voxel to the nearest voxel outside the mask, by comparing all pairs."""
    coordinates = np.array(list(itertools.product(*[range(size) for size in mask.shape])), dtype=np.float64)
    physical = coordinates * np.asarray(spacing)
    outside = physical[~mask.reshape(-1)]
    pairwise = np.sqrt(((physical[:, None, :] - outside[None, :, :]) ** 2).sum(axis=-1))
    distances = pairwise.min(axis=1).reshape(mask.shape)
    return np.where(mask, distances, 0.0)


def random_mask(shape: tuple[int, ...], seed: int, fraction: float = 0.6) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) < fraction


CASES = [
    ((9, 7), (1.0, 1.0)),
    ((9, 7), (0.5, 2.0)),
    ((6, 5, 7), (1.0, 1.0, 1.0)),
    ((6, 5, 7), (2.0, 0.7, 1.3)),
]


@pytest.mark.parametrize("method", ["edt", "scipy", "torch"])
@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_transform_matches_brute_force(method, shape, spacing):
    for seed in range(3):
        mask = random_mask(shape, seed)
        expected = brute_force_distance(mask.numpy(), spacing)

        result = euclidean_distance_transform(mask, spacing, method=method)

        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_transform_handles_batches_of_volumes():
    masks = torch.stack([random_mask((6, 5, 7), seed) for seed in range(4)]).reshape(2, 2, 6, 5, 7)

    result = euclidean_distance_transform(masks, (1.0, 2.0, 1.0))

    for index in itertools.product(range(2), range(2)):
        expected = brute_force_distance(masks[index].numpy(), (1.0, 2.0, 1.0))
        np.testing.assert_allclose(result[index].numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["edt", "scipy", "torch"])
def test_transform_of_empty_and_full_masks(method):
    empty = torch.zeros((1, 5, 6, 4), dtype=torch.bool)
    full = torch.ones((1, 5, 6, 4), dtype=torch.bool)

    assert (euclidean_distance_transform(empty, method=method) == 0).all()
    assert torch.isinf(euclidean_distance_transform(full, method=method)).all()


def test_transform_rejects_bad_spacing():
    with pytest.raises(ValueError, match="spacing"):
        euclidean_distance_transform(torch.ones((4, 4, 4), dtype=torch.bool), (1.0, 1.0), spatial_dims=3)
    with pytest.raises(ValueError, match="spacing"):
        euclidean_distance_transform(torch.ones((4, 4, 4), dtype=torch.bool), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="method"):
        euclidean_distance_transform(torch.ones((4, 4), dtype=torch.bool), method="fast")


def test_signed_map_row_matches_kervadec():
    row = torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=torch.bool)[None]

    result = signed_distance_map(row, spatial_dims=2)

    assert result[0].tolist() == [1.0, 0.0, -1.0, -2.0, -1.0, 0.0, 1.0]


def test_signed_map_square_outside_distances():
    # A 2 x 2 square in a 4 x 4 grid: edge neighbours at 1, corner neighbours at sqrt(2), the square itself at 0.
    mask = torch.zeros((4, 4), dtype=torch.bool)
    mask[1:3, 1:3] = True

    result = signed_distance_map(mask, spatial_dims=2)

    assert result[1:3, 1:3].abs().max() == 0
    assert result[0, 1] == pytest.approx(1.0)
    assert result[0, 0] == pytest.approx(2**0.5)


def test_signed_map_inner_boundary_is_zero_with_anisotropic_spacing():
    mask = torch.zeros((9, 9, 9), dtype=torch.bool)
    mask[2:7, 2:7, 2:7] = True
    spacing = (3.0, 1.0, 0.5)

    result = signed_distance_map(mask, spacing)
    boundary = inner_boundary(mask)

    assert (result[boundary] == 0).all()
    assert (result[mask & ~boundary] < 0).all()
    assert (result[~mask] > 0).all()
    # Voxel (3, 4, 4) lies 1 step (3.0) from the face at axis 0, 2 steps (2.0) from the faces at axis 1 and
    # 2 steps (1.0) from the faces at axis 2: the nearest is 1.0. Voxel (4, 4, 3) lies 0.5 from an axis-2 face.
    assert result[3, 4, 4] == pytest.approx(-1.0)
    assert result[4, 4, 3] == pytest.approx(-0.5)
    # Outside: distance to the nearest object voxel along axis 0 is one voxel of 3.0.
    assert result[1, 4, 4] == pytest.approx(3.0)


def test_signed_map_of_empty_and_full_classes_is_zero():
    masks = torch.zeros((2, 5, 5, 5), dtype=torch.bool)
    masks[1] = True

    result = signed_distance_map(masks)

    assert (result == 0).all()


def test_boundary_map_is_absolute_signed_map():
    mask = random_mask((7, 6, 5), seed=3)

    torch.testing.assert_close(boundary_distance_map(mask), signed_distance_map(mask).abs())


def test_inner_boundary_ignores_the_image_border():
    mask = torch.ones((5, 5), dtype=torch.bool)
    mask[2, 2] = False

    boundary = inner_boundary(mask, spatial_dims=2)

    assert boundary.sum() == 4
    assert boundary[1, 2] and boundary[3, 2] and boundary[2, 1] and boundary[2, 3]


def brute_force_signed_map(mask: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distance to the nearest mask voxel outside, minus the distance to the nearest inner-boundary voxel inside."""
    boundary = inner_boundary(torch.from_numpy(mask), spatial_dims=mask.ndim).numpy()
    coordinates = np.array(list(itertools.product(*[range(size) for size in mask.shape])), dtype=np.float64)
    physical = coordinates * np.asarray(spacing)

    def nearest(targets: np.ndarray) -> np.ndarray:
        chosen = physical[targets.reshape(-1)]
        pairwise = np.sqrt(((physical[:, None, :] - chosen[None, :, :]) ** 2).sum(axis=-1))
        return pairwise.min(axis=1).reshape(mask.shape)

    return np.where(mask, -nearest(boundary), nearest(mask))


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_signed_map_matches_brute_force(shape, spacing):
    for seed in range(3):
        mask = random_mask(shape, seed, fraction=0.4)
        expected = brute_force_signed_map(mask.numpy(), spacing)

        result = signed_distance_map(mask, spacing)

        np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_signed_map_differs_from_kervadec_behind_a_concave_corner():
    # Only the corner (0, 0) is background. Voxel (1, 1) is sqrt(2) from it, so Kervadec's -(EDT - 1) gives
    # -0.414, but its face neighbours (0, 1) and (1, 0) are inner-boundary voxels one step away: -1 here.
    mask = torch.ones((3, 3), dtype=torch.bool)
    mask[0, 0] = False

    result = signed_distance_map(mask, spatial_dims=2)

    assert result[1, 1] == pytest.approx(-1.0)
    assert result[0, 0] == pytest.approx(1.0)


def test_region_wise_map_row_matches_valverde():
    row = torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=torch.bool)[None]

    result = region_wise_map(row, spatial_dims=2)

    np.testing.assert_allclose(result[0].numpy(), [1, -1 / 3, -2 / 3, -1, -2 / 3, -1 / 3, 1], rtol=1e-6)


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_region_wise_map_matches_brute_force(shape, spacing):
    mask = random_mask(shape, seed=5)
    depth = brute_force_distance(mask.numpy(), spacing)
    expected = np.where(mask.numpy(), -depth / depth.max(), 1.0)

    result = region_wise_map(mask, spacing)

    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_region_wise_map_of_empty_and_full_masks():
    masks = torch.zeros((2, 4, 5, 3), dtype=torch.bool)
    masks[1] = True

    result = region_wise_map(masks)

    assert (result[0] == 1).all()
    assert (result[1] == -1).all()


def test_inverted_map_row_matches_segloss():
    row = torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=torch.bool)[None]

    result = inverted_distance_map(row, spatial_dims=2)

    np.testing.assert_allclose(result[0].numpy(), [0, 2 / 3, 1 / 3, 0, 1 / 3, 2 / 3, 0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("shape", "spacing"), CASES)
def test_inverted_map_matches_brute_force(shape, spacing):
    mask = random_mask(shape, seed=6)
    depth = brute_force_distance(mask.numpy(), spacing)
    expected = np.where(mask.numpy(), (depth.max() - depth) / depth.max(), 0.0)

    result = inverted_distance_map(mask, spacing)

    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_inverted_map_of_thin_empty_and_full_masks_is_zero():
    masks = torch.zeros((3, 6, 6), dtype=torch.bool)
    masks[0, 2, :] = True
    masks[2] = True

    result = inverted_distance_map(masks, spatial_dims=2)

    assert (result == 0).all()
