"""Epoch schedules for the weights of a ``weighted_sum`` loss, attached to the trainer as ignite handlers.

The bundle's ``extra_train_handlers`` hook attaches them; the Kervadec et al. schedule of the ``boundary``
overlay reads::

    extra_train_handlers:
      - _target_: scripts.schedules.WeightTransfer
        loss: "@loss"
        source: generalized_dice
        target: boundary
        step: 0.01
        source_floor: 0.1
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from ignite.engine import Engine, Events

from .options import as_bool

logger = logging.getLogger(__name__)


class WeightTransfer:
    """Move weight from one member of a ``weighted_sum`` loss to another at the start of every epoch.

    In epoch ``e`` (1-based) the weights are::

        source = max(source_floor, source_start - step * (e - 1))
        target = target_start + step * (e - 1)                 # keep_total=False
        target = source_start + target_start - source         # keep_total=True

    ``keep_total=False`` is Kervadec et al.'s ``StealWeight`` schedule for the boundary loss (start 1 and 0.01,
    step 0.01, floor 0.1): the target keeps gaining ``step`` after the source reaches its floor.
    ``keep_total=True`` moves exactly what the source loses, as Valverde and Tohka's "gradual" weights
    ``max((100 - epoch) / 100, 0.01)`` and one minus that (start 1 and 0, step 0.01, floor 0.01). The weights
    depend on the epoch number alone, so a run resumed from a checkpoint continues the schedule. Each change is
    logged, and the loss's ``current_weights`` shows the weights for experiment tracking.

    Args:
        loss: a loss with ``current_weights`` and ``set_weight`` (``weighted_sum``).
        source: the member that loses weight.
        target: the member that gains weight.
        step: weight moved per epoch, at least 0.
        source_floor: the smallest weight of the source, at least 0.
        start: weights of epoch 1, ``{name: weight}``; members not given keep their weight at attach time.
        keep_total: give the target exactly what the source loses, so the sum of the two stays constant.

    Raises:
        ValueError: for a loss without weights, a source or target that is not one of its members, the same
            member as source and target, or a negative or non-finite step, floor or start weight.
    """

    def __init__(
        self,
        loss,
        source: str,
        target: str,
        step: float = 0.01,
        source_floor: float = 0.1,
        start: Mapping[str, float] | None = None,
        keep_total: bool = False,
    ) -> None:
        attributes = ("current_weights", "set_weight")
        members = _check_members("WeightTransfer", loss, attributes, source=source, target=target)
        for option, value in (("step", step), ("source_floor", source_floor)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{option} must be a finite non-negative number, got {value!r}.")

        weights = loss.current_weights
        for name, value in (start or {}).items():
            if name not in members:
                raise ValueError(f"start names {name!r}, which is not a member of the loss; its members are {members}.")
            loss.set_weight(name, value)
            weights[name] = float(value)
        self.loss = loss
        self.source = source
        self.target = target
        self.step = float(step)
        self.source_floor = float(source_floor)
        self.keep_total = as_bool("keep_total", keep_total)
        self.source_start = weights[source]
        self.target_start = weights[target]

    def weights_at(self, epoch: int) -> tuple[float, float]:
        """Return the ``(source, target)`` weights of the 1-based ``epoch``."""
        steps = max(epoch - 1, 0)
        source = max(self.source_floor, self.source_start - self.step * steps)
        if self.keep_total:
            target = self.source_start + self.target_start - source
        else:
            target = self.target_start + self.step * steps
        return source, target

    def attach(self, engine: Engine) -> None:
        """Update the weights at the start of every epoch of ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        source, target = self.weights_at(engine.state.epoch)
        previous = self.loss.current_weights
        self.loss.set_weight(self.source, source)
        self.loss.set_weight(self.target, target)
        if previous[self.source] != source or previous[self.target] != target:
            logger.info(
                "epoch %d: loss weights %s %.4g -> %.4g, %s %.4g -> %.4g",
                engine.state.epoch,
                self.source,
                previous[self.source],
                source,
                self.target,
                previous[self.target],
                target,
            )


