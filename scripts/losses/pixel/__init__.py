"""Pixel-level losses: each voxel is scored on its own class probability."""

from .cross_entropy import CrossEntropyLoss

__all__ = ["CrossEntropyLoss"]
