"""Region-level losses: overlap between predicted and target regions, class by class."""

from .dice import DiceLoss
from .lovasz import LovaszSoftmaxLoss

__all__ = ["DiceLoss", "LovaszSoftmaxLoss"]
