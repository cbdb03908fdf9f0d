"""MONAI dictionary transforms of the bundle: targets that some losses need besides the label."""

from .distance import MAP_KEYS, DistanceMapd, class_distance_maps

__all__ = ["MAP_KEYS", "DistanceMapd", "class_distance_maps"]
