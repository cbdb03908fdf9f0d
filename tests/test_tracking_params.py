"""The flat parameters the tracker logs for the transforms of a loss's extra targets."""

from __future__ import annotations

import torch

from scripts.tracking import describe_transforms
from scripts.transforms.boundary import DistanceBinsd


class Scaled:
    """A transform with settings of every kind and an object that is not a setting."""

    def __init__(self, factor: float, spacing: tuple[float, ...]) -> None:
        self.keys = ("label",)
        self.factor = factor
        self.spacing = spacing
        self.enabled = True
        self.kernel = torch.ones(3)
        self._cache = {}


def test_transform_settings_are_flat_parameters():
    described = describe_transforms([DistanceBinsd(keys="label", num_classes=3, max_distance=5, num_bins=6)])

    assert described["loss_transform.DistanceBinsd"] == "scripts.transforms.boundary.DistanceBinsd"
    assert described["loss_transform.DistanceBinsd.max_distance"] == 5
    assert described["loss_transform.DistanceBinsd.num_bins"] == 6
    assert "loss_transform.DistanceBinsd.keys" not in described


def test_objects_and_private_attributes_are_left_out():
    described = describe_transforms([Scaled(2.0, (1.0, 1.5, 2.0))])

    assert described["loss_transform.Scaled.factor"] == 2.0
    assert described["loss_transform.Scaled.spacing"] == [1.0, 1.5, 2.0]
    assert described["loss_transform.Scaled.enabled"] is True
    assert "loss_transform.Scaled.kernel" not in described
    assert "loss_transform.Scaled._cache" not in described


def test_repeated_class_gets_its_position():
    described = describe_transforms([Scaled(1.0, ()), Scaled(3.0, ())])

    assert described["loss_transform.Scaled0.factor"] == 1.0
    assert described["loss_transform.Scaled1.factor"] == 3.0
    assert "loss_transform.Scaled.factor" not in described


def test_no_transforms_give_no_parameters():
    assert describe_transforms([]) == {}
