"""Region-level losses: overlap between predicted and target regions, class by class."""

from .dice import DiceLoss

__all__ = ["DiceLoss"]
