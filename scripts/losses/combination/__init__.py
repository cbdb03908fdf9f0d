"""Combination losses: weighted sums of pixel- and region-level terms."""

from .combo import ComboLoss
from .exp_log import ExpLogLoss
from .unified_focal import UnifiedFocalLoss
from .weighted_sum import WeightedSumLoss

__all__ = ["ComboLoss", "ExpLogLoss", "UnifiedFocalLoss", "WeightedSumLoss"]
