"""Region-level losses: overlap between predicted and target regions, class by class."""

from .dice import DiceLoss
from .lovasz import LovaszSoftmaxLoss
from .mutual_information import RegionMutualInformationLoss
from .t_loss import RobustTLoss

__all__ = ["DiceLoss", "LovaszSoftmaxLoss", "RegionMutualInformationLoss", "RobustTLoss"]
