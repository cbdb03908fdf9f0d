"""Boundary-level losses: distances between predicted and target boundaries, and auxiliary boundary heads."""

from .boundary_aware import BoundaryAwareLoss

__all__ = ["BoundaryAwareLoss"]
