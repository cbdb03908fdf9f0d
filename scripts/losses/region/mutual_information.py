"""Region mutual information (RMI) loss: a lower bound on the mutual information of label and prediction patches."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..base import SegmentationInputs, SegmentationLoss, pool_batch_sums, require_real
from ..distributed import gather_across_ranks, pooling_across_ranks
from ..pixel.cross_entropy import voxel_cross_entropy
from ..registry import register_loss

POOL_MODES = ("avg", "max")
CROSS_ENTROPY_MODES = ("sigmoid", "softmax")
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


@register_loss(
    "region_mutual_information",
    family="region",
    paper="Zhao, Wang, Yang, Cai, Region Mutual Information Loss for Semantic Segmentation, NeurIPS 2019",
    arxiv="1910.12037",
)
class RegionMutualInformationLoss(SegmentationLoss):
    r"""Region mutual information loss: binary cross-entropy plus a bound on the uncertainty of label patches.

    Every voxel and its neighbours in an ``R x R`` (2D) or ``R x R x R`` (3D) window form a point of dimension
    ``d = R^2`` or ``R^3``, once for the one-hot label ``Y`` of class ``c`` and once for its sigmoid probability
    ``P``. Over the ``M`` points of a sample, with the points centred on their means,

    .. math:: \Sigma_Y = Y Y^T, \quad \Sigma_P = P P^T, \quad \Sigma_{YP} = Y P^T, \quad
              \Sigma_{Y|P} = \Sigma_Y - \Sigma_{YP} (\Sigma_P + \epsilon I)^{-1} \Sigma_{YP}^T

    :math:`\Sigma_{Y|P}` approximates the covariance of the label patches given the predicted ones, and
    :math:`-\frac12 \log\det \Sigma_{Y|P}` is a lower bound of their mutual information (up to a constant).
    The loss per sample is

    .. math:: L = \sum_{c \in K} w_c \Big[ \lambda \, \mathrm{BCE}_c
              + (1 - \lambda) \frac{1}{2d} \log\det(\Sigma_{Y|P,c} + \epsilon I) \Big]

    with :math:`\mathrm{BCE}_c` the voxel mean of the binary cross-entropy of channel ``c``, the sum over the
    classes ``K`` in the loss (class weights ``w_c``, 1 by default), ``lambda = bce_weight``. ``mean`` averages
    the samples. The defaults follow the authors' code (``ZJULearning/RMI``): ``radius=3``, ``eps=5e-4``,
    ``bce_weight=0.5``, and average pooling with kernel = stride = 4 before the windows (``script/train.sh``).

    Choices that differ from the survey or the code, and why:

    * Each channel goes through a **sigmoid**, in the BCE and in the patches, as in the paper's code: the
      network is trained as one-vs-rest per class, not as a softmax. Argmax predictions are unaffected. The BCE
      uses ``binary_cross_entropy_with_logits`` (log-sigmoid), so a confidently wrong voxel keeps its gradient.
      The code adds 1e-6 to the probabilities before the patches; a constant cancels when the points are
      centred, so it is left out.
    * The covariances are sums over points, not means, as in the code. The value therefore carries an offset of
      about ``(1/2) log M`` per class that depends on the patch size; compare runs at equal patch sizes.
    * Covariances, the triangular solve and both Cholesky factorisations run in float64 with autocast off (the
      code casts to double as well). ``eps`` keeps both matrices positive definite when a class is absent or predicted
      constant: its label patches are then constant, :math:`\Sigma_Y = 0`, and the term is the constant
      ``log(eps) / 2`` with zero gradient.
    * **Ignored voxels** cannot simply be cut out of a neighbourhood statistic. Pooling averages (or takes the
      maximum of) the valid voxels of each cell, and a point takes part only if every cell of its window holds
      a valid voxel. The code instead sets ignored pixels to label 0 and probability 0 and keeps them, which
      makes a large unlabelled region count as confident background. Here ignored voxels never change the
      value, and ignoring a slab at the far end of an axis equals cropping it; at the near end it equals
      cropping only when the slab width is a multiple of ``pool_size``, since cropping shifts the pooling grid.
      The RMI term of a sample or class without any valid point is 0.
    * Pooling cells start at the first voxel and a partial last cell averages only its real voxels; the code
      pads two zero pixels on each side and averages them in.
    * ``batch=True`` pools the points and voxels of the whole batch into one statistic per class.
    * ``cross_entropy="softmax"`` is the code's other variant (``forward_softmax_sigmoid``, commented out there):
      the BCE term becomes the softmax cross-entropy averaged over the voxels (class weights as in
      ``cross_entropy``), the RMI term keeps the sigmoid probabilities. The classes then compete for each voxel.
      With the per-class sigmoids, a network trained for a few epochs on Hippocampus had learned one sigmoid
      that fired on both hippocampus classes and left the other class almost unpredicted (``docs/losses.md``).
      With one channel both variants are the binary cross-entropy.

    3D: ``R = 3`` gives ``d = 27``, a ``27 x 27`` covariance per sample and class, and 3D pooling. The point
    vectors take ``O(M d)`` memory per sample and class, in float64; the pooling divides ``M`` by
    ``pool_size^3 = 64``, so a 128^3 patch gives about 27,000 points and 6 MB per tensor for each sample and
    class. The defaults stay those of the paper because that memory is small next to the network's; the
    covariance products cost ``O(M d^2)`` and the ``d x d`` factorisations little. Every axis needs at least
    ``(radius - 1) * pool_size + 1`` voxels (9 by default) so that one window fits; smaller inputs raise an error
    that says which options to lower.

    Args:
        include_background: include class 0 in ``K``. With a sigmoid (one channel), ``K`` is the foreground.
        class_weights: weight of each class in the sum over ``K``, length ``num_classes``.
        ignore_index: label of voxels to leave out.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: pool the points and voxels of the whole batch.
        radius: side ``R`` of the window, in pooled cells.
        pool_size: kernel and stride of the pooling before the windows; 1 turns pooling off.
        pool_mode: ``"avg"`` (the paper's training setting) or ``"max"`` (the code's class default).
        bce_weight: ``lambda``, the weight of the BCE term; ``1 - lambda`` weighs the RMI term.
        eps: added to the diagonal of :math:`\Sigma_P` and :math:`\Sigma_{Y|P}`.
        cross_entropy: ``"sigmoid"`` (the paper: a binary cross-entropy per class) or ``"softmax"`` (one
            multi-class cross-entropy, the code's ``forward_softmax_sigmoid``).

    Example:
        >>> loss = RegionMutualInformationLoss()
        >>> loss(torch.randn(2, 3, 32, 32, 32), torch.randint(0, 3, (2, 1, 32, 32, 32)))
    """

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        radius: int = 3,
        pool_size: int = 4,
        pool_mode: str = "avg",
        bce_weight: float = 0.5,
        eps: float = 5e-4,
        cross_entropy: str = "sigmoid",
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        for name, value in (("radius", radius), ("pool_size", pool_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}.")
        if not 0.0 <= require_real("bce_weight", bce_weight) <= 1.0:
            raise ValueError(f"bce_weight must lie in [0, 1], got {bce_weight}.")
        if not require_real("eps", eps) > 0.0 or not math.isfinite(eps):
            raise ValueError(
                f"eps must be a positive finite number, got {eps}; it keeps the covariances positive definite."
            )
        if cross_entropy not in CROSS_ENTROPY_MODES:
            raise ValueError(f"cross_entropy must be one of {CROSS_ENTROPY_MODES}, got {cross_entropy!r}.")
        self.radius = radius
        self.pool_size = pool_size
        self.cross_entropy = cross_entropy
        self.pool_mode = pool_mode
        self.bce_weight = float(bce_weight)
        self.eps = float(eps)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        spatial = inputs.logits.shape[2:]
        if len(spatial) not in _AVG_POOL:
            raise ValueError(
                f"region_mutual_information supports 1 to 3 spatial dimensions, got logits of shape "
                f"{tuple(inputs.logits.shape)}."
            )
        # One sigmoid per class: with a single channel, the background logit is the negated foreground logit.
        logits = inputs.logits
        if inputs.binary:
            logits = torch.cat([-logits, logits], dim=1)
        target = inputs.target

        if self.cross_entropy == "softmax" and not inputs.binary:
            class_rmi = self.rmi_lower_bound(target, torch.sigmoid(logits), inputs.mask)
            cross_entropy = self.average_voxels(voxel_cross_entropy(inputs), inputs)
            return self.bce_weight * cross_entropy + (1.0 - self.bce_weight) * self._sum_classes(class_rmi, inputs)

        probs, bce_sums = sigmoid_and_bce_sums(logits, target, inputs.mask)
        class_rmi = self.rmi_lower_bound(target, probs, inputs.mask)
        count = inputs.voxel_count().unsqueeze(1).expand_as(bce_sums)
        if self.batch:
            bce_sums, count = pool_batch_sums(bce_sums, count)
        class_bce = bce_sums / count.clamp_min(1.0)
        return self._sum_classes(self.bce_weight * class_bce + (1.0 - self.bce_weight) * class_rmi, inputs)

    def _sum_classes(self, class_loss: Tensor, inputs: SegmentationInputs) -> Tensor:
        """Sum a ``(B | 1, C)`` per-class loss over the classes in the loss, with the class weights."""
        selected = class_loss[:, inputs.region_classes]
        if self.class_weights is None:
            return selected.sum(dim=1)
        return (selected * self.class_weights[inputs.region_classes].to(selected)).sum(dim=1)

    def rmi_lower_bound(self, target: Tensor, probs: Tensor, mask: Tensor | None) -> Tensor:
        """Return ``log det(Sigma_Y|P + eps I) / (2 d)`` per sample (or for the batch) and class, ``(B | 1, K)``."""
        spatial = tuple(probs.shape[2:])
        smallest = (self.radius - 1) * self.pool_size + 1
        if min(spatial) < smallest:
            raise ValueError(
                f"region_mutual_information with radius {self.radius} and pool_size {self.pool_size} needs at "
                f"least {smallest} voxels on every spatial axis, got spatial shape {spatial}; lower radius or "
                "pool_size, or train on larger patches."
            )
        target, probs, cell_valid = pool_cells(target, probs, mask, self.pool_size, self.pool_mode)

        # (B, K, d, M) points: the d cells of each of the M windows of R cells per axis.
        label_points = window_points(target.detach().double(), self.radius)
        prob_points = window_points(probs.double(), self.radius)
        point_weight = None
        if cell_valid is not None:
            # A point counts only if every cell of its window is valid.
            point_weight = window_points(cell_valid.double(), self.radius).amin(dim=2, keepdim=True)
        if self.batch:
            if pooling_across_ranks() and point_weight is None:
                point_weight = torch.ones_like(label_points[:, :1, :1])
            label_points, prob_points = (
                pool_batch(gather_across_ranks(points)) for points in (label_points, prob_points)
            )
            if point_weight is not None:
                point_weight = pool_batch(gather_across_ranks(point_weight))

        label_points, count = centre_points(label_points, point_weight)
        prob_points, _ = centre_points(prob_points, point_weight)
        # Three d x d products rather than one 2d x 2d product: the labels need no gradient, so the backward pass
        # multiplies only the probability points.
        label_cov = label_points @ label_points.transpose(-1, -2)
        prob_cov, cross_cov_transposed = probability_covariances(prob_points, label_points)
        dim = label_cov.shape[-1]
        identity = self.eps * torch.eye(dim, dtype=torch.float64, device=label_cov.device)

        # Sigma_YP (Sigma_P + eps I)^-1 Sigma_YP^T = X^T X with X = L^-1 Sigma_YP^T and L L^T = Sigma_P + eps I;
        # this form stays symmetric and positive semi-definite in floating point.
        prob_factor = self._cholesky(prob_cov + identity)
        solved = torch.linalg.solve_triangular(prob_factor, cross_cov_transposed, upper=False)
        posterior = label_cov - solved.transpose(-1, -2) @ solved
        posterior_factor = self._cholesky(posterior + identity)
        # log det = 2 sum log diag(L), so log det / (2 d) = sum log diag(L) / d.
        rmi = posterior_factor.diagonal(dim1=-2, dim2=-1).log().sum(dim=-1) / dim
        rmi = torch.where(count > 0, rmi, torch.zeros_like(rmi))
        return rmi.to(probs.dtype)

    def _cholesky(self, matrix: Tensor) -> Tensor:
        factor, info = torch.linalg.cholesky_ex(matrix)
        if bool((info > 0).any()):
            raise ValueError(
                f"a covariance of region_mutual_information is not positive definite with eps={self.eps}; "
                "rounding outweighs eps, so raise eps (the paper uses 5e-4)."
            )
        return factor


def sigmoid_and_bce_sums(logits: Tensor, target: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Return the sigmoid of ``(B, K, *spatial)`` logits and the per-class sums of the binary cross-entropy.

    The sums, ``(B, K)``, are ``sum_n m_n (softplus(x_nc) - t_nc x_nc)`` over the voxels ``n`` in the loss (mask
    ``m``, ``None`` for all). Through autograd, the BCE and the sigmoid would each keep their own tensors, and the
    BCE's backward would take the sigmoid again. Here one function returns both, and its backward
    ``g_p p (1 - p) + g_s m (p - t)`` reuses the saved probabilities.
    """
    return _SigmoidAndBCESums.apply(logits, target.detach(), None if mask is None else mask.detach())


class _SigmoidAndBCESums(torch.autograd.Function):
    """The forward and backward of :func:`sigmoid_and_bce_sums`."""

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, mask: Tensor | None):
        ctx.set_materialize_grads(False)
        with torch.no_grad():
            probs = torch.sigmoid(logits)
            # softplus(x) - t x is the BCE of a logit. softplus returns x itself above 20, within 2e-9.
            bce = F.softplus(logits).addcmul_(logits, target, value=-1.0)
            if mask is not None:
                bce.mul_(mask)
            sums = bce.sum(dim=tuple(range(2, logits.ndim)))
        ctx.save_for_backward(probs, target, mask)
        return probs, sums

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_probs: Tensor | None, grad_sums: Tensor | None):
        probs, target, mask = ctx.saved_tensors
        grad_logits = None
        if grad_sums is not None:
            grad_logits = torch.sub(probs, target).mul_(grad_sums.reshape(*grad_sums.shape, *(1,) * (probs.ndim - 2)))
            if mask is not None:
                grad_logits.mul_(mask)
        if grad_probs is not None:
            # d sigmoid / dx = p (1 - p).
            slope = torch.rsub(probs, 1.0).mul_(probs).mul_(grad_probs)
            grad_logits = slope if grad_logits is None else grad_logits.add_(slope)
        return grad_logits, None, None


