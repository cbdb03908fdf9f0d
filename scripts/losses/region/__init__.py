"""Region-level losses: overlap between predicted and target regions, class by class."""

from .dice import DiceLoss
from .generalized_dice import GeneralizedDiceLoss
from .lovasz import LovaszSoftmaxLoss
from .mutual_information import RegionMutualInformationLoss
from .t_loss import RobustTLoss

__all__ = ["DiceLoss", "GeneralizedDiceLoss", "LovaszSoftmaxLoss", "RegionMutualInformationLoss", "RobustTLoss"]
