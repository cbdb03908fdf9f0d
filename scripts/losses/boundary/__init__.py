"""Boundary-level losses: distances between predicted and target boundaries."""

from .boundary_dou import BoundaryDoULoss
from .boundary_loss import BoundaryLoss
from .hausdorff import HausdorffLoss
from .region_wise import RegionWiseLoss

__all__ = ["BoundaryDoULoss", "BoundaryLoss", "HausdorffLoss", "RegionWiseLoss"]
