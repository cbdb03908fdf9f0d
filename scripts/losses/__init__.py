"""The loss library, grouped by the four families of Azad et al. (arXiv:2312.05391).

Importing this package registers every loss; :func:`build_loss` builds one by name and :func:`list_losses` lists
them. See :mod:`scripts.losses.base` for the API that all of them share.
"""

from . import boundary, combination, pixel, region
from .base import SegmentationInputs, SegmentationLoss
from .registry import FAMILIES, LossSpec, build_loss, describe_loss, get_loss_spec, list_losses, register_loss

__all__ = [
    "FAMILIES",
    "LossSpec",
    "SegmentationInputs",
    "SegmentationLoss",
    "boundary",
    "build_loss",
    "combination",
    "describe_loss",
    "get_loss_spec",
    "list_losses",
    "pixel",
    "region",
    "register_loss",
]
