"""The loss registry: one name per loss, with its family in the survey's taxonomy, its paper and its defaults.

A loss module registers its class with :func:`register_loss`; configs build a loss by name with :func:`build_loss`,
so a loss overlay only has to change ``loss#name`` and the hyperparameters it sets.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .base import SegmentationLoss, is_real_number

# The four families of Azad et al., "Loss Functions in the Era of Semantic Segmentation: A Survey and Outlook"
# (arXiv:2312.05391), in the order the survey presents them.
FAMILIES = ("pixel", "region", "boundary", "combination")

_REGISTRY: dict[str, LossSpec] = {}


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its name, class, family and the paper it implements."""

    name: str
    loss_class: type[SegmentationLoss]
    family: str
    paper: str
    arxiv: str | None = None

    @property
    def defaults(self) -> dict[str, Any]:
        """The constructor's keyword arguments and their default values."""
        signature = inspect.signature(self.loss_class.__init__)
        return {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if name != "self" and parameter.default is not inspect.Parameter.empty
        }

    @property
    def extra_inputs(self) -> tuple[str, ...]:
        """Inputs the loss needs besides logits and target, e.g. ``("distance_map",)``."""
        return tuple(self.loss_class.extra_inputs)

    @property
    def reference(self) -> str:
        """The paper, with its arXiv id where it has one."""
        return f"{self.paper}, arXiv:{self.arxiv}" if self.arxiv else self.paper


def register_loss(name: str, family: str, paper: str, arxiv: str | None = None):
    """Register a :class:`SegmentationLoss` subclass under ``name``; use as a class decorator.

    Raises:
        ValueError: for an unknown family, a name already taken, or a class that is not a ``SegmentationLoss``.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r} for loss {name!r}.")

    def decorator(loss_class: type[SegmentationLoss]) -> type[SegmentationLoss]:
        if not (isinstance(loss_class, type) and issubclass(loss_class, SegmentationLoss)):
            raise ValueError(f"loss {name!r} must be a SegmentationLoss subclass, got {loss_class!r}.")
        if name in _REGISTRY and _REGISTRY[name].loss_class is not loss_class:
            raise ValueError(f"the loss name {name!r} is already registered by {_REGISTRY[name].loss_class}.")
        _REGISTRY[name] = LossSpec(name=name, loss_class=loss_class, family=family, paper=paper, arxiv=arxiv)
        loss_class.registry_name = name
        return loss_class

    return decorator


def get_loss_spec(name: str) -> LossSpec:
    """Return the registry entry of ``name``.

    Raises:
        ValueError: when no loss is registered under ``name``; the message lists the registered names.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), sorted(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"unknown loss {name!r}.{hint} Registered losses: {', '.join(sorted(_REGISTRY))}. "
            "Run `python -m scripts.losses list` for the table."
        )
    return _REGISTRY[name]


def list_losses(family: str | None = None) -> list[LossSpec]:
    """Return the registered losses, in taxonomy order then by name, optionally of one family."""
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}.")
    specs = [spec for spec in _REGISTRY.values() if family is None or spec.family == family]
    return sorted(specs, key=lambda spec: (FAMILIES.index(spec.family), spec.name))


def build_loss(name: str, **hyperparameters: Any) -> SegmentationLoss:
    """Build the loss registered as ``name`` with ``hyperparameters`` over its defaults.

    This is the entry point of the bundle's configs (``loss: {_target_: scripts.losses.build_loss, name: dice}``).

    Raises:
        ValueError: for an unknown name, a hyperparameter the loss does not take, or a value that is not a number
            where the default is one (``--loss#alpha abc`` on the command line).
    """
    spec = get_loss_spec(name)
    accepted = spec.defaults
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        members = hyperparameters.get("losses")
        hint = ""
        if name == "weighted_sum" and isinstance(members, Mapping):
            # A loss trained inside a weighted sum (the boundary and Hausdorff overlays) takes its options one level
            # down, which a user who knows the loss's name does not expect.
            hint = (
                " The options of its members are set under losses#<member>, e.g. "
                + ", ".join(f"--loss#losses#{member}#{unknown[0]}" for member in members)
                + "."
            )
        raise ValueError(
            f"loss {name!r} has no hyperparameter {', '.join(map(repr, unknown))}; it takes: {', '.join(accepted)}."
            + hint
        )
    for key, value in hyperparameters.items():
        default = accepted[key]
        # None stays allowed: some numeric options take it to switch a term off (focal's alpha).
        if is_real_number(default) and value is not None and not is_real_number(value):
            raise ValueError(
                f"{key} of loss {name!r} must be a number (default {default}), got {value!r} of type "
                f"{type(value).__name__}."
            )
    return spec.loss_class(**hyperparameters)


def describe_loss(loss: SegmentationLoss) -> dict[str, Any]:
    """Return the name, family, paper and every hyperparameter of a built loss, flat, for experiment tracking."""
    name = getattr(loss, "registry_name", type(loss).__name__)
    description: dict[str, Any] = {"loss": name}
    if name in _REGISTRY:
        spec = _REGISTRY[name]
        description["loss_family"] = spec.family
        description["loss_paper"] = spec.reference
    for key, value in _flatten(loss.hyperparameters).items():
        description[f"loss.{key}"] = value
    # A loss that reads a file (the InverseForm network) identifies it beyond its path.
    for key, value in getattr(loss, "tracking_details", dict)().items():
        description[f"loss.{key}"] = value
    return description


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, SegmentationLoss):
            flat[f"{prefix}{key}"] = getattr(value, "registry_name", type(value).__name__)
            flat.update(_flatten(value.hyperparameters, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
