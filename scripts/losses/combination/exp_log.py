"""Exponential logarithmic loss: powers of the log-Dice and of the log-likelihood, for very unequal object sizes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, check_number, pool_batch_sums
from ..distributed import sum_across_ranks
from ..fused import powered_cross_entropy_sum
from ..powers import bounded_power
from ..region.dice import soft_dice
from ..registry import register_loss


@register_loss(
    "exp_log",
    family="combination",
    paper="Wong, Moradi, Tang, Syeda-Mahmood, 3D segmentation with exponential logarithmic loss for highly "
    "unbalanced object sizes, MICCAI 2018",
    arxiv="1809.00076",
)
class ExpLogLoss(SegmentationLoss):
    r"""Exponential logarithmic loss: a weighted sum of a log-Dice term and a log-likelihood term, each to a power.

    .. math:: L = w_{dice} \frac{1}{|K|} \sum_{c \in K} \big(-\ln DSC_c\big)^{\gamma_{dice}}
              + w_{cross} \frac{1}{N} \sum_n w_{y_n} \big(-\ln p_{n y_n}\big)^{\gamma_{cross}}, \qquad
              w_l = \Big(\frac{\sum_k f_k}{f_l}\Big)^{1/2}

    with ``DSC_c = (2 sum p t + s_nr) / (sum p + sum t + s_dr)`` the soft Dice of class ``c`` (linear
    denominator, as in the paper), ``N`` the voxels in the loss and ``f_k`` the frequency of label ``k``. With
    ``gamma < 1`` the powers flatten large losses and steepen small ones, so poorly and well segmented classes,
    and small and large structures, contribute more evenly (the paper's 3D brain MRI has 20 labels of very
    unequal volume). The defaults are the paper's: ``gamma_dice = gamma_cross = 0.3``, ``w_dice = 0.8``,
    ``w_cross = 0.2``.

    Differences and choices:

    * The survey (Azad et al., eq. 33-35) takes the logarithm of the Dice and cross-entropy *losses*. Since
      ``-log x`` falls as ``x`` grows, minimising that would raise the Dice loss. We follow Wong et al.: the
      logarithm of the Dice coefficient and of the target-class probability.
    * Label frequencies: ``label_frequencies`` takes fixed dataset-level frequencies (counts or fractions, one
      per class), the paper's choice. Without it, the frequencies are the target volumes of each sample (of the
      whole batch with ``batch=True``), which needs no preprocessing but makes ``w_l`` vary between batches. A
      class absent from a sample gets the weight of a one-voxel class, which no voxel uses.
    * ``class_weights`` multiply ``w_l`` in the cross term and weigh the class average of the Dice term.
      ``include_background=False`` removes the background from both terms (background voxels then add zero but
      still count in ``N``).
    * Clamps: the slope of ``x^0.3`` is unbounded at ``x = 0``, reached by a perfectly segmented class
      (``DSC = 1``) or a certain voxel (``p = 1``), so both powers are bounded as in :func:`bounded_power`. The
      Dice is also kept above the smallest positive float before its logarithm, which only matters with
      ``smooth_nr=0``. Wong et al. smooth the Dice with an additive pseudocount, and the default here is the
      library's ``1e-5``.

    Args:
        include_background: take class 0 into both terms.
        class_weights: per-class weights of both terms, length ``num_classes``.
        ignore_index: label of voxels to leave out of both terms.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: pool the batch for the Dice sums, the voxel mean and the label frequencies.
        gamma_dice: exponent of the log-Dice term, ``> 0``.
        gamma_cross: exponent of the log-likelihood term, ``> 0``.
        w_dice: weight of the Dice term, ``>= 0``.
        w_cross: weight of the cross term, ``>= 0``.
        label_frequencies: fixed frequency of every class (length ``num_classes``, all positive), or ``None`` for
            the frequencies of each sample (each batch with ``batch=True``).
        smooth_nr: added to the Dice numerator.
        smooth_dr: added to the Dice denominator.
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        gamma_dice: float = 0.3,
        gamma_cross: float = 0.3,
        w_dice: float = 0.8,
        w_cross: float = 0.2,
        label_frequencies: Sequence[float] | None = None,
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
        self.gamma_dice = check_number("gamma_dice", gamma_dice, low=0.0, low_open=True)
        self.gamma_cross = check_number("gamma_cross", gamma_cross, low=0.0, low_open=True)
        self.w_dice = check_number("w_dice", w_dice, low=0.0)
        self.w_cross = check_number("w_cross", w_cross, low=0.0)
        if self.w_dice + self.w_cross == 0.0:
            raise ValueError("w_dice and w_cross are both 0, so the loss would be constant. Make one positive.")
        self.smooth_nr = check_number("smooth_nr", smooth_nr, low=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, low=0.0)

        frequencies = None
        if label_frequencies is not None:
            frequencies = torch.as_tensor(label_frequencies, dtype=torch.float32).flatten()
            if frequencies.numel() < 2 or not torch.isfinite(frequencies).all() or (frequencies <= 0).any():
                raise ValueError(
                    f"label_frequencies must be positive finite numbers, one per class, got {frequencies.tolist()}. "
                    "Pass the voxel count (or fraction) of every class in the training set, or None."
                )
        self.register_buffer("label_frequencies", frequencies, persistent=False)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        weights = self.frequency_weights(inputs)
        if self.class_weights is not None:
            weights = weights * self.class_weights.to(weights)
        if inputs.binary or not inputs.has_index_target:
            class_sums = inputs.class_sums(batch=self.batch)
            voxel_loss = inputs.weighted_target_terms(
                lambda log_probs: bounded_power(-log_probs, self.gamma_cross), weights
            )
            cross = self.mean_over_voxels(voxel_loss, inputs)
        else:
            class_sums, cross = self._fused_terms(inputs, weights)
        return self.w_dice * self.dice_term(class_sums, inputs) + self.w_cross * cross

    def _fused_terms(self, inputs: SegmentationInputs, weights: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        """Return the Dice class sums and the cross term from one fused softmax pass (softmax, index target)."""
        class_sums, target_log_probs = inputs.class_sums_and_target_log_probs(batch=self.batch)
        # The sum over voxels of w_l (-ln p_l)^gamma, each voxel weighted by its class (zero where ignored).
        total = powered_cross_entropy_sum(target_log_probs, inputs.voxel_weights(weights), self.gamma_cross)
        count = inputs.voxel_count()
        if self.batch:
            total, count = pool_batch_sums(total.unsqueeze(1), count.unsqueeze(1))
            total, count = total.reshape(1), count.reshape(1)
        return class_sums, total / count.clamp_min(1.0)

    def dice_term(self, class_sums: tuple[Tensor, ...], inputs: SegmentationInputs) -> Tensor:
        """Return the class mean of ``(-ln DSC_c)^gamma_dice`` per sample from the Dice class sums."""
        dice = soft_dice(*class_sums, self.smooth_nr, self.smooth_dr)
        log_dice = torch.log(dice.clamp_min(torch.finfo(dice.dtype).tiny))
        return self.average_classes(bounded_power(-log_dice, self.gamma_dice), inputs)

    def frequency_weights(self, inputs: SegmentationInputs) -> Tensor:
        """Return ``w_l = (sum_k f_k / f_l)^0.5`` from fixed, per-batch or per-sample frequencies."""
        if self.label_frequencies is not None:
            if self.label_frequencies.numel() != inputs.num_classes:
                raise ValueError(
                    f"label_frequencies has {self.label_frequencies.numel()} entries but the logits have "
                    f"{inputs.num_classes} classes. Give one frequency per class, background included."
                )
            frequencies = self.label_frequencies.to(inputs.logits)
        else:
            with torch.no_grad():
                frequencies = inputs.target_volumes
                if self.batch:
                    frequencies = sum_across_ranks(frequencies.sum(dim=0))
                frequencies = frequencies.clamp_min(1.0)
        # (K,) for fixed or batch-wide frequencies, (B, K) for per-sample ones.
        return torch.sqrt(frequencies.sum(dim=-1, keepdim=True) / frequencies)
