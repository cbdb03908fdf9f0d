"""The DistanceMapd transform: tiny hand-checked labels, spacing from metadata, errors and one real label."""

from __future__ import annotations

import json

import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, Spacingd

from scripts.distance_maps import inverted_distance_map, region_wise_map, signed_distance_map
from scripts.transforms import MAP_KEYS, DistanceMapd, class_distance_maps


def row_label(spacing: tuple[float, float] = (1.0, 1.0)) -> MetaTensor:
    """A (1, 1, 7) label ``0111110`` whose affine records the spacing."""
    affine = torch.diag(torch.tensor([*spacing, 1.0, 1.0], dtype=torch.float64))
    return MetaTensor(torch.tensor([0, 1, 1, 1, 1, 1, 0], dtype=torch.float32).reshape(1, 1, 7), affine=affine)


@pytest.mark.parametrize(
    ("kind", "foreground"),
    [
        ("signed", [1, 0, -1, -2, -1, 0, 1]),
        ("boundary", [1, 0, 1, 2, 1, 0, 1]),
        ("region_wise", [1, -1 / 3, -2 / 3, -1, -2 / 3, -1 / 3, 1]),
        ("inverted", [0, 2 / 3, 1 / 3, 0, 1 / 3, 2 / 3, 0]),
    ],
)
def test_distance_map_row_values(kind, foreground):
    sample = DistanceMapd("label", num_classes=2, kind=kind)({"label": row_label()})

    maps = sample[MAP_KEYS[kind]]

    assert maps.shape == (2, 1, 7)
    assert maps.dtype == torch.float32
    torch.testing.assert_close(maps[1, 0], torch.tensor(foreground, dtype=torch.float32))


def test_distance_map_keeps_the_label_and_its_affine():
    label = row_label((2.0, 3.0))

    sample = DistanceMapd("label", num_classes=2)({"label": label, "image": "kept"})

    assert sample["label"] is label
    assert sample["image"] == "kept"
    assert isinstance(sample["signed_distance_map"], MetaTensor)
    torch.testing.assert_close(sample["signed_distance_map"].affine, label.affine)


def test_distance_map_reads_spacing_from_the_affine():
    # Along the row the spacing is 3 mm, so every distance triples.
    sample = DistanceMapd("label", num_classes=2, kind="boundary")({"label": row_label((2.0, 3.0))})

    torch.testing.assert_close(sample["boundary_distance_map"][1, 0], torch.tensor([3.0, 0, 3, 6, 3, 0, 3]))


def test_distance_map_explicit_spacing_wins():
    transform = DistanceMapd("label", num_classes=2, kind="boundary", spacing=(1.0, 0.5))

    sample = transform({"label": row_label((2.0, 3.0))})

    torch.testing.assert_close(sample["boundary_distance_map"][1, 0], torch.tensor([0.5, 0, 0.5, 1, 0.5, 0, 0.5]))


def test_distance_map_plain_tensor_unit_spacing():
    label = torch.tensor([0, 1, 1, 1, 1, 1, 0]).reshape(1, 1, 7)

    sample = DistanceMapd("label", num_classes=2, kind="signed", output_key="phi")({"label": label})

    assert type(sample["phi"]) is torch.Tensor
    torch.testing.assert_close(sample["phi"][1, 0], torch.tensor([1.0, 0, -1, -2, -1, 0, 1]))


def test_distance_map_3d_multiclass_matches_the_map_functions():
    label = torch.zeros((1, 6, 7, 5))
    label[0, 1:4, 2:6, 1:4] = 1
    label[0, 4:6, 1:3, :] = 2
    spacing = (1.5, 1.0, 2.0)
    masks = torch.stack([label[0] == k for k in range(3)])

    for kind, function in (
        ("signed", signed_distance_map),
        ("region_wise", region_wise_map),
        ("inverted", inverted_distance_map),
    ):
        maps = class_distance_maps(label, 3, kind, spacing=spacing)
        torch.testing.assert_close(maps, function(masks, spacing))


def test_distance_map_ignored_voxels_belong_to_no_class():
    label = torch.tensor([0, 1, 1, 255, 1, 1, 0]).reshape(1, 1, 7)

    maps = class_distance_maps(label, 2, "signed", ignore_index=255)

    torch.testing.assert_close(maps[1, 0], torch.tensor([1.0, 0, 0, 1, 0, 0, 1]))


