"""Combination losses: weighted sums of pixel- and region-level terms."""

from .combo import ComboLoss
from .weighted_sum import WeightedSumLoss

__all__ = ["ComboLoss", "WeightedSumLoss"]
