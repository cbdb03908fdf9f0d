"""Conditional boundary loss: boundary voxels are pulled towards local class centres of their correct neighbours."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..base import SegmentationInputs, SegmentationLoss, _plain_tensor
from ..pixel.cross_entropy import voxel_cross_entropy
from ..registry import register_loss
from .auxiliary import (
    NeighbourGrid,
    box_max,
    channel_argmax,
    check_weights,
    extra_tensor,
    per_sample_sum,
    pool_batch,
)

_FEATURES = "the feature capture of scripts.networks.ConditionalBoundaryNetwork"


@register_loss(
    "conditional_boundary",
    family="boundary",
    paper="Wu, Guo, Li, Yu, Gao, Sang, Conditional boundary loss for semantic segmentation, IEEE TIP 32 (2023)",
)
class ConditionalBoundaryLoss(SegmentationLoss):
    r"""Cross-entropy plus the conditional boundary loss (CBL) on the decoder features of boundary voxels.

    CBL gives every ground-truth boundary voxel ``v`` of class ``c`` its own objective, conditioned on its
    neighbourhood :math:`\mathcal{N}(v)` (the cube of side ``neighbourhood_size`` around ``v``, ``v`` excluded).
    Let :math:`f` be the decoder features, :math:`\phi` the segmentation classifier (features to logits) and

    * :math:`m_c(v)`, the mean feature of the neighbours of class ``c`` (the local class centre),
    * :math:`\hat m_c(v)`, the mean feature of the neighbours of class ``c`` that the network also predicts as
      ``c`` (correct neighbours).

    The three terms, with the weights of the official code (``dywu98/CBL-Conditional-Boundary-Loss``):

    * A2C classification (``loss_NCE``, weight ``centre_classification_weight`` = 0.2): the class centres must be
      classified as ``c``, :math:`CE(\phi(m_c)(v), c) + CE(\phi(\hat m_c)(v), c)`, each averaged over its voxels.
      The classifier's parameters are detached, so the gradient reaches the features only.
    * A2C pull (``loss_CN``, weight ``centre_pull_weight`` = 2): :math:`\| f(v) - \operatorname{sg}(\hat m_c(v))
      \|^2`, averaged over the feature channels, for correctly predicted boundary voxels.
    * A2P&N (``loss_context``, weight ``neighbour_similarity_weight`` = 1): the cosine similarity of :math:`f(v)` to
      each neighbour's feature is regressed (squared error) to 1 for a neighbour of the same class and 0 otherwise.

    .. math:: L = \lambda_{CE} L_{CE} + 0.2 \, L_{A2C,cls} + 2 \, L_{A2C,pull} + 1 \cdot L_{A2P\&N}

    The A2C terms are averaged per class over the classes with at least one correctly predicted boundary voxel
    (with the class weights), then per sample; A2P&N is averaged over all (boundary voxel, neighbour) pairs of the
    sample. Every empty set contributes an exact zero. ``batch=True`` pools the voxels of the batch before the
    averages, as the official code does.

    Inputs besides logits and target, from :class:`scripts.networks.ConditionalBoundaryNetwork`: ``features``
    ``(B, D, *spatial)`` at the logits' resolution, and ``classifier``, a callable (usually the backbone's output
    block) with ``classifier(features) == logits``. Each centre is classified as a one-voxel volume
    ``(n, D, 1, 1, 1)``. For a pointwise classifier (a 1x1x1 convolution, like ``conv_seg`` of the official mmseg
    head) this is exactly the official per-voxel classification.

    NOTE: a classifier with a spatial kernel, such as the residual output unit ``x + conv3x3x3(x)`` of MONAI's
    UNet, sees the centre alone: zero padding leaves only the kernel's centre tap. Classifying dense centre maps
    instead would cost two passes of the classifier per class over the whole patch. The classifier must also work
    on one voxel (no instance norm in the output block).

    3D adaptation: a 3x3x3 neighbourhood (26 neighbours) instead of the paper's 5x5 (24). It has about the same
    number of neighbours; 5x5x5 would compare 124 neighbours per voxel at five times the cost, and the features
    here are at full resolution, not the paper's quarter resolution. A voxel is a boundary voxel when its
    neighbourhood holds a voxel of another class (a band as wide as the neighbourhood's radius; the official code
    uses a band of 0.5 % of the image diagonal); the image border is not a boundary.

    Other differences from the official code: the A2P&N term uses every neighbour inside the image instead of
    skipping voxels within two pixels of the border; it includes boundary voxels of class 0 unless
    ``include_background=False`` (the code drops label 0, which is the class "road" on Cityscapes); everything is
    vectorised over classes and neighbours.

    Args:
        include_background: ``False`` leaves class 0 out of all terms (and its voxels out of the cross-entropy).
        class_weights: weights of the classes in the cross-entropy and the A2C class average.
        ignore_index: label of voxels to leave out; they are neither boundary voxels nor neighbours.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: pool the voxels of the batch.
        neighbourhood_size: side of the neighbourhood cube, odd, at least 3.
        cross_entropy_weight: weight of the segmentation cross-entropy.
        centre_classification_weight: weight of the A2C classification term (``loss_NCE``).
        centre_pull_weight: weight of the A2C pull term (``loss_CN``).
        neighbour_similarity_weight: weight of the A2P&N term (``loss_context``).
    """

    extra_inputs = ("features", "classifier")

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        neighbourhood_size: int = 3,
        cross_entropy_weight: float = 1.0,
        centre_classification_weight: float = 0.2,
        centre_pull_weight: float = 2.0,
        neighbour_similarity_weight: float = 1.0,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        if (
            isinstance(neighbourhood_size, bool)
            or not isinstance(neighbourhood_size, int)
            or neighbourhood_size < 3
            or neighbourhood_size % 2 == 0
        ):
            raise ValueError(f"neighbourhood_size must be an odd integer of at least 3, got {neighbourhood_size!r}.")
        weights = check_weights(
            cross_entropy_weight=cross_entropy_weight,
            centre_classification_weight=centre_classification_weight,
            centre_pull_weight=centre_pull_weight,
            neighbour_similarity_weight=neighbour_similarity_weight,
        )
        self.neighbourhood_size = neighbourhood_size
        self.cross_entropy_weight = weights["cross_entropy_weight"]
        self.centre_classification_weight = weights["centre_classification_weight"]
        self.centre_pull_weight = weights["centre_pull_weight"]
        self.neighbour_similarity_weight = weights["neighbour_similarity_weight"]

    def per_sample_loss(
        self, inputs: SegmentationInputs, features: Tensor = None, classifier: Callable[[Tensor], Tensor] = None
    ) -> Tensor:
        features = extra_tensor("features", features, inputs, None, _FEATURES)
        if not features.is_floating_point():
            raise ValueError(f"features must be a floating-point tensor, got dtype {features.dtype}.")
        if classifier is None or not callable(classifier):
            raise ValueError(
                f"classifier must be a callable that maps features to logits (the backbone's output block), got "
                f"{type(classifier).__name__}; it comes from scripts.networks.ConditionalBoundaryNetwork."
            )

        labels = inputs.labels
        valid = torch.ones_like(labels, dtype=torch.bool) if inputs.mask is None else inputs.mask[:, 0] > 0
        with torch.no_grad():
            # Ignored voxels get label -1: never a boundary voxel, a neighbour or a member of a class.
            labelled = labels.masked_fill(~valid, -1)
            predicted = channel_argmax(inputs.log_probs.detach())
            boundary = self.boundary_voxels(labelled, inputs.num_classes)
            if not self.include_background:
                boundary &= labels != 0
            grid = NeighbourGrid(tuple(labels.shape[1:]), self.neighbourhood_size // 2, labels.device)
            index = grid.select(boundary)
            neighbours = grid.neighbours(index)
            flat_neighbours = neighbours.view(-1)
            label_flat = grid.channels(labelled.unsqueeze(1), value=-1)[0]
            prediction_flat = grid.channels(predicted.unsqueeze(1), value=-1)[0]
            own_label = label_flat.index_select(0, index)
            neighbour_labels = label_flat.index_select(0, flat_neighbours).view_as(neighbours)
            same = neighbour_labels == own_label.unsqueeze(1)
            neighbour_predictions = prediction_flat.index_select(0, flat_neighbours).view_as(neighbours)
            correct = same & (neighbour_predictions == own_label.unsqueeze(1))
            own_correct = prediction_flat.index_select(0, index) == own_label
            present = neighbour_labels >= 0

        # Channel-first gathers: index_select along the flat voxels, whose backward is an index_add, measured
        # faster on CPU than gathering (voxels, channels) rows. Normalising every voxel once is cheaper than
        # normalising every gathered neighbour.
        feature_channels = grid.channels(features)
        # The norm over the channels, clamped at 1e-8, as a sum of squares: linalg.vector_norm over the leading
        # dimension measured over ten times slower on CPU. Clamping the squares keeps the gradient finite at 0.
        squared_norm = (feature_channels * feature_channels).sum(dim=0, keepdim=True)
        unit_channels = feature_channels / squared_norm.clamp_min(1e-16).sqrt()
        shape = (feature_channels.shape[0], *neighbours.shape)
        voxel_features = feature_channels.index_select(1, index)
        neighbour_features = feature_channels.index_select(1, flat_neighbours).view(shape)
        voxel_unit = unit_channels.index_select(1, index)
        neighbour_unit = unit_channels.index_select(1, flat_neighbours).view(shape)
        boundary_set = BoundarySet(grid.sample_of(index), own_label, same, correct, own_correct, present)

        total = self.cross_entropy_weight * self.average_voxels(voxel_cross_entropy(inputs), inputs)
        if self.centre_classification_weight > 0 or self.centre_pull_weight > 0:
            classification, pull = self.centre_terms(
                inputs, voxel_features, neighbour_features, classifier, boundary_set
            )
            total = total + self.centre_classification_weight * classification + self.centre_pull_weight * pull
        if self.neighbour_similarity_weight > 0:
            similarity = self.similarity_term(voxel_unit, neighbour_unit, boundary_set, labels.shape[0])
            total = total + self.neighbour_similarity_weight * similarity
        return total

    def boundary_voxels(self, labelled: Tensor, num_classes: int) -> Tensor:
        """Return the labelled voxels ``(B, *spatial)`` whose neighbourhood contains a voxel of another class."""
        one_hot = (
            labelled.unsqueeze(1)
            == torch.arange(num_classes, device=labelled.device).view(1, -1, *([1] * (labelled.ndim - 1)))
        ).to(torch.float32)
        classes_near = box_max(one_hot, self.neighbourhood_size).sum(dim=1)
        return (classes_near > 1.5) & (labelled >= 0)

    def centre_terms(
        self,
        inputs: SegmentationInputs,
        voxel_features: Tensor,
        neighbour_features: Tensor,
        classifier: Callable[[Tensor], Tensor],
        boundary_set: BoundarySet,
    ) -> tuple[Tensor, Tensor]:
        """Return the A2C classification and pull terms per sample, each ``(B,)`` or ``(1,)``.

        ``voxel_features`` is ``(D, n)`` and ``neighbour_features`` ``(D, n, N)``, channels first.
        """
        num_classes = inputs.num_classes
        spatial_dims = inputs.logits.ndim - 2
        same = boundary_set.same.to(voxel_features.dtype)
        correct = boundary_set.correct.to(voxel_features.dtype)
        same_count, correct_count = same.sum(dim=1), correct.sum(dim=1)
        centres = (neighbour_features * same).sum(dim=2) / same_count.clamp_min(1)
        correct_centres = (neighbour_features * correct).sum(dim=2) / correct_count.clamp_min(1)

        # Set A: boundary voxels with a same-class neighbour. Set B: correctly predicted ones with a correct one.
        in_a = (same_count > 0).to(voxel_features.dtype)
        in_b = (boundary_set.own_correct & (correct_count > 0)).to(voxel_features.dtype)
        own = boundary_set.own_label.unsqueeze(1)
        log_probs_a = self.classify(classifier, centres.t(), num_classes, inputs.binary, spatial_dims)
        log_probs_b = self.classify(classifier, correct_centres.t(), num_classes, inputs.binary, spatial_dims)
        nll_a = -log_probs_a.gather(1, own)[:, 0]
        nll_b = -log_probs_b.gather(1, own)[:, 0]
        pull = ((voxel_features - correct_centres.detach()) ** 2).mean(dim=0)

        batch_size = inputs.logits.shape[0]
        key = boundary_set.sample * num_classes + boundary_set.own_label

        def class_sums(values: Tensor) -> Tensor:
            sums = torch.zeros(batch_size * num_classes, dtype=values.dtype, device=values.device)
            return sums.index_add(0, key, values).view(batch_size, num_classes)

        count_a, count_b = class_sums(in_a), class_sums(in_b)
        classification = pool_batch(class_sums(nll_a * in_a), count_a, self.batch)
        classification = classification + pool_batch(class_sums(nll_b * in_b), count_b, self.batch)
        pull = pool_batch(class_sums(pull * in_b), count_b, self.batch)
        # A class takes part when it has a correctly predicted boundary voxel (set B is a subset of set A).
        counted = (count_b.sum(dim=0, keepdim=True) if self.batch else count_b) > 0
        return self.average_counted_classes(classification, counted), self.average_counted_classes(pull, counted)

    def average_counted_classes(self, class_loss: Tensor, counted: Tensor) -> Tensor:
        """Average ``(B, K)`` per-class terms over the counted classes with the class weights; 0 if none counts."""
        weights = counted.to(class_loss.dtype)
        if not self.include_background:
            weights[:, 0] = 0.0
        if self.class_weights is not None:
            weights = weights * self.class_weights.to(class_loss)
        return (class_loss * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(torch.finfo(class_loss.dtype).tiny)

    def classify(
        self, classifier: Callable[[Tensor], Tensor], centres: Tensor, num_classes: int, binary: bool, spatial_dims: int
    ) -> Tensor:
        """Apply the classifier, with detached parameters, to ``(n, D)`` centres as one-voxel volumes; return
        ``(n, K)`` class log-probabilities."""
        volumes = centres.reshape(*centres.shape, *([1] * spatial_dims))
        if isinstance(classifier, nn.Module):
            state = {**dict(classifier.named_parameters()), **dict(classifier.named_buffers())}
            detached = {
                name: value.detach().to(volumes.dtype) if value.is_floating_point() else value
                for name, value in state.items()
            }
            logits = torch.func.functional_call(classifier, detached, (volumes,))
        else:
            logits = classifier(volumes)
        logits = _plain_tensor(logits)
        expected = (centres.shape[0], 1 if binary else num_classes, *volumes.shape[2:])
        if not isinstance(logits, Tensor) or tuple(logits.shape) != expected:
            raise ValueError(
                f"the classifier maps features of shape {tuple(volumes.shape)} to {tuple(getattr(logits, 'shape', ()))}"
                f", expected {expected}; pass the module that maps the decoder features to the logits (the backbone's "
                "output block)."
            )
        logits = logits.flatten(1).to(centres.dtype)
        if binary:
            return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
        return F.log_softmax(logits, dim=1)

    def similarity_term(
        self, voxel_unit: Tensor, neighbour_unit: Tensor, boundary_set: BoundarySet, batch_size: int
    ) -> Tensor:
        """Return the A2P&N term per sample from unit-length features, ``(D, n)`` and ``(D, n, N)``: squared error of
        the cosine similarities to same-class indicators."""
        similarity = (neighbour_unit * voxel_unit.unsqueeze(2)).sum(dim=0)
        present = boundary_set.present.to(similarity.dtype)
        squared_error = ((similarity - boundary_set.same.to(similarity.dtype)) ** 2 * present).sum(dim=1)
        totals = per_sample_sum(squared_error, boundary_set.sample, batch_size)
        counts = per_sample_sum(present.sum(dim=1), boundary_set.sample, batch_size)
        return pool_batch(totals, counts, self.batch)


class BoundarySet(NamedTuple):
    """The ground-truth boundary voxels of a batch and their neighbourhoods (``n`` voxels, ``N`` neighbours)."""

    sample: Tensor
    own_label: Tensor
    same: Tensor
    correct: Tensor
    own_correct: Tensor
    present: Tensor


def example_extra_inputs(logits: Tensor, labels: Tensor) -> dict:
    """Build the extra inputs of :class:`ConditionalBoundaryLoss` for tests and benchmarks.

    The features are a copy of the logits and the classifier is the identity: the output block of a network whose
    last decoder layer emits the logits. The copy carries the logits' gradient but not their storage, so an
    in-place change of the logits (as in ``gradcheck``) does not change the features.
    """
    return {"features": logits.clone(), "classifier": nn.Identity()}
