"""Region-level losses: overlap between predicted and target regions, class by class."""

from .dice import DiceLoss
from .generalized_dice import GeneralizedDiceLoss

__all__ = ["DiceLoss", "GeneralizedDiceLoss"]
