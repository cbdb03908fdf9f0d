"""A weighted sum of registered losses, with weights that an epoch schedule may change during training."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..base import SegmentationInputs, SegmentationLoss
from ..extra_inputs import check_extra_input_names
from ..registry import build_loss, register_loss

# Options that must be the same for every member, because the members share the validated inputs.
_SHARED = ("ignore_index", "batch")


@register_loss(
    "weighted_sum",
    family="combination",
    paper="Weighted sum of registered losses, e.g. generalised Dice plus boundary loss with the rebalancing schedule "
    "of Kervadec et al., MedIA 67 (2021)",
    arxiv="1812.07032",
)
class WeightedSumLoss(SegmentationLoss):
    r"""A weighted sum of registered losses: ``L = sum_i w_i L_i``, each member computed per sample.

    Members are given by registry name with a weight and their own hyperparameters, in either form::

        losses: {generalized_dice: {weight: 1.0}, boundary: {weight: 0.01, include_background: false}}
        losses: [{name: generalized_dice, weight: 1.0}, {name: boundary, weight: 0.01}]

    A bare number is a weight: ``{dice: 1.0, cross_entropy: 1.0}``. A member inherits ``include_background`` and
    ``class_weights`` from the combination unless it sets them. ``ignore_index`` and ``batch`` are the
    combination's, and a member may not change them, because the members share one validated input (one
    softmax). The members return per-sample values, which the combination reduces with its own ``reduction``.

    ``extra_inputs`` is the union of the members' extra inputs, and each member receives the ones it reads, so the
    training config lists them all in ``loss_input_keys``. :attr:`current_weights` holds the weights for
    experiment tracking, and :meth:`set_weight` changes them, e.g. from
    :class:`scripts.schedules.WeightTransfer`, which moves weight from one member to another each epoch as
    Kervadec et al. do for the boundary loss. :attr:`last_member_losses` holds each member's batch-mean value of
    the latest call, detached.

    Args:
        include_background: default for the members that do not set it.
        class_weights: default for the members that do not set it, length ``num_classes``.
        ignore_index: label of voxels that every member leaves out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-sample sums.
        batch: pool the batch in every member.
        losses: the members, as a mapping from registry name to ``{weight, **hyperparameters}`` (or a weight),
            or a list of ``{name, weight, **hyperparameters}``. Weights default to 1.

    Raises:
        ValueError: for no members, a member named twice, an unknown name or hyperparameter, a negative or
            non-finite weight, or a member that sets ``reduction``, ``ignore_index`` or ``batch``.
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        losses: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        members = _parse_members(losses)
        shared = {"ignore_index": ignore_index, "batch": batch}
        inherited = {"include_background": include_background, "class_weights": class_weights}

        self.members = nn.ModuleDict()
        self._weights: dict[str, float] = {}
        self._initial_weights: dict[str, float] = {}
        for name, (weight, hyperparameters) in members.items():
            for option in ("reduction", *_SHARED):
                if option in hyperparameters:
                    raise ValueError(
                        f"member {name!r} sets {option}={hyperparameters[option]!r}; set {option} on weighted_sum "
                        "instead, which applies it to every member."
                    )
            options = {**inherited, **hyperparameters, **shared, "reduction": "none"}
            self.members[name] = build_loss(name, **options)
            self._weights[name] = weight
            self._initial_weights[name] = weight

        names = [input_name for member in self.members.values() for input_name in member.extra_inputs]
        self.extra_inputs = tuple(dict.fromkeys(names))
        self._last_member_losses: dict[str, Tensor] = {}

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The combination's options, and each member's weight at construction and every option it uses.

        A member's options include the defaults it was not given and the ``include_background`` and
        ``class_weights`` it inherits, so the tracked parameters show the complete setting of each term. Its
        ``reduction`` is left out: the combination reduces the members' per-sample values with its own.
        """
        values = super().hyperparameters
        values["losses"] = {
            name: {
                "weight": self._initial_weights[name],
                **{key: value for key, value in member.hyperparameters.items() if key != "reduction"},
            }
            for name, member in self.members.items()
        }
        return values

    @property
    def current_weights(self) -> dict[str, float]:
        """The weight of each member by registry name, as used by the next call."""
        return dict(self._weights)

    @property
    def last_member_losses(self) -> dict[str, Tensor]:
        """Each member's unweighted loss in the latest call, averaged over the batch and detached."""
        return dict(self._last_member_losses)

    def set_weight(self, name: str, weight: float) -> None:
        """Set the weight of the member ``name``.

        Raises:
            ValueError: for a name that is not a member, or a negative or non-finite weight.
        """
        if name not in self._weights:
            raise ValueError(f"{name!r} is not a member of this weighted_sum; its members are {list(self._weights)}.")
        self._weights[name] = _check_weight(name, weight)

    def per_sample_loss(self, inputs: SegmentationInputs, **extra_inputs: Any) -> Tensor:
        check_extra_input_names(self, extra_inputs)
        views: dict[bool, SegmentationInputs] = {}
        total: Tensor | None = None
        for name, member in self.members.items():
            if member.class_weights is not None and member.class_weights.numel() != inputs.num_classes:
                raise ValueError(
                    f"member {name!r} has {member.class_weights.numel()} class_weights but the logits have "
                    f"{inputs.num_classes} classes; give one weight per class, background included."
                )
            if member.include_background not in views:
                views[member.include_background] = _with_background(inputs, member.include_background)
            member_inputs = {key: extra_inputs[key] for key in member.extra_inputs if key in extra_inputs}
            value = member.per_sample_loss(views[member.include_background], **member_inputs)
            self._last_member_losses[name] = value.detach().mean()
            weighted = self._weights[name] * value
            total = weighted if total is None else total + weighted
        return total


