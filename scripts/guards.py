"""Stop a training at the first non-finite network output or loss, before the optimizer step spreads it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from .options import count


class NonFiniteLossError(FloatingPointError):
    """A training iteration produced a NaN or inf loss or network output."""


class NonFiniteLossGuard:
    """Raise :class:`NonFiniteLossError` when an iteration's network output or loss is NaN or inf.

    The checks run inside the iteration: after the forward pass (``FORWARD_COMPLETED``) on the logits, and after the
    loss (``LOSS_COMPLETED``) on the loss, both before the backward pass and the optimizer step, so the weights in
    memory stay finite too. The error names the epoch and iteration, the loss and its value, and the last good
    training checkpoint, which the error prevents from being overwritten. The MLflow tracker records the message
    when it marks the run failed.

    Checking the logits as well as the loss matters because the bundle's losses reject non-finite logits with their
    own error: a diverging network is reported here, with the iteration and the checkpoint, instead.

    Args:
        loss_name: the name shown in the message, e.g. the registry name ``combo``.
        checkpoint: the :class:`scripts.checkpoints.TrainingCheckpoint` (its ``describe_last_good()`` is quoted),
            or ``None``.
    """

    def __init__(self, loss_name: str = "loss", checkpoint: Any = None) -> None:
        self.loss_name = loss_name
        self.checkpoint = checkpoint

    def attach(self, trainer: Engine) -> None:
        trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, self.check_output)
        trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, self.check_loss)

    def check_output(self, engine: Engine) -> None:
        prediction = engine.state.output[CommonKeys.PRED]
        tensors = prediction.values() if isinstance(prediction, Mapping) else [prediction]
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not _all_finite(tensor):
                bad = tensor.detach()[~torch.isfinite(tensor.detach())]
                raise NonFiniteLossError(
                    self._message(
                        engine,
                        f"the network output contains {count(bad.numel(), 'non-finite value')} "
                        f"({bad[0].item()} first) before the loss {self.loss_name!r}",
                    )
                )

    def check_loss(self, engine: Engine) -> None:
        loss = engine.state.output[CommonKeys.LOSS]
        value = float(loss.detach().float()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise NonFiniteLossError(self._message(engine, f"the loss {self.loss_name!r} is {value}"))

    def _message(self, engine: Engine, problem: str) -> str:
        state = engine.state
        epoch_length = state.epoch_length or 0
        within = (state.iteration - 1) % epoch_length + 1 if epoch_length else state.iteration
        checkpoint = self.checkpoint.describe_last_good() if self.checkpoint is not None else "none"
        return (
            f"{problem} at epoch {state.epoch}, iteration {state.iteration} ({within} of {epoch_length} in the epoch); "
            f"training stopped. Last good checkpoint: {checkpoint}. Fix the cause (a lower learning rate, other "
            "loss settings, or the data: python -m scripts.data check) and start over with --resume never, or rerun "
            "the same command without --resume never to resume from that checkpoint."
        )


def _all_finite(tensor: torch.Tensor) -> bool:
    # One reduction is cheaper than an elementwise check; a huge but finite sum is re-checked exactly.
    detached = tensor.detach()
    return bool(torch.isfinite(detached.sum())) or bool(torch.isfinite(detached).all())


__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]