def probability_covariances(prob_points: Tensor, label_points: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``P P^T`` and ``P L^T`` for ``(..., d, M)`` centred probability and label points.

    The gradient reaches ``P`` alone: ``(G_1 + G_1^T) P + G_2 L``, two batched products where autograd takes
    three. The profiler puts these products at about a third of the loss's time in 2D.
    """
    return _ProbabilityCovariances.apply(prob_points, label_points.detach())


class _ProbabilityCovariances(torch.autograd.Function):
    """The forward and backward of :func:`probability_covariances`."""

    @staticmethod
    def forward(ctx, prob_points: Tensor, label_points: Tensor):
        ctx.set_materialize_grads(False)
        with torch.no_grad():
            prob_cov = prob_points @ prob_points.transpose(-1, -2)
            cross_cov_transposed = prob_points @ label_points.transpose(-1, -2)
        ctx.save_for_backward(prob_points, label_points)
        return prob_cov, cross_cov_transposed

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_prob_cov: Tensor | None, grad_cross: Tensor | None):
        prob_points, label_points = ctx.saved_tensors
        grad = None
        if grad_cross is not None:
            grad = grad_cross @ label_points
        if grad_prob_cov is not None:
            symmetric = grad_prob_cov + grad_prob_cov.transpose(-1, -2)
            if grad is None:
                grad = symmetric @ prob_points
            else:
                # grad + symmetric @ P in one call, on the points flattened to one batch axis.
                shape = grad.shape
                grad = torch.baddbmm(
                    grad.reshape(-1, *shape[-2:]),
                    symmetric.reshape(-1, *symmetric.shape[-2:]),
                    prob_points.reshape(-1, *shape[-2:]),
                ).reshape(shape)
        return grad, None


def pool_cells(
    target: Tensor, probs: Tensor, mask: Tensor | None, pool_size: int, pool_mode: str
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Pool target and probabilities over cells of ``pool_size`` voxels per axis, using the valid voxels only.

    Returns the pooled target, the pooled probabilities, and a ``(B, 1, *cells)`` boolean map of the cells that
    contain at least one valid voxel, or ``None`` when there is no mask and no partial cell. Cells start at the
    first voxel; the last cell of an axis may be partial and then pools only its real voxels.
    """
    if pool_size == 1:
        return target, probs, None if mask is None else mask > 0
    spatial = target.shape[2:]
    # F.pad lists the padding of the last axis first.
    padding = []
    for size in reversed(spatial):
        padding += [0, -size % pool_size]
    if mask is None and not any(padding):
        if pool_mode == "avg":
            pool = _AVG_POOL[len(spatial)]
        else:
            pool = _MAX_POOL[len(spatial)]
        return pool(target, pool_size), pool(probs, pool_size), None

    if mask is None:
        mask = torch.ones((1, 1, *spatial), dtype=probs.dtype, device=probs.device)
    mask = F.pad(mask.to(probs.dtype), padding)
    if pool_mode == "avg":
        pool = _AVG_POOL[len(spatial)]
        valid_fraction = pool(mask, pool_size)
        cell_valid = valid_fraction > 0
        # The mean over a cell's valid voxels: the masked mean divided by the fraction of valid voxels.
        scale = 1.0 / valid_fraction.clamp_min(torch.finfo(probs.dtype).tiny)
        pooled = [pool(F.pad(values, padding) * mask, pool_size) * scale for values in (target, probs)]
    else:
        pool = _MAX_POOL[len(spatial)]
        cell_valid = pool(mask, pool_size) > 0
        invalid = mask == 0
        pooled = [
            pool(F.pad(values, padding).masked_fill(invalid, -math.inf), pool_size).masked_fill(~cell_valid, 0.0)
            for values in (target, probs)
        ]
    return pooled[0], pooled[1], cell_valid.expand(target.shape[0], *cell_valid.shape[1:])


def window_points(values: Tensor, radius: int) -> Tensor:
    """Return every window of ``radius`` cells per axis of ``(B, K, *cells)`` values as ``(B, K, d, M)`` points.

    ``d = radius ** n`` for ``n`` spatial axes, and ``M`` is the number of windows that fit.
    """
    spatial_dims = values.ndim - 2
    windows = values
    for axis in range(2, 2 + spatial_dims):
        windows = windows.unfold(axis, radius, 1)
    positions = range(2, 2 + spatial_dims)
    offsets = range(2 + spatial_dims, 2 + 2 * spatial_dims)
    windows = windows.permute(0, 1, *offsets, *positions)
    return windows.reshape(*values.shape[:2], radius**spatial_dims, -1)


def pool_batch(points: Tensor) -> Tensor:
    """Merge the points of every sample: ``(B, K, d, M)`` to ``(1, K, d, B * M)``."""
    return points.permute(1, 2, 0, 3).reshape(1, *points.shape[1:3], -1)


def centre_points(points: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """Subtract the (weighted) mean of ``(B, K, F, M)`` points over ``M``; points of weight 0 become 0.

    Returns the centred points and the number of points that count, ``(B, K)``.
    """
    if weight is None:
        count = torch.full(points.shape[:2], points.shape[-1], dtype=points.dtype, device=points.device)
        return points - points.mean(dim=-1, keepdim=True), count
    count = weight.sum(dim=-1, keepdim=True)
    mean = (points * weight).sum(dim=-1, keepdim=True) / count.clamp_min(1.0)
    return (points - mean) * weight, count[..., 0, 0].expand(points.shape[:2])
