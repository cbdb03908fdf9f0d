"""Pixel-level losses: each voxel is scored on its own class probability."""

from .cross_entropy import CrossEntropyLoss
from .distance_map_ce import DistanceMapCrossEntropyLoss
from .focal import FocalLoss
from .topk import TopKLoss

__all__ = ["CrossEntropyLoss", "DistanceMapCrossEntropyLoss", "FocalLoss", "TopKLoss"]
