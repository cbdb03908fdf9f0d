"""Boundary-level losses: distances between predicted and target boundaries, and auxiliary boundary heads."""

from .active_boundary import ActiveBoundaryLoss
from .boundary_aware import BoundaryAwareLoss
from .conditional_boundary import ConditionalBoundaryLoss
from .inverse_form import InverseFormLoss, InverseFormNet

__all__ = ["ActiveBoundaryLoss", "BoundaryAwareLoss", "ConditionalBoundaryLoss", "InverseFormLoss", "InverseFormNet"]