def _parse_members(losses: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None) -> dict[str, tuple[float, dict]]:
    """Return ``{name: (weight, hyperparameters)}`` from either accepted form of ``losses``."""
    example = "e.g. {generalized_dice: {weight: 1.0}, boundary: {weight: 0.01}}"
    if not losses:
        raise ValueError(f"weighted_sum needs its member losses in 'losses', {example}; got {losses!r}.")
    if isinstance(losses, Mapping):
        items = list(losses.items())
    elif isinstance(losses, Sequence) and not isinstance(losses, str):
        items = []
        for entry in losses:
            if not isinstance(entry, Mapping) or "name" not in entry:
                raise ValueError(f"each entry of a 'losses' list needs a 'name', got {entry!r}; {example}.")
            entry = dict(entry)
            items.append((entry.pop("name"), entry))
    else:
        raise ValueError(f"'losses' must be a mapping or a list of mappings, {example}; got {losses!r}.")

    members: dict[str, tuple[float, dict]] = {}
    for name, entry in items:
        if name in members:
            raise ValueError(f"the loss {name!r} appears twice in weighted_sum; give each member once.")
        if isinstance(entry, Mapping):
            hyperparameters = dict(entry)
            weight = hyperparameters.pop("weight", 1.0)
        elif entry is None:
            hyperparameters, weight = {}, 1.0
        else:
            hyperparameters, weight = {}, entry
        members[name] = (_check_weight(name, weight), hyperparameters)
    return members


def _check_weight(name: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"the weight of {name!r} must be a finite non-negative number, got {weight!r}.")
    return float(weight)


def _with_background(inputs: SegmentationInputs, include_background: bool) -> SegmentationInputs:
    """Return ``inputs`` as seen by a member with its own ``include_background``, sharing the computed tensors."""
    if include_background == inputs.include_background:
        return inputs
    view = copy.copy(inputs)
    view.include_background = include_background
    # The rule of SegmentationInputs: a sigmoid output scores the foreground alone.
    view.region_classes = slice(1, None) if (inputs.binary or not include_background) else slice(0, None)
    return view
