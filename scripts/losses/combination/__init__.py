"""Combination losses: weighted sums of pixel- and region-level terms."""

from .combo import ComboLoss

__all__ = ["ComboLoss"]
