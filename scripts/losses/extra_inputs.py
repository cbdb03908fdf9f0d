"""Extra inputs of the losses that read ground-truth maps: validation, and example maps for tests and benchmarks.

A distance-map loss lists the maps it reads in ``extra_inputs`` (e.g. ``("signed_distance_map",)``); the data
pipeline computes them with :class:`scripts.transforms.DistanceMapd` and the trainer passes them as keyword
arguments. :func:`example_extra_inputs` builds the same maps from index labels, so a test or a benchmark can call
any registered loss, combinations included::

    extras = example_extra_inputs(loss, logits, labels)
    loss(logits, labels, **extras)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..transforms.distance import MAP_KEYS, class_distance_maps
from .base import SegmentationInputs, SegmentationLoss
from .registry import get_loss_spec

# The transform kind that computes each map, by extra-input name: "signed_distance_map" -> "signed".
MAP_KINDS: dict[str, str] = {key: kind for kind, key in MAP_KEYS.items()}

# The value range of each map, to catch a map of the wrong kind: (lowest, highest), None for unbounded.
MAP_RANGES: dict[str, tuple[float | None, float | None]] = {
    "signed_distance_map": (None, None),
    "boundary_distance_map": (0.0, None),
    "region_wise_map": (-1.0, 1.0),
    "inverted_distance_map": (0.0, 1.0),
}

# extra-input name -> builder(logits, index labels) -> the input for a batch. Other families may register more.
EXAMPLE_BUILDERS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {}


def register_example_builder(name: str):
    """Register a function ``(logits, labels) -> Tensor`` that builds the extra input ``name`` for a batch."""

    def decorator(builder: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
        EXAMPLE_BUILDERS[name] = builder
        return builder

    return decorator


def example_extra_inputs(loss: SegmentationLoss | str, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Build every extra input that ``loss`` needs from the logits and the index labels of a batch.

    The maps are computed as the pipeline's :class:`~scripts.transforms.DistanceMapd` would, with unit spacing.

    Args:
        loss: a built loss, whose ``extra_inputs`` may depend on its configuration (a combination, a variant), or
            a registered name, which uses the defaults' extra inputs.
        logits: ``(B, C, *spatial)``.
        labels: class indices ``(B, 1, *spatial)``.

    Raises:
        ValueError: when no builder is registered for one of the loss's extra inputs.
    """
    names = get_loss_spec(loss).extra_inputs if isinstance(loss, str) else tuple(loss.extra_inputs)
    missing = [name for name in names if name not in EXAMPLE_BUILDERS]
    if missing:
        raise ValueError(
            f"no example builder for the extra inputs {missing}; register one with register_example_builder."
        )
    return {name: EXAMPLE_BUILDERS[name](logits, labels) for name in names}


def _distance_map_builder(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    kind = MAP_KINDS[name]

    def build(logits: Tensor, labels: Tensor) -> Tensor:
        num_classes = max(logits.shape[1], 2)
        maps = class_distance_maps(labels.detach(), num_classes, kind, batched=True)
        return maps.to(logits.device)

    return build


for _name in MAP_KINDS:
    register_example_builder(_name)(_distance_map_builder(_name))


def check_extra_input_names(loss: SegmentationLoss, extra_inputs: dict[str, Any]) -> None:
    """Raise ``ValueError`` when ``extra_inputs`` has a keyword that ``loss`` does not read."""
    unexpected = sorted(set(extra_inputs) - set(loss.extra_inputs))
    if unexpected:
        raise ValueError(
            f"{type(loss).__name__} got the unexpected extra inputs {unexpected}; it reads "
            f"{list(loss.extra_inputs) or 'none'}. Check loss_input_keys in the training config."
        )


def class_map_input(
    loss: SegmentationLoss, extra_inputs: dict[str, Any], name: str, inputs: SegmentationInputs
) -> Tensor:
    """Return the validated per-class map ``extra_inputs[name]``: detached, in the logits' dtype, ``(B, K, *spatial)``.

    Raises:
        ValueError: when the map is missing, not a tensor, of the wrong shape or device, not finite, or outside
            the value range of its kind. The message names the transform and config keys that provide it.
    """
    check_extra_input_names(loss, extra_inputs)
    value = extra_inputs.get(name)
    kind = MAP_KINDS.get(name)
    source = (
        f"add scripts.transforms.DistanceMapd(keys='label', num_classes=..., kind='{kind}') to loss_transforms "
        f"and '{name}' to loss_input_keys"
        if kind
        else f"add '{name}' to loss_input_keys"
    )
    if value is None:
        raise ValueError(
            f"{type(loss).__name__} needs the extra input '{name}' (one map per class, shape (B, K, *spatial)), "
            f"but it is missing; {source}, or call loss(logits, target, {name}=...)."
        )
    if not isinstance(value, Tensor):
        raise ValueError(f"the extra input '{name}' must be a torch.Tensor, got {type(value).__name__}.")
    if type(value) is not Tensor and hasattr(value, "as_tensor"):
        value = value.as_tensor()

    expected = (inputs.logits.shape[0], inputs.num_classes, *inputs.logits.shape[2:])
    if tuple(value.shape) != expected:
        raise ValueError(
            f"the extra input '{name}' has shape {tuple(value.shape)}, expected {expected}: one channel per class "
            f"({inputs.num_classes}, background included, 2 for a sigmoid output) and the logits' spatial shape. "
            f"Set num_classes of the transform to the number of classes and compute the map after all spatial "
            "transforms."
        )
    if value.device != inputs.logits.device:
        raise ValueError(
            f"the extra input '{name}' is on {value.device} but the logits are on {inputs.logits.device}; move both "
            "to one device."
        )
    value = value.detach().to(inputs.logits.dtype)
    low, high = torch.aminmax(value)
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise ValueError(
            f"the extra input '{name}' contains NaN or inf; recompute it with scripts.transforms.DistanceMapd, "
            "which gives finite maps for empty and full classes too."
        )
    lowest, highest = MAP_RANGES.get(name, (None, None))
    if (lowest is not None and low < lowest) or (highest is not None and high > highest):
        raise ValueError(
            f"the extra input '{name}' has values from {low.item():.4g} to {high.item():.4g}, outside its range "
            f"[{lowest}, {highest if highest is not None else 'inf'}]; is it a map of another kind? Compute it with "
            f"DistanceMapd(kind='{kind}')."
        )
    return value