class EqualContribution:
    """Reweight one member of a ``weighted_sum`` loss each epoch so that it contributes as much as another.

    After every epoch the weight of ``balanced`` becomes ``w_ref * mean(L_ref) / mean(L_bal)``, the means taken over
    that epoch's iterations (from the loss's ``last_member_losses``). Karimi and Salcudean train their Hausdorff loss
    this way: ``L = L_HD + lambda L_DSC``, with lambda chosen so that both terms weigh the same on average. The
    ``hausdorff`` overlay uses it with ``reference: hausdorff`` and ``balanced: dice``. Epoch 1 uses the weights of
    the config. Each change is logged.

    NOTE: the means live in memory only, so a training resumed from a checkpoint starts its first epoch with the
    config's weight and rebalances after it.

    Args:
        loss: a loss with ``current_weights``, ``set_weight`` and ``last_member_losses`` (``weighted_sum``).
        reference: the member whose contribution sets the scale; its weight is left alone.
        balanced: the member whose weight follows.
        eps: smallest mean of ``balanced`` that is divided by; a smaller mean keeps the previous weight.

    Raises:
        ValueError: for a loss without these attributes, or a reference or balanced member that is not a member,
            or the same member twice.
    """

    def __init__(self, loss, reference: str, balanced: str, eps: float = 1e-6) -> None:
        _check_members(
            "EqualContribution",
            loss,
            ("current_weights", "set_weight", "last_member_losses"),
            reference=reference,
            balanced=balanced,
        )
        self.loss = loss
        self.reference = reference
        self.balanced = balanced
        self.eps = float(eps)
        self._sums = {reference: 0.0, balanced: 0.0}
        self._count = 0

    def attach(self, engine: Engine) -> None:
        """Accumulate the members' values every iteration and rebalance at the end of every epoch of ``engine``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.rebalance)

    def reset(self, engine: Engine | None = None) -> None:
        self._sums = dict.fromkeys(self._sums, 0.0)
        self._count = 0

    def accumulate(self, engine: Engine | None = None) -> None:
        values = self.loss.last_member_losses
        if self.reference in values and self.balanced in values:
            for name in self._sums:
                self._sums[name] += float(values[name])
            self._count += 1

    def rebalance(self, engine: Engine) -> None:
        if self._count == 0:
            return
        reference_mean = self._sums[self.reference] / self._count
        balanced_mean = self._sums[self.balanced] / self._count
        if not (math.isfinite(reference_mean) and math.isfinite(balanced_mean)) or balanced_mean < self.eps:
            return
        weights = self.loss.current_weights
        weight = weights[self.reference] * reference_mean / balanced_mean
        self.loss.set_weight(self.balanced, weight)
        logger.info(
            "after epoch %d: mean %s %.4g, mean %s %.4g; loss weight %s %.4g -> %.4g from epoch %d",
            engine.state.epoch,
            self.reference,
            reference_mean,
            self.balanced,
            balanced_mean,
            self.balanced,
            weights[self.balanced],
            weight,
            engine.state.epoch + 1,
        )


def _check_members(schedule: str, loss, attributes: tuple[str, ...], **roles: str) -> list[str]:
    """Return the loss's member names after checking its attributes and that the two ``roles`` name two members."""
    if not all(hasattr(loss, name) for name in attributes):
        raise ValueError(
            f"{schedule} needs a loss with {', '.join(attributes)} (weighted_sum), got {type(loss).__name__}; set "
            "loss#name to weighted_sum."
        )
    members = list(loss.current_weights)
    for role, name in roles.items():
        if name not in members:
            raise ValueError(f"the {role} {name!r} is not a member of the loss; its members are {members}.")
    (first_role, first), (second_role, second) = roles.items()
    if first == second:
        raise ValueError(f"{first_role} and {second_role} are both {first!r}; name two different members.")
    return members
