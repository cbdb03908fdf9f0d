"""Glue between MONAI's ``SupervisedTrainer`` and the loss library.

MONAI's trainer calls ``loss_function(prediction, target)``. Some losses need more: a distance map from the data
pipeline, or the output of an auxiliary head. :class:`SegmentationPrepareBatch` packs the extra batch keys with the
label, a wrapper network may return a dict in training mode, and :class:`LossAdapter` unpacks both and calls the
loss with the keyword arguments it declares in ``extra_inputs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines.utils import PrepareBatch, default_prepare_batch
from monai.utils import CommonKeys
from torch import Tensor, nn

from .losses import SegmentationLoss
from .losses.distributed import pool_across_ranks

LOGITS_KEY = "logits"


class SegmentationPrepareBatch(PrepareBatch):
    """Move a batch to the device and return ``(image, target)``; ``target`` carries the loss's extra inputs.

    Without ``extra_keys`` the target is the label tensor, as in MONAI's default. With them it is a dict
    ``{"label": ..., key: ...}`` that :class:`LossAdapter` unpacks.

    Args:
        extra_keys: batch keys that the loss receives as keyword arguments, e.g. ``["distance_map"]``.
    """

    def __init__(self, extra_keys: Sequence[str] = ()) -> None:
        self.extra_keys = tuple(extra_keys)

    def __call__(
        self,
        batchdata: dict[str, Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | dict[str, Tensor]]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        if not self.extra_keys:
            return image, label
        missing = [key for key in self.extra_keys if key not in batchdata]
        if missing:
            raise KeyError(
                f"the batch has no {missing}; the loss overlay must add a transform to `loss_transforms` that "
                f"creates them. Batch keys: {sorted(batchdata)}."
            )
        target = {CommonKeys.LABEL: label}
        for key in self.extra_keys:
            target[key] = torch.as_tensor(batchdata[key]).to(device=device, non_blocking=non_blocking)
        return image, target


class LossAdapter(nn.Module):
    """Call a registered loss with the logits, the label and the extra inputs it declares.

    ``prediction`` is the logits tensor or a dict with a ``"logits"`` entry and head outputs; ``target`` is the
    label tensor or a dict from :class:`SegmentationPrepareBatch`. Being a module, the adapter exposes the loss's
    trainable parameters (the robust T-loss's nu, for one) to the optimizer. In distributed training the loss runs
    inside :func:`~scripts.losses.distributed.pool_across_ranks`, so ``batch=True`` pools the batches of every
    process; in one process this changes nothing.
    """

    def __init__(self, loss: SegmentationLoss) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, prediction: Tensor | Mapping[str, Tensor], target: Tensor | Mapping[str, Tensor]) -> Tensor:
        available: dict[str, Tensor] = {}
        if isinstance(prediction, Mapping):
            if LOGITS_KEY not in prediction:
                raise KeyError(f"the network returned a dict without '{LOGITS_KEY}': keys {sorted(prediction)}.")
            available.update({key: value for key, value in prediction.items() if key != LOGITS_KEY})
            logits = prediction[LOGITS_KEY]
        else:
            logits = prediction
        if isinstance(target, Mapping):
            available.update({key: value for key, value in target.items() if key != CommonKeys.LABEL})
            label = target[CommonKeys.LABEL]
        else:
            label = target

        needed = tuple(getattr(self.loss, "extra_inputs", ()))
        missing = [name for name in needed if name not in available]
        if missing:
            raise KeyError(
                f"loss {getattr(self.loss, 'registry_name', type(self.loss).__name__)!r} needs {missing}, which "
                f"neither the network output nor the batch provides (available: {sorted(available)}). Train with "
                "the loss's overlay configs/losses/<name>.yaml, which adds the transforms and network heads it needs."
            )
        with pool_across_ranks():
            return self.loss(logits, label, **{name: available[name] for name in needed})


def trainable_parameters(network: nn.Module, loss: nn.Module) -> list[dict[str, Any]]:
    """Return optimizer parameter groups: the network's parameters, then the loss's if it has any.

    Losses with trainable parameters (the robust T-loss learns its degrees of freedom) are trained by the same
    optimizer, without weight decay: decay would pull such a parameter towards zero, which has a meaning (nu = 1 for
    the T-loss) rather than being a regulariser.
    """
    groups: list[dict[str, Any]] = [{"params": [p for p in network.parameters() if p.requires_grad]}]
    loss_parameters = [p for p in loss.parameters() if p.requires_grad]
    network_ids = {id(p) for p in groups[0]["params"]}
    loss_parameters = [p for p in loss_parameters if id(p) not in network_ids]
    if loss_parameters:
        groups.append({"params": loss_parameters, "weight_decay": 0.0})
    return groups
