"""Region-level losses: overlap between predicted and target regions, class by class."""

from .dice import DiceLoss
from .generalized_dice import GeneralizedDiceLoss
from .jaccard import JaccardLoss
from .log_cosh_dice import LogCoshDiceLoss
from .lovasz import LovaszSoftmaxLoss
from .mutual_information import RegionMutualInformationLoss
from .sensitivity_specificity import SensitivitySpecificityLoss
from .t_loss import RobustTLoss
from .tversky import FocalTverskyLoss, TverskyLoss
from .wasserstein_dice import GeneralizedWassersteinDiceLoss

__all__ = [
    "DiceLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "GeneralizedWassersteinDiceLoss",
    "JaccardLoss",
    "LogCoshDiceLoss",
    "LovaszSoftmaxLoss",
    "RegionMutualInformationLoss",
    "RobustTLoss",
    "SensitivitySpecificityLoss",
    "TverskyLoss",
]
