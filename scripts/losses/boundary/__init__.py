"""Boundary-level losses: distances between predicted and target boundaries, and auxiliary boundary heads."""

from .active_boundary import ActiveBoundaryLoss
from .boundary_aware import BoundaryAwareLoss
from .boundary_dou import BoundaryDoULoss
from .boundary_loss import BoundaryLoss
from .conditional_boundary import ConditionalBoundaryLoss
from .hausdorff import HausdorffLoss
from .inverse_form import InverseFormLoss, InverseFormNet
from .region_wise import RegionWiseLoss

__all__ = [
    "ActiveBoundaryLoss",
    "BoundaryAwareLoss",
    "BoundaryDoULoss",
    "BoundaryLoss",
    "ConditionalBoundaryLoss",
    "HausdorffLoss",
    "InverseFormLoss",
    "InverseFormNet",
    "RegionWiseLoss",
]
