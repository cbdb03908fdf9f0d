"""Robust T-loss: the negative log-likelihood of a multivariate Student-t on the prediction residuals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..base import SegmentationInputs, SegmentationLoss, as_bool, require_real
from ..distributed import sum_across_ranks
from ..registry import register_loss

# nu_tilde is clamped to this range in the forward pass (nu from about 4.5e-5 to 4.9e8). The likelihood grows
# without bound as nu -> 0, so the lower end only guards against a bad start. At the upper end the gradient on the
# residuals equals that of the squared error within e D / nu, under 0.6% for D up to 10^6. Far above it, near
# nu_tilde = 40, the lgamma terms reach 10^18 and their difference keeps only about three float64 digits.
NU_TILDE_RANGE = (-10.0, 20.0)


@register_loss(
    "robust_t",
    family="region",
    paper="Gonzalez-Jimenez et al., Robust T-Loss for Medical Image Segmentation, MICCAI 2023",
    arxiv="2306.00753",
)
class RobustTLoss(SegmentationLoss):
    r"""Robust T-loss: the negative log-likelihood of the residuals under a multivariate Student-t with learned nu.

    For one class channel with ``D`` voxels, residuals :math:`\delta = p - t` and a diagonal precision
    :math:`\Lambda = \mathrm{diag}(e^{\lambda})`,

    .. math:: L = -\ln\Gamma\Big(\frac{\nu + D}{2}\Big) + \ln\Gamma\Big(\frac{\nu}{2}\Big)
              - \frac12 \sum_i \lambda_i + \frac{D}{2} \ln \pi + \frac{D}{2} \ln \nu
              + \frac{\nu + D}{2} \ln\Big(1 + \frac{1}{\nu} \sum_i e^{\lambda_i} \delta_i^2\Big)

    with :math:`\nu = e^{\tilde\nu} + \epsilon`. :math:`\tilde\nu` (``nu_tilde``) is an ``nn.Parameter``,
    initialised to 1 as by Gonzalez-Jimenez et al., so **the loss has a trainable parameter**: pass
    ``loss.parameters()`` to the optimizer along with the network's. ``nu`` returns its current value for
    logging. :math:`\lambda` is fixed to ``log_precision`` for every voxel, as in the authors' code (a tensor of
    ones). ``D`` is the number of valid voxels of the sample, read from the input and the ignore mask.

    Probabilities come from the softmax (sigmoid for one channel). Each class channel is its own multivariate
    Student-t with ``D`` = voxels, sharing one nu; the channels are averaged with the class weights, so
    ``include_background`` and ``class_weights`` act as for the other region losses. With one sigmoid channel
    this is exactly the paper's binary loss, and a two-channel softmax gives the same value. The joint form over
    all ``K`` channels (``D = K`` x voxels) was not chosen because it would leave the class options without a
    meaning. ``batch=True`` treats the whole batch as one vector (``D`` = all voxels of the batch).

    Scale: the raw value grows like ``D``, about 10^5 to 10^6 for a 3D patch. ``normalize=True`` (the default)
    divides it by ``D``, so the loss is a per-voxel quantity of order 1 like cross-entropy and Dice, can be added
    to them and does not change scale with the patch size. For large ``D`` the normalised value approaches
    ``(1/2) ln(2 pi e MSE)``, where MSE is the mean squared residual, up to terms of order ``nu / D``. Dividing
    by ``D`` also divides the gradient on ``nu_tilde`` by ``D``: under SGD nu then learns ``D`` times more slowly
    than with the raw value; Adam rescales each parameter's step and largely removes that difference.
    ``normalize=False`` gives the authors' raw value.

    Numerics: ``D`` reaches 10^6 in 3D, where ``lnGamma((nu + D) / 2)`` is about 6 x 10^6. In float32 the
    rounding of such terms moves the raw value by about 1 and the gradient on ``nu_tilde``, a difference of
    terms of order ``D / nu``, by about 0.5% (measured at ``D = 10^6``), so every scalar term, from the summed
    squared residuals on, is computed in float64.
    ``nu_tilde`` is clamped to ``NU_TILDE_RANGE`` (-10, 20) in the forward pass; outside it the gradient on
    ``nu_tilde`` is 0.

    Differences from the survey and the code: the survey (eq. 22) says a low nu behaves like MSE and a high nu
    like MAE. That is backwards: as nu grows the Student-t tends to the Gaussian, whose likelihood gives MSE,
    and a small nu gives heavy tails that down-weight large residuals. The authors' code reads ``D`` from the
    configured square image size, writes ``(D/2) ln(nu)`` as ``(D/2) (nu_tilde + eps)`` and adds ``eps`` to
    lambda; here ``D`` comes from the input and the formula is the paper's, which differs by less than 1e-8
    per voxel.

    Pitfalls: weight decay on ``nu_tilde`` pulls nu towards 1, so the bundle's optimizer puts the loss parameters
    in a group without decay (``scripts.engine.trainable_parameters``). In a distributed training the multi-GPU
    overlay wraps the loss with the network in ``DistributedDataParallel``, which averages its gradient too.

    Args:
        include_background: average over class 0 too or over the foreground classes only. With a sigmoid (one
            channel) the loss uses the foreground alone.
        class_weights: weights of the class average, length ``num_classes``.
        ignore_index: label of voxels to leave out; ``D`` counts the remaining voxels.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: treat the residuals of the whole batch as one vector.
        nu_tilde_init: initial value of ``nu_tilde``, within ``NU_TILDE_RANGE``.
        log_precision: ``lambda``, the log-precision of every voxel.
        epsilon: added to ``exp(nu_tilde)`` to keep nu positive.
        normalize: divide the value by ``D``.

    Example:
        >>> network = torch.nn.Conv3d(1, 3, kernel_size=3, padding=1)
        >>> loss = RobustTLoss()
        >>> optimizer = torch.optim.Adam([*network.parameters(), *loss.parameters()], lr=1e-4)
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        nu_tilde_init: float = 1.0,
        log_precision: float = 1.0,
        epsilon: float = 1e-8,
        normalize: bool = True,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        low, high = NU_TILDE_RANGE
        if not low <= require_real("nu_tilde_init", nu_tilde_init) <= high:
            raise ValueError(
                f"nu_tilde_init must lie in [{low}, {high}] (nu = exp(nu_tilde) from {math.exp(low):.2g} to "
                f"{math.exp(high):.2g}), got {nu_tilde_init}."
            )
        if not math.isfinite(require_real("log_precision", log_precision)):
            raise ValueError(f"log_precision must be a finite number, got {log_precision}.")
        if not require_real("epsilon", epsilon) >= 0.0 or not math.isfinite(epsilon):
            raise ValueError(f"epsilon must be a non-negative finite number, got {epsilon}.")
        self.nu_tilde = nn.Parameter(torch.tensor(float(nu_tilde_init)))
        self.log_precision = float(log_precision)
        self.epsilon = float(epsilon)
        self.normalize = as_bool("normalize", normalize)

    @property
    def nu(self) -> float:
        """The current degrees of freedom ``exp(nu_tilde) + epsilon``, with ``nu_tilde`` clamped as in forward."""
        return math.exp(min(max(self.nu_tilde.item(), NU_TILDE_RANGE[0]), NU_TILDE_RANGE[1])) + self.epsilon

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        residual = inputs.probs - inputs.target
        if inputs.mask is not None:
            residual = residual * inputs.mask
        # PyTorch sums float32 pairwise (relative error about 1e-7 for 1e6 terms); a float64 sum would copy the
        # whole tensor to float64.
        squared = (residual * residual).sum(dim=inputs.spatial_dims).double()
        if inputs.mask is None:
            voxels = torch.full_like(squared[:, :1], math.prod(residual.shape[2:]))
        else:
            voxels = inputs.mask.sum(dim=inputs.spatial_dims, dtype=torch.float64)
        if self.batch:
            squared = sum_across_ranks(squared.sum(dim=0, keepdim=True))
            voxels = sum_across_ranks(voxels.sum(dim=0, keepdim=True))

        nu_tilde = self.nu_tilde.to(device=squared.device, dtype=torch.float64).clamp(*NU_TILDE_RANGE)
        nu = torch.exp(nu_tilde) + self.epsilon
        log_precision = self.log_precision
        class_loss = (
            torch.lgamma(nu / 2.0)
            - torch.lgamma((nu + voxels) / 2.0)
            + voxels / 2.0 * (math.log(math.pi) + torch.log(nu) - log_precision)
            + (nu + voxels) / 2.0 * torch.log1p(math.exp(log_precision) * squared / nu)
        )
        if self.normalize:
            class_loss = class_loss / voxels.clamp_min(1.0)
        return self.average_classes(class_loss, inputs).to(inputs.logits.dtype)
