"""Active boundary loss: moves predicted boundaries towards the ground-truth boundary, one voxel step at a time."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ...transforms.boundary import label_boundary_distance
from ..base import SegmentationInputs, SegmentationLoss
from ..pixel.cross_entropy import voxel_cross_entropy
from ..registry import build_loss, get_loss_spec, register_loss
from .auxiliary import NeighbourGrid, box_max, check_weights, extra_tensor, per_sample_sum, pool_batch

_DISTANCE = "the LabelBoundaryDistanced transform in loss_transforms"

# The official code starts the boundary threshold at 1e-5 and multiplies it by 1.2 until few enough voxels pass.
_INITIAL_THRESHOLD = 1e-5
_THRESHOLD_GROWTH = 1.2


@register_loss(
    "active_boundary",
    family="boundary",
    paper="Wang, Zhang, Cui, Ren, Yang, Xie, Hua, Bao, Xu, Active boundary loss for semantic segmentation, AAAI 2022",
    arxiv="2102.02696",
)
class ActiveBoundaryLoss(SegmentationLoss):
    r"""Cross-entropy plus the active boundary loss (ABL), which pulls predicted boundaries to the true ones.

    ABL works on the boundary that the network currently predicts. Per sample:

    1. **Predicted boundary.** Every voxel gets the sum of the KL divergences :math:`KL(p_v \| p_{v+e_i})` to its
       next voxel along each axis. The threshold starts at :math:`10^{-5}` and grows by factors of 1.2 until at most
       ``max_boundary_ratio`` (1 %) of the voxels exceed it; those voxels, dilated by the 3x3(x3) cube, are the
       predicted boundary (computed without gradient, in closed form instead of the official loop).
    2. **Target direction.** ``boundary_distance`` :math:`M` is the distance of each voxel to the ground-truth
       boundary (from :class:`scripts.transforms.boundary.LabelBoundaryDistanced`). For a predicted-boundary voxel
       the target is the neighbour with the smallest :math:`M` (the first one in a fixed order on ties); a voxel
       with no neighbour strictly closer than itself is already on, or equidistant to, the boundary and is left
       out.
    3. **Predicted direction.** The logits over the neighbours are :math:`KL(p_u \| p_v)` for each neighbour
       :math:`u` of voxel :math:`v`, with :math:`p_u` detached: raising the KL towards the target neighbour moves
       the class change, i.e. the boundary, one step towards the ground truth.
    4. **Loss.** Label-smoothed cross-entropy (``label_smoothing`` 0.2) between the predicted and target
       directions, weighted by :math:`\Lambda(M_v) = \min(M_v, \theta)/\theta` with :math:`\theta` =
       ``max_distance`` (20), averaged over the voxels of step 2.

    .. math:: L = \lambda_{CE} L_{CE} + \lambda_{AB} \frac{1}{N_b} \sum_{v} \Lambda(M_v) \, CE_{ls}(KL_v, y_v)
              \; [+ \lambda_{L} L_{Lovasz}]

    The authors train with cross-entropy, the Lovász-softmax (IoU) loss and ABL, which their repository names as the
    best combination, and that is the default here; ``lovasz_weight=0`` gives CE + ABL.
    When no voxel qualifies, the ABL term is an exact zero that keeps the autograd graph (the official code returns
    ``None``). ``mean`` averages over samples; ``batch=True`` averages the ABL term over all qualifying voxels of
    the batch (the thresholds stay per sample).

    3D adaptation: the neighbourhood is the full cube, 26 neighbours in 3D (8 in 2D, as in the official code's 3x3
    window). It is the 3D form of that window and lets the boundary move diagonally, whereas the 6 face neighbours
    would allow axis-aligned steps only. Distances, and so :math:`\theta`, are in the unit of the distance map (mm
    in the bundle).

    Differences from the official code (``wangchi95/active-boundary-loss``): the threshold budget is per sample
    (the code compares the count over the whole batch with one image's budget); the ground-truth boundary marks
    both sides of every interface and :math:`M` is the exact distance to it (the code subtracts 1, which ties the
    boundary's neighbours with the boundary itself); ties with the voxel itself drop it (the code keeps it and
    picks a neighbour); neighbours outside the image or ignored get direction logit 0 and are never targets (the
    code replicates the image edge); label smoothing is PyTorch's (the target keeps ``1 - eps + eps / N``; the
    code's helper gives it ``1 - eps``).

    NOTE: the paper's weight of the ABL term could not be confirmed here; ``boundary_weight = 1`` is the default.

    Args:
        include_background: ``False`` gives background voxels zero weight in the cross-entropy term. ABL has no
            per-class terms.
        class_weights: class weights of the cross-entropy term.
        ignore_index: label of voxels to leave out of both terms.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: pool the voxels of the batch.
        max_boundary_ratio: the largest fraction of a sample's voxels that may form the predicted boundary before
            dilation.
        label_smoothing: label smoothing of the direction cross-entropy.
        max_distance: :math:`\theta`, the distance at which the weight :math:`\Lambda` saturates.
        cross_entropy_weight: :math:`\lambda_{CE}`.
        boundary_weight: :math:`\lambda_{AB}`.
        lovasz_weight: :math:`\lambda_L`; needs the registered loss ``lovasz_softmax``.
    """

    extra_inputs = ("boundary_distance",)

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        max_boundary_ratio: float = 0.01,
        label_smoothing: float = 0.2,
        max_distance: float = 20.0,
        cross_entropy_weight: float = 1.0,
        boundary_weight: float = 1.0,
        lovasz_weight: float = 1.0,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        if not 0.0 < max_boundary_ratio <= 1.0:
            raise ValueError(f"max_boundary_ratio must lie in (0, 1], got {max_boundary_ratio}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}.")
        if not max_distance > 0:
            raise ValueError(f"max_distance must be a positive distance, got {max_distance}.")
        weights = check_weights(
            cross_entropy_weight=cross_entropy_weight, boundary_weight=boundary_weight, lovasz_weight=lovasz_weight
        )
        self.max_boundary_ratio = float(max_boundary_ratio)
        self.label_smoothing = float(label_smoothing)
        self.max_distance = float(max_distance)
        self.cross_entropy_weight = weights["cross_entropy_weight"]
        self.boundary_weight = weights["boundary_weight"]
        self.lovasz_weight = weights["lovasz_weight"]
        self.lovasz = None
        if self.lovasz_weight > 0:
            self.lovasz = _build_lovasz(include_background, class_weights, ignore_index, batch)

    def per_sample_loss(self, inputs: SegmentationInputs, boundary_distance: Tensor = None) -> Tensor:
        distance = extra_tensor("boundary_distance", boundary_distance, inputs, 1, _DISTANCE)
        if bool((distance < 0).any()):
            raise ValueError(
                f"boundary_distance must be non-negative, got a minimum of {distance.min().item()}; it comes from "
                f"{_DISTANCE}."
            )

        # The boundary term first: it computes the log-softmax, which the cross-entropy then reuses.
        boundary_term = self.active_boundary_term(inputs, distance)
        total = self.cross_entropy_weight * self.average_voxels(voxel_cross_entropy(inputs), inputs)
        total = total + self.boundary_weight * boundary_term
        if self.lovasz is not None:
            total = total + self.lovasz_weight * self.lovasz.per_sample_loss(inputs)
        return total

    def active_boundary_term(self, inputs: SegmentationInputs, distance: Tensor) -> Tensor:
        """Return the ABL term per sample, ``(B,)``, or ``(1,)`` with ``batch=True``."""
        log_probs = inputs.log_probs
        batch_size = log_probs.shape[0]
        valid = torch.ones_like(log_probs[:, :1], dtype=torch.bool) if inputs.mask is None else inputs.mask > 0
        grid = NeighbourGrid(tuple(log_probs.shape[2:]), radius=1, device=log_probs.device)

        with torch.no_grad():
            probs = log_probs.detach().exp()
            index = grid.select(self.predicted_boundary(log_probs.detach(), probs, valid))
            num_neighbours = grid.offsets.numel()
            neighbours = grid.neighbours(index).view(-1)
            # Padding and ignored voxels are never the target (infinite distance) and give direction logit 0.
            distance_rows = grid.channels(distance.masked_fill(~valid, torch.inf), value=torch.inf)[0]
            own_distance = distance_rows.index_select(0, index)
            neighbour_distance = distance_rows.index_select(0, neighbours).view(-1, num_neighbours)
            closest, target = neighbour_distance.min(dim=1)
            keep = closest < own_distance
            index, target = index[keep], target[keep]
            # The input distances are finite (checked above), so only padding and ignored voxels are inf.
            neighbour_valid = (neighbour_distance[keep] < torch.inf).to(log_probs.dtype)
            weight = own_distance[keep].clamp_max(self.max_distance) / self.max_distance
            neighbours = grid.neighbours(index).view(-1)

            # KL(p_u || p_v) = sum_c p_u log p_u - sum_c p_u log p_v: the first sum is one value per voxel.
            # Gathers from channel-first flat tensors (one index per voxel and channel) measured about twice as
            # fast on CPU as gathering (channels,) rows.
            neighbour_probs = grid.channels(probs).index_select(1, neighbours).view(probs.shape[1], -1, num_neighbours)
            entropy = grid.channels((probs * log_probs.detach()).sum(dim=1, keepdim=True))[0]
            neighbour_entropy = entropy.index_select(0, neighbours).view(-1, num_neighbours)

        centre_log_probs = grid.channels(log_probs).index_select(1, index)
        divergence = neighbour_entropy - (neighbour_probs * centre_log_probs.unsqueeze(2)).sum(dim=0)
        voxel_loss = F.cross_entropy(
            divergence * neighbour_valid, target, label_smoothing=self.label_smoothing, reduction="none"
        )

        sample = grid.sample_of(index)
        totals = per_sample_sum(voxel_loss * weight, sample, batch_size)
        counts = per_sample_sum(torch.ones_like(weight), sample, batch_size)
        return pool_batch(totals, counts, self.batch)

    def predicted_boundary(self, log_probs: Tensor, probs: Tensor, valid: Tensor) -> Tensor:
        """Return the dilated predicted boundary ``(B, *spatial)``: at most ``max_boundary_ratio`` of the valid
        voxels of each sample pass the KL threshold before the dilation."""
        spatial_dims = log_probs.ndim - 2
        divergence = torch.zeros_like(log_probs[:, :1])
        for axis in range(spatial_dims):
            dim = 2 + axis
            length = log_probs.shape[dim] - 1
            if length < 1:
                continue
            here, after = log_probs.narrow(dim, 0, length), log_probs.narrow(dim, 1, length)
            pair = (probs.narrow(dim, 0, length) * (here - after)).sum(dim=1, keepdim=True)
            pair_valid = valid.narrow(dim, 0, length) & valid.narrow(dim, 1, length)
            divergence.narrow(dim, 0, length).add_(pair * pair_valid)

        boundary = torch.zeros_like(valid)
        every_voxel = bool(valid.all())
        for sample in range(divergence.shape[0]):
            values = divergence[sample].flatten() if every_voxel else divergence[sample][valid[sample]]
            threshold = _threshold_for_budget(values, math.floor(self.max_boundary_ratio * values.numel()))
            boundary[sample] = (divergence[sample] > threshold) & valid[sample]
        return (box_max(boundary.to(log_probs.dtype), 3) > 0)[:, 0] & valid[:, 0]


def _threshold_for_budget(values: Tensor, budget: int) -> float:
    """Return the smallest ``1e-5 * 1.2**m`` (``m >= 0``) that at most ``budget`` of ``values`` exceed.

    This is the official loop's result without the loop: the threshold must reach the ``(budget + 1)``-th largest
    value.
    """
    if values.numel() <= budget:
        return _INITIAL_THRESHOLD
    # The cutoff is the (budget + 1)-th largest value. topk of the smaller side measured faster on CPU than
    # kthvalue (1.7 against 2.8 ms for the largest 1 % of 2^18 values).
    rank = values.numel() - budget
    if budget + 1 <= rank:
        cutoff = float(torch.topk(values, budget + 1, sorted=False).values.min())
    else:
        cutoff = float(torch.topk(values, rank, largest=False, sorted=False).values.max())
    if cutoff <= _INITIAL_THRESHOLD:
        return _INITIAL_THRESHOLD
    steps = math.ceil(math.log(cutoff / _INITIAL_THRESHOLD) / math.log(_THRESHOLD_GROWTH))
    threshold = _INITIAL_THRESHOLD * _THRESHOLD_GROWTH**steps
    while threshold < cutoff:
        threshold *= _THRESHOLD_GROWTH
    return threshold


def _build_lovasz(include_background, class_weights, ignore_index, batch):
    try:
        get_loss_spec("lovasz_softmax")
    except ValueError as error:
        raise ValueError(
            "lovasz_weight > 0 needs the loss 'lovasz_softmax', which is not registered in this build; set "
            "lovasz_weight to 0 for cross-entropy + ABL."
        ) from error
    return build_loss(
        "lovasz_softmax",
        include_background=include_background,
        class_weights=class_weights,
        ignore_index=ignore_index,
        batch=batch,
        reduction="none",
    )


def example_extra_inputs(logits: Tensor, labels: Tensor) -> dict:
    """Build the extra input of :class:`ActiveBoundaryLoss` from index ``labels`` ``(B, 1, *spatial)``, unit spacing."""
    spatial_dims = logits.ndim - 2
    distance = label_boundary_distance(labels[:, 0], spatial_dims=spatial_dims).unsqueeze(1)
    return {"boundary_distance": distance.to(logits.device)}
