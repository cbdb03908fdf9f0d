"""Region-level losses: overlap between predicted and target regions, class by class."""

from .dice import DiceLoss
from .jaccard import JaccardLoss
from .log_cosh_dice import LogCoshDiceLoss
from .sensitivity_specificity import SensitivitySpecificityLoss
from .tversky import FocalTverskyLoss, TverskyLoss
from .wasserstein_dice import GeneralizedWassersteinDiceLoss

__all__ = [
    "DiceLoss",
    "FocalTverskyLoss",
    "GeneralizedWassersteinDiceLoss",
    "JaccardLoss",
    "LogCoshDiceLoss",
    "SensitivitySpecificityLoss",
    "TverskyLoss",
]