def test_distance_map_absent_class_is_zero():
    maps = class_distance_maps(row_label(), 3, "signed")

    assert (maps[2] == 0).all()


def test_distance_map_label_out_of_range():
    label = torch.tensor([0, 1, 3]).reshape(1, 1, 3)

    with pytest.raises(ValueError, match="the value 3, outside the classes 0 to 1.*num_classes"):
        DistanceMapd("label", num_classes=2)({"label": label})


def test_distance_map_non_integer_label_raises():
    label = torch.tensor([0.0, 0.5, 1.0]).reshape(1, 1, 3)

    with pytest.raises(ValueError, match="non-integer value 0.5.*nearest-neighbour"):
        class_distance_maps(label, 2, "signed")


def test_distance_map_one_hot_label_raises():
    label = torch.zeros((2, 4, 4))

    with pytest.raises(ValueError, match=r"shape \(1, \*spatial\).*got shape \(2, 4, 4\).*argmax"):
        class_distance_maps(label, 2, "signed")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"kind": "chamfer"}, "kind must be one of"),
        ({"num_classes": 1}, "num_classes must be an integer of at least 2"),
        ({"num_classes": 2.0}, "num_classes must be an integer"),
        ({"keys": ["label", "other"]}, "exactly one label key"),
    ],
)
def test_distance_map_rejects_bad_options(options, message):
    arguments = {"keys": "label", "num_classes": 2, **options}

    with pytest.raises(ValueError, match=message):
        DistanceMapd(**arguments)


def test_distance_map_missing_key_raises_unless_allowed():
    with pytest.raises(KeyError):
        DistanceMapd("label", num_classes=2)({"image": 0})
    assert DistanceMapd("label", num_classes=2, allow_missing_keys=True)({"image": 0}) == {"image": 0}


def test_distance_map_batched_mixed_spacings_raise():
    labels = MetaTensor(torch.zeros((2, 1, 4, 4)))
    labels.affine = torch.stack([torch.eye(4), torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0]))])
    labels.is_batch = True

    with pytest.raises(ValueError, match="different voxel spacings"):
        class_distance_maps(labels, 2, "signed", batched=True)


@pytest.fixture(scope="module")
def hippocampus_label(dataset_dir) -> dict:
    entry = json.loads((dataset_dir / "dataset.json").read_text())["training"][0]
    load = LoadImaged(keys="label", ensure_channel_first=True, image_only=True)
    return load({"label": str(dataset_dir / entry["label"])})


def test_distance_map_of_a_real_hippocampus_label(hippocampus_label):
    label = hippocampus_label["label"]

    sample = DistanceMapd("label", num_classes=3, kind="signed")(dict(hippocampus_label))
    maps = sample["signed_distance_map"]
    masks = torch.stack([label[0] == k for k in range(3)])

    assert maps.shape == (3, *label.shape[1:])
    assert bool(torch.isfinite(maps).all())
    for k in range(3):
        assert (maps[k][masks[k]] <= 0).all()
        assert (maps[k][~masks[k]] > 0).all()
    torch.testing.assert_close(maps.as_tensor(), signed_distance_map(masks, tuple(label.pixdim.tolist())))


def test_distance_map_follows_a_spacing_change(hippocampus_label):
    # After resampling to 2 mm along the first axis the map must use the new spacing, read from the affine.
    chain = Compose(
        [
            Spacingd(keys="label", pixdim=(2.0, 1.0, 1.0), mode="nearest"),
            DistanceMapd("label", num_classes=3, kind="boundary"),
        ]
    )

    sample = chain(dict(hippocampus_label))
    label = sample["label"]
    masks = torch.stack([label[0] == k for k in range(3)])

    torch.testing.assert_close(label.pixdim, torch.tensor([2.0, 1.0, 1.0], dtype=label.pixdim.dtype))
    expected = class_distance_maps(label.as_tensor(), 3, "boundary", (2.0, 1.0, 1.0))
    unit_spacing = class_distance_maps(label.as_tensor(), 3, "boundary", (1.0, 1.0, 1.0))

    torch.testing.assert_close(sample["boundary_distance_map"].as_tensor(), expected)
    assert not torch.allclose(expected, unit_spacing)
    assert masks[1].any()
    assert masks[2].any()
