"""The loss API that every registered loss shares.

Every loss takes raw network outputs and a target and returns a tensor:

* ``logits``: ``(B, C, *spatial)`` with one or more spatial dimensions (2D and 3D are the cases we test).
  ``C >= 2`` is a multi-class problem with a softmax over the channels. ``C == 1`` is a binary problem with a
  sigmoid; the loss then sees two classes, the implicit background (class 0) and the foreground (class 1).
* ``target``: ``(B, 1, *spatial)`` integer class indices (any integer or integer-valued float dtype), or
  ``(B, C, *spatial)`` one-hot or soft probabilities that sum to one over the channels. Both forms give the same
  value. With ``C == 1`` the single target channel is the foreground indicator in either form.

Shared options:

* ``include_background``: whether class 0 takes part. Region losses leave it out of the average over classes;
  pixel losses give background voxels zero weight. With a sigmoid (``C == 1``) region losses always score the
  foreground class alone, as MONAI's losses do for one channel, and the option has no effect.
* ``class_weights``: one non-negative weight per class, always of length ``num_classes`` (``C``, or 2 for a
  sigmoid), also when ``include_background=False`` (the background entry is then unused).
* ``ignore_index``: a label value in an index target whose voxels take no part in the loss. The result equals
  the loss on the target with those voxels cropped away, for the losses whose value is a sum over voxels. In a
  one-hot target, ignored voxels are the ones whose channels sum to zero; they are only recognised when
  ``ignore_index`` is set.
* ``batch``: ``False`` computes one loss per sample. ``True`` pools every voxel of the batch first (a global
  voxel mean for pixel losses, batch-wide sums for region losses, the "batch Dice" of nnU-Net) and gives a single
  value. In distributed training the training engine calls the loss inside
  :func:`~scripts.losses.distributed.pool_across_ranks`, and the helpers below then pool the batches of all
  processes, with gradients, so that the loss equals the one on the combined batch. A loss that pools the batch
  without these helpers must combine its statistics with ``sum_across_ranks`` or ``gather_across_ranks`` from
  that module.
* ``reduction``: ``"none"`` returns the per-sample losses, shape ``(B,)``, or shape ``(1,)`` with ``batch=True``.
  ``"mean"`` averages and ``"sum"`` adds those values, so ``sum`` always equals the sum of ``none``.

Numerics follow nnU-Net's habits: every loss runs with autocast switched off, in float32 for float16, bfloat16 and
float32 logits and in float64 for float64 logits (gradient checks), probabilities in logs
come from ``log_softmax``/``logsigmoid`` (a confidently wrong voxel keeps its gradient), and the one-hot target is
built without gradient.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..options import as_bool, count  # noqa: F401 - as_bool is re-exported for the losses
from .distributed import pooling_across_ranks, sum_across_ranks
from .fused import softmax_class_sums, target_log_softmax

REDUCTIONS = ("mean", "sum", "none")


class SegmentationLoss(nn.Module):
    """Base class of every loss in the library: argument checks, target preparation and reduction.

    A subclass implements :meth:`per_sample_loss`, which receives a :class:`SegmentationInputs` and returns the
    loss of each sample, shape ``(B,)``, or ``(1,)`` when ``batch=True``. Losses that need more than logits and
    target (a distance map, an auxiliary head) list the keyword arguments in ``extra_inputs``; the training engine
    passes them through.

    Args:
        include_background: whether class 0 takes part in the loss (see the module docstring).
        class_weights: one weight per class, length ``num_classes``. ``None`` weighs every class equally.
        ignore_index: a target label whose voxels are left out of the loss. ``None`` keeps every voxel.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-sample losses.
        batch: pool the whole batch before computing the loss.

    Raises:
        ValueError: for an unknown ``reduction``, negative or non-finite ``class_weights``, or an ``ignore_index``
            that is not an integer.
    """

    extra_inputs: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_hyperparameters(cls.__dict__["__init__"])

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | Tensor | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ValueError(f"ignore_index must be an integer label or None, got {ignore_index!r}.")
        self.include_background = as_bool("include_background", include_background)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.batch = as_bool("batch", batch)

        weights = None
        if class_weights is not None:
            weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
            if weights.numel() == 0 or not torch.isfinite(weights).all() or (weights < 0).any():
                raise ValueError(
                    f"class_weights must be finite non-negative numbers, one per class; got {weights.tolist()}."
                )
        # A buffer moves with .to(device) and is saved in the state dict.
        self.register_buffer("class_weights", weights, persistent=False)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments of this loss, defaults included, as the loss interpreted them.

        Where the loss stores an argument under the same name, the stored value is reported, so a flag given as
        the string ``"false"`` is reported as ``False`` and class weights as a list.
        """
        values = {}
        for key, given in getattr(self, "_hyperparameters", {}).items():
            stored = getattr(self, key, given)
            if isinstance(stored, Tensor):
                stored = stored.tolist() if stored.numel() > 1 or stored.ndim > 0 else stored.item()
            elif isinstance(stored, nn.Module):
                stored = given
            values[key] = stored
        return values

    def forward(self, logits: Tensor, target: Tensor, **extra_inputs: Any) -> Tensor:
        """Compute the loss of ``logits`` against ``target``; see the module docstring for the shapes."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            inputs = SegmentationInputs(
                logits, target, ignore_index=self.ignore_index, include_background=self.include_background
            )
            if self.class_weights is not None and self.class_weights.numel() != inputs.num_classes:
                raise ValueError(
                    f"class_weights has {self.class_weights.numel()} entries but the logits have "
                    f"{inputs.num_classes} classes; give one weight per class, background included."
                )
            per_sample = self.per_sample_loss(inputs, **extra_inputs)
        return reduce_loss(per_sample, self.reduction)

    def per_sample_loss(self, inputs: SegmentationInputs, **extra_inputs: Any) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement per_sample_loss().")

    # Helpers shared by the families. They live here so that a subclass reads as its formula.

    def average_voxels(self, voxel_loss: Tensor, inputs: SegmentationInputs) -> Tensor:
        """Average a ``(B, *spatial)`` per-voxel loss with the voxel weights, per sample or over the batch.

        The weight of a voxel is the class weight of its target class (summed over a soft target), zero where it
        is ignored or, with ``include_background=False``, where its class is the background. The result is
        ``sum(weight * loss) / sum(weight)``, the normalisation of ``torch.nn.CrossEntropyLoss``; a sample whose
        weights are all zero contributes 0. With ``batch=True`` in distributed training, both sums run over the
        voxels of every process.
        """
        weight = inputs.voxel_weights(self.class_weights)
        if self.batch and pooling_across_ranks():
            if weight is None:
                total = voxel_loss.sum()
                count = total.new_tensor(float(voxel_loss.numel()))
            else:
                total = (voxel_loss * weight).sum()
                count = weight.sum()
            total, count = sum_across_ranks(torch.stack([total, count.to(total.dtype)])).unbind()
            return (total / count.clamp_min(torch.finfo(total.dtype).tiny)).reshape(-1)
        dims = tuple(range(0 if self.batch else 1, voxel_loss.ndim))
        if weight is None:
            mean = voxel_loss.mean(dim=dims)
        else:
            total = (voxel_loss * weight).sum(dim=dims)
            mean = total / weight.sum(dim=dims).clamp_min(torch.finfo(total.dtype).tiny)
        return mean.reshape(-1)

    def mean_over_voxels(self, voxel_loss: Tensor, inputs: SegmentationInputs) -> Tensor:
        """Divide the sum of a ``(B, *spatial)`` per-voxel loss by the number of voxels in the loss.

        Unlike :meth:`average_voxels`, weights already applied to ``voxel_loss`` scale the result instead of
        cancelling in a ratio, as the alpha of focal loss does. Ignored voxels must already carry a zero loss.
        """
        dims = tuple(range(0 if self.batch else 1, voxel_loss.ndim))
        total = voxel_loss.sum(dim=dims).reshape(-1)
        count = inputs.voxel_count(batch=self.batch)
        if self.batch and pooling_across_ranks():
            total, count = sum_across_ranks(
                torch.stack([total.reshape(()), count.reshape(()).to(total.dtype)])
            ).unbind()
            total, count = total.reshape(1), count.reshape(1)
        return total / count.clamp_min(1.0)

    def average_classes(
        self,
        class_loss: Tensor,
        inputs: SegmentationInputs,
        present: Tensor | None = None,
        classes: slice | None = None,
    ) -> Tensor:
        """Average a ``(B, K)`` per-class loss over the classes that take part, with the class weights.

        ``present``, a ``(B, K)`` boolean tensor, further restricts each row to the classes marked ``True`` (for
        example the classes found in that sample's target); a row with no class left averages to 0. ``classes``
        overrides ``inputs.region_classes``, for a loss that scores the background of a sigmoid too.
        """
        classes = inputs.region_classes if classes is None else classes
        selected = class_loss[:, classes]
        if self.class_weights is None and present is None:
            return selected.mean(dim=1)
        if self.class_weights is None:
            weights = torch.ones_like(selected[0])
        else:
            weights = self.class_weights[classes].to(selected)
            if float(weights.sum()) == 0.0:
                raise ValueError(
                    f"class_weights {self.class_weights.tolist()} give zero weight to every class in the loss; "
                    "give at least one included class a positive weight."
                )
        if present is None:
            return (selected * weights).sum(dim=1) / weights.sum()
        weights = weights * present[:, classes].to(selected)
        return (selected * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(torch.finfo(selected.dtype).tiny)


def _differentiable_cached_property(method: Callable[[Any], Tensor]) -> functools.cached_property:
    """A cached property computed with gradients enabled, whatever the context of its first access.

    A loss may first read, say, ``log_probs`` inside ``torch.no_grad()`` (to pick boundary voxels) and later use it
    in a differentiable term; without this, the cache would keep the tensor without a gradient path.
    """

    @functools.wraps(method)
    def compute(self: Any) -> Tensor:
        with torch.enable_grad():
            return method(self)

    return functools.cached_property(compute)


class SegmentationInputs:
    """Validated logits and target of one loss call, with the derived tensors computed on first use.

    Attributes:
        logits: the logits in float32 (float64 logits stay float64), ``(B, C, *spatial)``.
        binary: ``True`` for a single sigmoid channel.
        num_classes: ``C``, or 2 for a sigmoid.
        region_classes: the class indices that region losses average over.
    """

    def __init__(
        self,
        logits: Tensor,
        target: Tensor,
        ignore_index: int | None = None,
        include_background: bool = True,
    ) -> None:
        logits = _plain_tensor(logits)
        target = _plain_tensor(target)
        check_logits(logits)
        # float64 stays float64 (gradcheck); half precision and float32 compute in float32.
        self.logits = logits if logits.dtype == torch.float64 else logits.float()
        self.binary = logits.shape[1] == 1
        self.num_classes = 2 if self.binary else logits.shape[1]
        self.ignore_index = ignore_index
        self.include_background = include_background
        if self.binary or not include_background:
            self.region_classes = slice(1, None)
        else:
            self.region_classes = slice(0, None)
        self._labels, self._soft_target, self._mask = _prepare_target(logits, target, ignore_index)

    @property
    def spatial_dims(self) -> tuple[int, ...]:
        """The spatial dimensions of the ``(B, K, *spatial)`` tensors."""
        return tuple(range(2, self.logits.ndim))

    @property
    def mask(self) -> Tensor | None:
        """``(B, 1, *spatial)`` float mask of the voxels in the loss, or ``None`` when every voxel counts."""
        return self._mask

    @functools.cached_property
    def labels(self) -> Tensor:
        """``(B, *spatial)`` int64 class indices; ignored voxels carry 0 and are masked out."""
        if self._labels is not None:
            return self._labels
        return self.target.max(dim=1).indices

    @_differentiable_cached_property
    def log_probs(self) -> Tensor:
        """``(B, K, *spatial)`` class log-probabilities from ``log_softmax`` (or ``logsigmoid`` for one channel)."""
        if self.binary:
            return torch.cat([F.logsigmoid(-self.logits), F.logsigmoid(self.logits)], dim=1)
        return F.log_softmax(self.logits, dim=1)

    @_differentiable_cached_property
    def probs(self) -> Tensor:
        """``(B, K, *spatial)`` class probabilities."""
        if self.binary:
            foreground = torch.sigmoid(self.logits)
            return torch.cat([1.0 - foreground, foreground], dim=1)
        return torch.softmax(self.logits, dim=1)

    @functools.cached_property
    def target(self) -> Tensor:
        """``(B, K, *spatial)`` one-hot (or soft) target in the logits' dtype; ignored voxels are all zero."""
        if self._soft_target is not None:
            return self._soft_target.to(self.logits.dtype)
        with torch.no_grad():
            # A broadcast comparison of float labels written straight into a float tensor. On CPU this measured
            # about five times faster than a boolean result converted afterwards, or zeros() and scatter_().
            labels = self._labels.to(self.logits.dtype).unsqueeze(1)
            classes = torch.arange(self.num_classes, device=self.logits.device, dtype=self.logits.dtype)
            one_hot = self.logits.new_empty((self.logits.shape[0], self.num_classes, *self.logits.shape[2:]))
            torch.eq(labels, classes.view(1, -1, *self.ones_spatial), out=one_hot)
            if self._mask is not None:
                one_hot.mul_(self._mask)
        return one_hot

    def class_weight_vector(self, class_weights: Tensor | None) -> Tensor | None:
        """Return the class weights, ``(K,)`` or per sample ``(B, K)``, with the background zeroed when excluded.

        Returns ``None`` when every weight is one, so callers can skip a multiplication.
        """
        if class_weights is None and self.include_background:
            return None
        if class_weights is None:
            weights = torch.ones(self.num_classes, device=self.logits.device, dtype=self.logits.dtype)
        else:
            weights = class_weights.to(self.logits.device, self.logits.dtype).clone()
        if not self.include_background:
            weights[..., 0] = 0.0
        return weights

    def at_labels(self, class_values: Tensor) -> Tensor:
        """Return each voxel's entry of ``(K,)`` or per-sample ``(B, K)`` class values, ``(B, *spatial)``.

        For an index target. Ignored voxels get any value, so callers mask them. Once a loss has built the one-hot
        :attr:`target`, a batched product with it measured about twice as fast on CPU as a ``gather``, and ``gather``
        along the flattened voxels about three times as fast as indexing ``class_values[labels]``.
        """
        labels = self._labels.reshape(self._labels.shape[0], -1)
        table = class_values.expand(labels.shape[0], -1) if class_values.ndim == 1 else class_values
        if "target" in self.__dict__:
            one_hot = self.target.reshape(*self.target.shape[:2], -1)
            return torch.bmm(table.to(one_hot.dtype).unsqueeze(1), one_hot).view_as(self._labels)
        return table.gather(1, labels).view_as(self._labels)

    def voxel_weights(self, class_weights: Tensor | None) -> Tensor | None:
        """``(B, *spatial)`` weight of each voxel in a pixel loss, or ``None`` when every weight is one."""
        if class_weights is None and self.include_background and self._mask is None:
            return None
        weights = self.class_weight_vector(class_weights)
        if weights is None:
            weights = torch.ones(self.num_classes, device=self.logits.device, dtype=self.logits.dtype)
        with torch.no_grad():
            if self._soft_target is None:
                voxel_weight = self.at_labels(weights)
                if self._mask is not None:
                    voxel_weight = voxel_weight * self._mask[:, 0]
            else:
                shape = (1, -1) + (1,) * (self.logits.ndim - 2)
                voxel_weight = (self._soft_target * weights.view(shape)).sum(dim=1)
        return voxel_weight

    @_differentiable_cached_property
    def target_log_probs(self) -> Tensor:
        """``(B, *spatial)`` log-probability of each voxel's target class, for an index target only.

        Ignored voxels carry the value of class 0 and must be masked by the caller.
        """
        if self.binary:
            signed = torch.where(self._labels.unsqueeze(1) == 1, self.logits, -self.logits)
            return F.logsigmoid(signed)[:, 0]
        if "log_probs" in self.__dict__:
            # A loss that has already computed the log-softmax gathers from it, so one backward pass serves both.
            return self.log_probs.gather(1, self._labels.unsqueeze(1))[:, 0]
        # One softmax pass with a two-pass backward, faster on CPU than a gather from the log-softmax or
        # F.cross_entropy(reduction="none").
        return target_log_softmax(self.logits, self._labels)

    def weighted_target_terms(self, term: Callable[[Tensor], Tensor], class_weights: Tensor | None) -> Tensor:
        """Return ``sum_c w_c t_nc term(log p_nc)`` for every voxel ``n``, shape ``(B, *spatial)``.

        ``term`` maps log-probabilities to a per-class loss elementwise (``-log_p`` gives cross-entropy).
        ``class_weights`` is ``(K,)`` or per sample ``(B, K)``. The background weight is zeroed when excluded, and
        ignored voxels give 0. An index target evaluates ``term`` at the target class only.
        """
        weights = self.class_weight_vector(class_weights)
        if self._soft_target is None:
            values = term(self.target_log_probs)
            if weights is not None:
                values = values * self.at_labels(weights)
            if self._mask is not None:
                values = values * self._mask[:, 0]
            return values
        values = term(self.log_probs) * self.target
        if weights is not None:
            values = values * weights.reshape(weights.shape[0] if weights.ndim == 2 else 1, -1, *self.ones_spatial)
        return values.sum(dim=1)

    @property
    def ones_spatial(self) -> tuple[int, ...]:
        """Singleton sizes that broadcast a ``(B, K)`` tensor over the spatial dimensions."""
        return (1,) * (self.logits.ndim - 2)

    @property
    def has_index_target(self) -> bool:
        """``True`` when the target was given as class indices rather than one-hot or soft probabilities."""
        return self._labels is not None

    def class_sums(self, squared: bool = False, batch: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """Return the soft intersection, prediction sum and target sum per class, each ``(B, K)`` or ``(1, K)``.

        These are ``sum(p * t)``, ``sum(p)`` and ``sum(t)`` over the voxels in the loss, from which the region
        losses derive false positives (``sum(p) - intersection``) and false negatives (``sum(t) - intersection``).
        ``squared=True`` returns ``sum(p ** 2)`` and ``sum(t ** 2)`` as the two sums (the V-Net denominator).
        ``batch=True`` sums over the batch too, and in distributed training over the batches of every process.
        """
        sums, _ = self._region_sums(squared, batch, with_target_log_probs=False)
        return sums

    def class_sums_and_target_log_probs(self, batch: bool = False) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
        """Return :meth:`class_sums` and :attr:`target_log_probs` from one fused softmax pass.

        For a softmax (``C >= 2``) with an index target. The second result is ``(B, *spatial)`` and per sample
        whatever ``batch`` is. Its ignored voxels carry the value of class 0 without gradient, so the caller must
        leave them out.
        """
        return self._region_sums(squared=False, batch=batch, with_target_log_probs=True)

    def _region_sums(
        self, squared: bool, batch: bool, with_target_log_probs: bool
    ) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor | None]:
        target = self.target
        dims = self.spatial_dims
        if squared and self._soft_target is not None:
            target_sum = (target * target).sum(dim=dims)
        else:
            # A one-hot target equals its square.
            target_sum = self.target_volumes
        target_log_probs = None
        if self.binary:
            probs = self.probs
            # The target is already zero at ignored voxels, so only the prediction sums need the mask.
            intersection = (probs * target).sum(dim=dims)
            if self._mask is not None:
                probs = probs * self._mask
            prediction_sum = (probs * probs).sum(dim=dims) if squared else probs.sum(dim=dims)
        else:
            terms = [("target", "p"), ("mask", "p_squared" if squared else "p")]
            labels = self._labels if with_target_log_probs else None
            sums, target_log_probs = softmax_class_sums(self.logits, target, self._mask, terms, labels)
            intersection, prediction_sum = sums.unbind()
        if batch:
            intersection, prediction_sum, target_sum = pool_batch_sums(intersection, prediction_sum, target_sum)
        return (intersection, prediction_sum, target_sum), target_log_probs

    def softmax_sums(self, terms: Sequence[tuple[str, str]], batch: bool = False) -> Tensor:
        """Return per-class sums of softmax quantities, shape ``(len(terms), B, K)``, in one fused pass.

        ``terms`` pairs a weight (``"target"``, ``"mask"`` or ``"nontarget"``) with a value (``"log_p"``, ``"p"``,
        ``"p_squared"`` or ``"log_1mp"``), as in :func:`~scripts.losses.fused.softmax_class_sums`. Softmax
        (``C >= 2``) only.
        ``batch=True`` sums over the batch too, shape ``(len(terms), 1, K)``, and in distributed training over
        the batches of every process.
        """
        # Index labels let a target-weighted log p be taken at the target class only.
        sums, _ = softmax_class_sums(self.logits, self.target, self._mask, terms, self._labels)
        if batch:
            sums = sum_across_ranks(sums.sum(dim=1, keepdim=True))
        return sums

    def softmax_sums_and_target_log_probs(self, terms: Sequence[tuple[str, str]]) -> tuple[Tensor, Tensor, Tensor]:
        """Return the per-sample :meth:`softmax_sums`, :attr:`target_log_probs` and the target probabilities (without
        gradient) from one fused softmax pass.

        For a softmax (``C >= 2``) with an index target. The target log-probabilities carry the value of class 0
        without gradient at ignored voxels, so the caller must leave those out.
        """
        if self._labels is None or self.binary:
            raise ValueError("softmax_sums_and_target_log_probs needs a softmax over C >= 2 and an index target.")
        return softmax_class_sums(self.logits, self.target, self._mask, terms, self._labels, with_target_probs=True)

    def intersection_sums(self, values: Tensor) -> Tensor:
        """Return ``sum_n t_nc v_nc`` per class for ``(B, K, *spatial)`` values, the intersection for ``v = p``.

        Ignored voxels have an all-zero target and drop out.
        """
        return (values * self.target).sum(dim=self.spatial_dims)

    @functools.cached_property
    def target_volumes(self) -> Tensor:
        """``(B, K)`` number of voxels of each class in the loss (soft target: summed probabilities)."""
        with torch.no_grad():
            return self.target.sum(dim=self.spatial_dims)

    def voxel_count(self, batch: bool = False) -> Tensor:
        """Number of voxels in the loss of each sample, shape ``(B,)``, or of the whole batch, shape ``(1,)``."""
        if self._mask is None:
            per_sample = math.prod(self.logits.shape[2:])
            count = torch.full((self.logits.shape[0],), float(per_sample), device=self.logits.device)
        else:
            count = self._mask.flatten(start_dim=1).sum(dim=1)
        count = count.to(self.logits.dtype)
        return count.sum().reshape(1) if batch else count

    def voxel_mean(self, values: Tensor, batch: bool = False) -> Tensor:
        """Average ``(B, K, *spatial)`` values over the voxels in the loss, giving ``(B, K)`` or ``(1, K)``.

        ``batch=True`` averages over the batch too, and in distributed training over the batches of every process.
        """
        dims = self.spatial_dims
        if batch:
            dims = (0, *dims)
            if pooling_across_ranks():
                return self._voxel_mean_across_ranks(values, dims)
        if self._mask is None:
            mean = values.mean(dim=dims)
        else:
            total = (values * self._mask).sum(dim=dims)
            count = self._mask.expand_as(values[:, :1]).sum(dim=dims)
            mean = total / count.clamp_min(1.0)
        return mean.reshape(-1, values.shape[1])

    def _voxel_mean_across_ranks(self, values: Tensor, dims: tuple[int, ...]) -> Tensor:
        if self._mask is None:
            total = values.sum(dim=dims)
            count = total.new_full((1,), float(values[:, 0].numel()))
        else:
            total = (values * self._mask).sum(dim=dims)
            count = self._mask.expand_as(values[:, :1]).sum(dim=dims).to(total.dtype)
        pooled = sum_across_ranks(torch.cat([total, count]))
        return (pooled[:-1] / pooled[-1].clamp_min(1.0)).reshape(1, values.shape[1])


def pool_batch_sums(*sums: Tensor) -> tuple[Tensor, ...]:
    """Sum ``(B, K)`` tensors over the batch, to ``(1, K)``, and in distributed training over every process.

    All the tensors travel in one collective.
    """
    pooled = torch.stack(sums).sum(dim=1, keepdim=True)
    return tuple(sum_across_ranks(pooled).unbind())


def check_logits(logits: Tensor) -> None:
    """Raise ``ValueError`` unless ``logits`` is a finite floating tensor of shape ``(B, C, *spatial)``."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}.")
    if logits.ndim < 3:
        raise ValueError(
            f"logits must have shape (B, C, *spatial) with at least one spatial dimension, got {tuple(logits.shape)}."
        )
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}.")
    if 0 in logits.shape:
        raise ValueError(f"logits must not be empty, got shape {tuple(logits.shape)}.")
    # One reduction is cheaper than an elementwise isfinite; a huge but finite sum is re-checked exactly.
    if not torch.isfinite(logits.detach().sum()) and not torch.isfinite(logits.detach()).all():
        bad = logits.detach()[~torch.isfinite(logits.detach())]
        raise ValueError(
            f"logits contain {count(bad.numel(), 'non-finite value')} (first: {bad[0].item()}); the network "
            "diverged or its input contains NaN/inf. Lower the learning rate or check the input images."
        )


def is_real_number(value: Any) -> bool:
    """Return whether ``value`` is a real number; booleans, although integers in Python, are not."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def require_real(name: str, value: Any) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming the hyperparameter when it is not a real number.

    Booleans and strings (a YAML value in quotes, a command-line override) are rejected rather than converted.
    """
    if not is_real_number(value):
        raise ValueError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}.")
    return float(value)


def check_number(
    name: str, value: Any, low: float = -math.inf, high: float = math.inf, low_open: bool = False
) -> float:
    """Return the hyperparameter ``value`` as a float, or raise ``ValueError`` naming it unless it is in range.

    The range is ``[low, high]``, or ``(low, high]`` with ``low_open=True``, and the value must be finite.
    """
    if high == math.inf:
        expected = f"{'>' if low_open else '>='} {low:g}"
    else:
        expected = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    number = float(value) if is_real_number(value) else None
    if number is None or not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        raise ValueError(f"{name} must be a finite number {expected}, got {value!r}.")
    return number


def reduce_loss(per_sample: Tensor, reduction: str) -> Tensor:
    """Reduce the per-sample losses with ``"mean"``, ``"sum"`` or ``"none"``."""
    if reduction == "mean":
        return per_sample.mean()
    if reduction == "sum":
        return per_sample.sum()
    return per_sample


def log1mexp(log_p: Tensor) -> Tensor:
    """Compute ``log(1 - exp(log_p))`` for ``log_p <= 0`` from the log-probability, without cancellation.

    Used for ``log(1 - p)`` of a softmax probability. ``expm1`` gives ``1 - p`` to full relative precision however
    close ``p`` is to 1, so the value stays finite and keeps its gradient where ``log1p(-p)`` of a float32 ``p`` would
    give ``-inf``. Only when ``log_p`` itself rounds to 0 (a logit gap above about 100 in float32) is ``1 - p`` clamped
    to the smallest normal number, with zero gradient. Maechler's two-branch form ("Accurately computing
    log(1 - exp(-|a|))") is more accurate for ``p`` near 0, by an absolute error below 1e-7, at twice the cost.
    """
    return torch.log((-torch.expm1(log_p.clamp_max(0.0))).clamp_min(torch.finfo(log_p.dtype).tiny))


def _plain_tensor(value: Tensor) -> Tensor:
    # MONAI's MetaTensor tracks metadata through every operation, which costs time in a loss.
    if isinstance(value, Tensor) and type(value) is not Tensor and hasattr(value, "as_tensor"):
        return value.as_tensor()
    return value


def _prepare_target(
    logits: Tensor, target: Tensor, ignore_index: int | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Validate ``target`` and return ``(labels, soft_target, mask)``; exactly one of the first two is set."""
    if not isinstance(target, Tensor):
        raise ValueError(f"target must be a torch.Tensor, got {type(target).__name__}.")
    channels = logits.shape[1]
    expected_index = (logits.shape[0], 1, *logits.shape[2:])
    expected_one_hot = tuple(logits.shape)
    shape = tuple(target.shape)
    if target.device != logits.device:
        raise ValueError(f"target is on {target.device} but logits are on {logits.device}; move both to one device.")

    # With one channel the two forms coincide: an integer (or ignore-carrying) target is read as indices, a
    # float target as a soft foreground probability.
    if shape == expected_index and (channels > 1 or ignore_index is not None or not target.is_floating_point()):
        return _index_target(target, channels, ignore_index)
    if shape == expected_one_hot:
        return _soft_target(target, channels, ignore_index)
    raise ValueError(
        f"target shape {shape} does not match logits shape {expected_one_hot}: expected class indices of shape "
        f"{expected_index} or a one-hot/soft target of shape {expected_one_hot}."
    )


def _index_target(target: Tensor, channels: int, ignore_index: int | None) -> tuple[Tensor, None, Tensor | None]:
    """Validate an index target and return ``(labels, None, mask)``."""
    num_classes = max(channels, 2)
    with torch.no_grad():
        labels = target.detach()[:, 0]
        if labels.is_floating_point():
            if not torch.isfinite(labels).all() or (labels != labels.round()).any():
                bad = labels[~torch.isfinite(labels) | (labels != labels.round())][0].item()
                raise ValueError(
                    f"target contains the non-integer label {bad}; pass class indices (0 to {num_classes - 1}) "
                    "or a one-hot target with one channel per class."
                )
        labels = labels.long()

        low, high = torch.aminmax(labels)
        out_of_range = bool(low < 0) or bool(high >= num_classes)
        ignored = labels == ignore_index if ignore_index is not None else None
        if out_of_range:
            invalid = (labels < 0) | (labels >= num_classes)
            if ignored is not None:
                invalid &= ~ignored
            if invalid.any():
                bad = labels[invalid][0].item()
                hint = f" or the ignore_index {ignore_index}" if ignore_index is not None else ""
                raise ValueError(
                    f"target contains the label {bad}, outside the classes 0 to {num_classes - 1}{hint}. Check that "
                    "the network's output channels match the dataset's labels, or set ignore_index for unlabelled "
                    "voxels."
                )
        if ignored is None or not bool(ignored.any()):
            return labels, None, None
        mask = (~ignored).unsqueeze(1).float()
        labels = labels.masked_fill(ignored, 0)
    return labels, None, mask


def _soft_target(target: Tensor, channels: int, ignore_index: int | None) -> tuple[None, Tensor, Tensor | None]:
    """Validate a one-hot or soft target and return ``(None, target, mask)``."""
    with torch.no_grad():
        soft = target.detach().to(torch.float64 if target.dtype == torch.float64 else torch.float32)
        low, high = torch.aminmax(soft)
        if not (torch.isfinite(low) and torch.isfinite(high)) or low < 0 or high > 1:
            # Adding 0.0 prints a negative zero as 0.0.
            raise ValueError(
                f"a one-hot or soft target must hold values in [0, 1], got values from {low.item() + 0.0} to "
                f"{high.item() + 0.0}; pass class indices with one channel instead."
            )
        if channels == 1:
            return None, torch.cat([1.0 - soft, soft], dim=1), None
        row_sum = soft.sum(dim=1, keepdim=True)
        # Rounding of the target's own dtype, summed over the channels, with a floor for float32 arithmetic.
        tolerance = max(1e-3, 8.0 * torch.finfo(target.dtype).eps * channels)
        off = (row_sum - 1.0).abs() > tolerance
        if ignore_index is not None:
            off &= row_sum != 0
        if bool(off.any()):
            position = tuple(int(index) for index in off.nonzero()[0])
            sample, voxel = position[0], position[2:]
            hint = "" if ignore_index is not None else " (all zero marks an ignored voxel only with ignore_index)"
            raise ValueError(
                f"a one-hot or soft target must sum to 1 over its {channels} channels at every voxel, but it sums "
                f"to {row_sum[position].item():.6g} in sample {sample} at voxel {voxel}{hint}. Normalise the "
                "target over the channels, or pass class indices with one channel instead."
            )
        mask = None
        if ignore_index is not None and bool((row_sum == 0).any()):
            mask = (row_sum > 0).float()
    return None, soft, mask


def _record_hyperparameters(init):
    """Wrap a loss ``__init__`` so the outermost call stores its bound arguments, defaults included."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args: Any, **kwargs: Any) -> None:
        if "_hyperparameters" not in self.__dict__:
            bound = signature.bind(self, *args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            arguments.pop("self")
            arguments.update(arguments.pop("kwargs", {}) or {})
            object.__setattr__(self, "_hyperparameters", arguments)
        init(self, *args, **kwargs)

    return wrapper
