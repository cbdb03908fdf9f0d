"""Ground-truth boundary maps: label boundary, distance to it, and per-class depth bins, with hand-derived values."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from real_data import first_label_path

from scripts.transforms.boundary import (
    DistanceBinsd,
    LabelBoundaryd,
    LabelBoundaryDistanced,
    distance_bins,
    label_boundary,
    label_boundary_distance,
    voxel_spacing,
)

# A 1 x 7 row with an object in the middle: the hand-derived example used below.
ROW = torch.tensor([[0, 1, 1, 1, 1, 1, 0]])


def test_label_boundary_marks_both_sides_of_interface():
    # Voxels 0|1 and 5|6 change label, so 0, 1, 5 and 6 are boundary voxels; the image ends are not.
    expected = torch.tensor([[1, 1, 0, 0, 0, 1, 1]], dtype=torch.bool)

    assert torch.equal(label_boundary(ROW, spatial_dims=2), expected)


def test_label_boundary_image_border_is_not_boundary():
    labels = torch.ones(4, 5, 6, dtype=torch.long)

    assert not label_boundary(labels).any()


def test_label_boundary_three_classes_3d():
    labels = torch.zeros(5, 5, 5, dtype=torch.long)
    labels[1:4, 1:4, 1:4] = 1
    labels[2, 2, 2] = 2
    boundary = label_boundary(labels)

    # The class-2 voxel and its 6 face neighbours; every class-1 voxel touches class 0 or class 2.
    assert boundary[2, 2, 2]
    assert boundary[1:4, 1:4, 1:4].all()
    # Background voxels touch class 1 through a face only on the 6 faces of the cube (9 voxels each).
    assert int(boundary[labels == 0].sum()) == 6 * 9
    assert not boundary[0, 0, 0]


def test_label_boundary_distance_row():
    # Distances to the nearest boundary voxel (0, 1, 5 or 6): 0 0 1 2 1 0 0.
    expected = torch.tensor([[0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0]])

    torch.testing.assert_close(label_boundary_distance(ROW, spatial_dims=2), expected)


def test_label_boundary_distance_uses_spacing():
    # With 0.5 mm along the row, every distance halves.
    expected = torch.tensor([[0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.0]])

    torch.testing.assert_close(label_boundary_distance(ROW, spacing=(1.0, 0.5)), expected)


def test_label_boundary_distance_single_label_is_zero():
    assert not label_boundary_distance(torch.zeros(3, 4, 5, dtype=torch.long)).any()


def test_distance_bins_row_one_bin_per_depth():
    # Class 1 depths: distance to the nearest class-0 voxel, 1 2 3 2 1 inside, 0 outside; R = 5 keeps them all.
    # Class 0 depths: 1 at both ends (one voxel from class 1), 0 elsewhere.
    bins = distance_bins(ROW, num_classes=2, max_distance=5, num_bins=6, spatial_dims=2)

    torch.testing.assert_close(bins[0], torch.tensor([[1.0, 0, 0, 0, 0, 0, 1]]))
    torch.testing.assert_close(bins[1], torch.tensor([[0.0, 1, 2, 3, 2, 1, 0]]))


def test_distance_bins_truncation_and_merged_bins():
    # R = 2 truncates the depth 3 to 2; K = 3 bins over depths 0..2: bin = floor(D * 3 / 3) = D.
    truncated = distance_bins(ROW, num_classes=2, max_distance=2, num_bins=3, spatial_dims=2)
    # K = 2 bins over depths 0..5: bin = floor(D * 2 / 6), so depths 0-2 -> 0 and 3-5 -> 1.
    merged = distance_bins(ROW, num_classes=2, max_distance=5, num_bins=2, spatial_dims=2)

    torch.testing.assert_close(truncated[1], torch.tensor([[0.0, 1, 2, 2, 2, 1, 0]]))
    torch.testing.assert_close(merged[1], torch.tensor([[0.0, 0, 0, 1, 0, 0, 0]]))


def test_distance_bins_spacing_and_ceiling():
    # 0.5 mm along the row: class-1 depths 0.5 1.0 1.5 1.0 0.5 mm, ceiling 1 1 2 1 1.
    bins = distance_bins(ROW, num_classes=1, max_distance=2, num_bins=3, spacing=(1.0, 0.5))

    assert bins.shape == (1, 1, 7)
    torch.testing.assert_close(bins[0], torch.tensor([[0.0, 1, 1, 2, 1, 1, 0]]))


def test_distance_bins_full_and_absent_classes():
    labels = torch.ones(1, 4, 4, 4, dtype=torch.long)
    bins = distance_bins(labels, num_classes=3, max_distance=3, num_bins=4)

    assert bins.shape == (3, 4, 4, 4)
    assert not bins[0].any(), "an absent class is outside everywhere (bin 0)"
    assert (bins[1] == 3).all(), "a class that fills the patch gets the deepest bin"
    assert not bins[2].any()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_distance": 0}, "max_distance"),
        ({"max_distance": 2.5}, "max_distance"),
        ({"num_bins": 1}, "num_bins"),
        ({"num_bins": 7}, "num_bins must be an integer from 2 to max_distance \\+ 1 = 6"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_distance_bins_invalid_options_raise(options, message):
    arguments = {"num_classes": 2, "max_distance": 5, "num_bins": 6, **options}
    with pytest.raises(ValueError, match=message):
        distance_bins(ROW, spatial_dims=2, **arguments)


def test_distance_bins_label_out_of_range_raises():
    with pytest.raises(ValueError, match="class 3, outside 0 to 2"):
        distance_bins(torch.tensor([[0, 3]]), num_classes=3, spatial_dims=2)


def test_distance_bins_non_integer_labels_raise():
    with pytest.raises(ValueError, match="integer class indices, but they contain 0.5"):
        distance_bins(torch.tensor([[0.0, 0.5]]), num_classes=2, spatial_dims=2)


def test_transforms_read_metatensor_spacing():
    label = MetaTensor(ROW.unsqueeze(0).float(), affine=torch.diag(torch.tensor([1.0, 0.5, 1.0, 1.0])))
    data = {"label": label}

    distances = LabelBoundaryDistanced()(data)["boundary_distance"]
    boundary = LabelBoundaryd()(data)["boundary"]
    bins = DistanceBinsd(num_classes=2, max_distance=2, num_bins=3)(data)["distance_bins"]

    assert voxel_spacing(label) == (1.0, 0.5)
    torch.testing.assert_close(distances, torch.tensor([[[0.0, 0.0, 0.5, 1.0, 0.5, 0.0, 0.0]]]))
    assert boundary.dtype == torch.float32 and boundary.shape == (1, 1, 7)
    torch.testing.assert_close(bins[1], torch.tensor([[0.0, 1, 1, 2, 1, 1, 0]]))
    assert data["label"] is label, "the input dictionary is left unchanged"


def test_transforms_plain_tensor_uses_unit_spacing():
    data = {"label": ROW.unsqueeze(0).float()}

    distances = LabelBoundaryDistanced()(data)["boundary_distance"]

    torch.testing.assert_close(distances, torch.tensor([[[0.0, 0.0, 1.0, 2.0, 1.0, 0.0, 0.0]]]))


def test_transforms_reject_label_without_channel():
    with pytest.raises(ValueError, match="channel-first label tensor"):
        LabelBoundaryd()({"label": torch.tensor([0, 1])})


def test_transform_needs_output_key():
    with pytest.raises(ValueError, match="output_key"):
        LabelBoundaryd(output_key="")


def test_transforms_on_real_label(dataset_dir):
    image = nib.load(str(first_label_path(dataset_dir)))
    label = MetaTensor(torch.from_numpy(np.asarray(image.dataobj).astype(np.float32))[None], affine=image.affine)
    data = {"label": label}
    data = LabelBoundaryd()(data)
    data = LabelBoundaryDistanced()(data)
    data = DistanceBinsd(num_classes=3)(data)

    boundary = data["boundary"][0] > 0
    assert boundary.any()
    # Zero distance exactly on the boundary, positive elsewhere, 1 mm voxels.
    assert (data["boundary_distance"][0][boundary] == 0).all()
    assert (data["boundary_distance"][0][~boundary] >= 1).all()
    bins = data["distance_bins"]
    assert bins.shape == (3, *label.shape[1:])
    # Every voxel is inside exactly one class: a positive bin for its own class, bin 0 for the other two.
    assert torch.equal((bins > 0).sum(dim=0), torch.ones_like(bins[0], dtype=torch.long))
    assert int(bins.max()) <= 5
