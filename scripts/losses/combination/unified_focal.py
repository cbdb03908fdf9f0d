"""Asymmetric unified focal loss: an asymmetric focal term plus an asymmetric focal Tversky term."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, check_number, pool_batch_sums
from ..fused import focal_cross_entropy_sum
from ..pixel.focal import focal_modulation
from ..region.tversky import focal_tversky_term, tversky_index
from ..registry import register_loss


@register_loss(
    "unified_focal",
    family="combination",
    paper="Yeung, Sala, Schoenlieb, Rundo, Unified Focal loss: generalising Dice and cross entropy-based losses "
    "to handle class imbalanced medical image segmentation, CMIG 95 (2022)",
    arxiv="2102.04525",
)
class UnifiedFocalLoss(SegmentationLoss):
    r"""Asymmetric unified focal loss: focal suppression of the background, focal enhancement of the rare classes.

    For each class ``c`` (class 0 is the background, every other class is "rare"):

    .. math:: F_0 = \frac{1}{N} \sum_n -(1 - \delta) (1 - p_{n0})^{\gamma} \, t_{n0} \log p_{n0}, \qquad
              F_c = \frac{1}{N} \sum_n -\delta \, t_{nc} \log p_{nc}

    .. math:: T_0 = 1 - mTI_0, \qquad T_c = (1 - mTI_c)^{1 - \gamma}, \qquad
              mTI_c = \frac{I_c + s_{nr}}{I_c + \delta \, FN_c + (1 - \delta) FP_c + s_{dr}}

    .. math:: L = \frac{1}{|K|} \sum_{c \in K} \big[\lambda F_c + (1 - \lambda) T_c\big]

    The focal term suppresses the easy background voxels (``(1 - p)^gamma``) but keeps the full cross-entropy
    of the rare classes. The focal Tversky term raises the rare classes' Tversky loss to ``1 - gamma < 1``, which
    enlarges small losses, while the background keeps the plain Tversky loss. ``delta > 0.5`` weighs the rare
    classes and their false negatives more. With one sigmoid channel the two classes are the background and the
    foreground. The defaults are those of the authors' code: ``weight`` (lambda) 0.5, ``delta`` 0.6, ``gamma`` 0.5.

    Built from the shared pieces of :class:`FocalLoss` (``focal_modulation``) and :class:`TverskyLoss`
    (``tversky_index`` with ``alpha = 1 - delta`` on false positives and ``beta = delta`` on false negatives, and
    the bounded power of the focal Tversky loss).

    Reduction over classes: the authors' code sums the focal term over classes but averages the Tversky term,
    and MONAI 1.6.1's ``AsymmetricUnifiedFocalLoss`` averages both.
    We average both, as MONAI, so the two terms keep the scale of their per-class parts whatever the number of
    classes, and the loss equals MONAI's at two classes (probabilities from a softmax or sigmoid, equal
    smoothing), the only case MONAI 1.6.1 supports. The authors' value is ``lambda * sum_c F_c + (1 - lambda) *
    mean_c T_c`` (their code also swaps the roles of ``lambda`` and ``1 - lambda``, which is the same at 0.5).

    Choices: ``log p`` comes from the log-softmax (MONAI and the authors clamp ``p`` to ``[1e-7, 1 - 1e-7]``),
    and the power ``(1 - mTI)^(1 - gamma)`` is bounded at ``mTI = 1`` (a perfectly segmented class), where its
    slope is unbounded. The symmetric variant of the authors' code (every class modulated) is not implemented.
    ``include_background=False`` drops the background terms ``F_0`` and ``T_0``, which removes the asymmetry's
    background half, and ``class_weights`` weigh the class average.

    Args:
        include_background: keep the background terms (and, with one sigmoid channel, the background class).
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out of both terms.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: pool the batch for the Tversky sums and the voxel means.
        weight: lambda, the weight of the focal term in ``[0, 1]``. ``1 - weight`` weighs the focal Tversky term.
        delta: weight of the rare classes and of false negatives, in ``[0, 1]``.
        gamma: focal parameter in ``[0, 1]``: background suppression ``(1 - p)^gamma`` and rare-class enhancement
            ``(1 - mTI)^(1 - gamma)``.
        smooth_nr: added to the numerator of the Tversky index.
        smooth_dr: added to the denominator of the Tversky index.
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        weight: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        self.weight = check_number("weight", weight, low=0.0, high=1.0)
        self.delta = check_number("delta", delta, low=0.0, high=1.0)
        self.gamma = check_number("gamma", gamma, low=0.0, high=1.0)
        self.smooth_nr = check_number("smooth_nr", smooth_nr, low=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        if inputs.binary or not inputs.has_index_target:
            focal = self.focal_terms(inputs)
            class_sums = inputs.class_sums(batch=self.batch)
        else:
            focal, class_sums = self._fused_terms(inputs)
        class_loss = self.weight * focal + (1.0 - self.weight) * self.focal_tversky_terms(class_sums)
        classes = slice(0 if self.include_background else 1, None)
        return self.average_classes(class_loss, inputs, classes=classes)

    def focal_terms(self, inputs: SegmentationInputs) -> Tensor:
        """Return the asymmetric focal term ``F_c`` of every class, shape ``(B, K)`` or ``(1, K)``."""
        log_probs = inputs.log_probs
        cross_entropy = inputs.intersection_sums(-log_probs)
        # Only the background is modulated, so the focal factor is computed on its channel alone.
        background_log_probs = log_probs[:, 0]
        modulated = focal_modulation(background_log_probs, self.gamma) * -background_log_probs
        background = (inputs.target[:, 0] * modulated).flatten(start_dim=1).sum(dim=1, keepdim=True)
        return self._focal_means(torch.cat([background, cross_entropy[:, 1:]], dim=1), inputs)

    def _fused_terms(self, inputs: SegmentationInputs) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Return ``F_c`` and the Tversky class sums from one fused softmax pass (softmax, index target)."""
        sums, target_log_probs, target_probs = inputs.softmax_sums_and_target_log_probs(
            [("target", "p"), ("mask", "p"), ("target", "log_p")]
        )
        intersection, prediction_sum, target_log_sums = sums.unbind()
        class_sums = (intersection, prediction_sum, inputs.target_volumes)
        if self.batch:
            class_sums = pool_batch_sums(*class_sums)
        # The background's cross-entropy is modulated voxel by voxel, and the rare classes' is the plain class sum.
        background = focal_cross_entropy_sum(target_log_probs, inputs.target[:, 0], self.gamma, target_probs)
        class_totals = torch.cat([background.unsqueeze(1), -target_log_sums[:, 1:]], dim=1)
        return self._focal_means(class_totals, inputs), class_sums

    def _focal_means(self, class_totals: Tensor, inputs: SegmentationInputs) -> Tensor:
        """Weigh the per-class sums by ``1 - delta`` (background) and ``delta`` (rare), and divide by ``N``."""
        weights = torch.full_like(class_totals[:1], self.delta)
        weights[:, 0] = 1.0 - self.delta
        sums = class_totals * weights
        counts = inputs.voxel_count().unsqueeze(1)
        if self.batch:
            (sums,) = pool_batch_sums(sums)
            (counts,) = pool_batch_sums(counts)
        return sums / counts.clamp_min(1.0)

    def focal_tversky_terms(self, class_sums: tuple[Tensor, ...]) -> Tensor:
        """Return the asymmetric focal Tversky term ``T_c`` of every class, shape ``(B, K)`` or ``(1, K)``."""
        index = tversky_index(
            *class_sums,
            alpha=1.0 - self.delta,
            beta=self.delta,
            smooth_nr=self.smooth_nr,
            smooth_dr=self.smooth_dr,
        )
        background = 1.0 - index[:, :1]
        rare = focal_tversky_term(index[:, 1:], 1.0 - self.gamma)
        return torch.cat([background, rare], dim=1)
