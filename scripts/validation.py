"""When a training validates: every ``val_interval`` epochs (MONAI's ``ValidationHandler``) and after the last epoch.

MONAI's ``ValidationHandler`` validates at the epochs that are multiples of its interval only. A training shorter
than the interval, such as ``--max_epochs 2`` with the default ``val_interval: 5``, would then finish without any
validation: no validation metrics in MLflow and no best model of its own. :class:`LastEpochValidation` runs the
validator once more after the last epoch whenever the interval skipped it.
"""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events


class LastEpochValidation:
    """Run ``validator`` after the trainer's last epoch when ``interval`` does not divide it.

    Attach it after MONAI's ``ValidationHandler`` with the same interval. It runs at the end of the last epoch,
    before the trainer's ``COMPLETED`` handlers (the MLflow tracker uploads the best model there).

    Args:
        validator: the evaluator, run as ``validator.run(epoch)`` as ``ValidationHandler`` does.
        interval: the ``ValidationHandler``'s interval in epochs.

    Raises:
        ValueError: when ``interval`` is not a positive integer.
    """

    def __init__(self, validator: Any, interval: int) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"val_interval must be a positive integer, got {interval!r}.")
        self.validator = validator
        self.interval = interval

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch == engine.state.max_epochs and epoch % self.interval != 0:
            self.validator.run(epoch)
