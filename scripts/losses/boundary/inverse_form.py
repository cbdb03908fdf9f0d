"""InverseForm loss: a frozen network measures how far the predicted boundary is from an affine copy of the true one."""

from __future__ import annotations

import hashlib
import math
import pickle
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ... import BUNDLE_ROOT
from ...transforms.boundary import label_boundary
from ..base import SegmentationInputs, SegmentationLoss
from ..pixel.cross_entropy import voxel_cross_entropy
from ..registry import register_loss
from .auxiliary import check_weights, extra_tensor, pool_batch

DEFAULT_CHECKPOINT = "models/inverse_form_net.pt"
TRAIN_COMMAND = "python -m scripts.inverse_form train --dataset_dir DATASET_DIR"
CHECKPOINT_FORMAT = "seglosses-inverse-form-net"

_HEAD = "the boundary head (scripts.networks.BoundaryHeadNetwork)"
_BOUNDARY = "the LabelBoundaryd transform in loss_transforms"


class InverseFormNet(nn.Module):
    """The inverse-transformation network: regresses the 3D affine transform between two boundary tiles.

    Input: two ``(N, 1, T, T, T)`` tiles, a (possibly soft) boundary map and the reference boundary map. Output:
    ``(N, 12)``, the 3x4 matrix ``[A | t]`` of the transform minus the identity ``[I | 0]``, in the normalised
    coordinates of ``torch.nn.functional.affine_grid`` (the tile spans ``[-1, 1]`` on each axis). A perfect match
    gives zeros, so the Euclidean norm of the output is the distance of the transform from the identity.

    The official network is an MLP on two flattened 224x224 tiles (2 x 224^2 -> 1000 -> 32 -> 4); an MLP on 3D
    tiles would need tens of millions of weights in its first layer, so this one encodes the concatenated pair
    with three strided 3x3x3 convolutions before a two-layer MLP.

    Args:
        tile_size: ``T``, a multiple of 8.
        channels: output channels of the three convolutions.
        hidden: width of the MLP's hidden layer.
    """

    def __init__(self, tile_size: int = 16, channels: Sequence[int] = (16, 32, 64), hidden: int = 256) -> None:
        super().__init__()
        if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size < 8 or tile_size % 8:
            raise ValueError(f"tile_size must be a positive multiple of 8, got {tile_size!r}.")
        channels = [int(value) for value in channels]
        if len(channels) != 3 or min(channels) < 1:
            raise ValueError(f"channels must be three positive integers, got {channels}.")
        self.tile_size = tile_size
        self.channels = channels
        self.hidden = int(hidden)
        layers: list[nn.Module] = []
        previous = 2
        for width in channels:
            layers += [nn.Conv3d(previous, width, kernel_size=3, stride=2, padding=1), nn.ReLU(inplace=True)]
            previous = width
        self.encoder = nn.Sequential(*layers)
        self.regressor = nn.Sequential(
            nn.Flatten(),
            nn.Linear(previous * (tile_size // 8) ** 3, self.hidden),
            nn.ReLU(inplace=True),
            nn.Linear(self.hidden, 12),
        )

    def forward(self, moved: Tensor, reference: Tensor) -> Tensor:
        return self.regressor(self.encoder(torch.cat([moved, reference], dim=1)))

    def config(self) -> dict:
        """The constructor arguments, saved with the weights."""
        return {"tile_size": self.tile_size, "channels": list(self.channels), "hidden": self.hidden}


def save_inverse_form_net(net: InverseFormNet, path: str | Path, metadata: dict | None = None) -> Path:
    """Save the network's configuration and weights in a file that ``torch.load(weights_only=True)`` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().cpu() for key, value in net.state_dict().items()}
    torch.save(
        {"format": CHECKPOINT_FORMAT, "config": net.config(), "state_dict": state, "metadata": dict(metadata or {})},
        path,
    )
    return path


def load_inverse_form_net(path: str | Path) -> InverseFormNet:
    """Load a frozen :class:`InverseFormNet` from ``path`` (relative paths start at the bundle root).

    Raises:
        ValueError: when the file is missing (the message gives the command that creates it) or is not an
            inverse-network checkpoint.
    """
    resolved = resolve_checkpoint(path)
    if not resolved.is_file():
        raise ValueError(
            f"the InverseForm inverse network {resolved} does not exist. Train it on your dataset's labels with "
            f"`{TRAIN_COMMAND}` (it writes {DEFAULT_CHECKPOINT} under the bundle root), or set the loss's "
            "checkpoint to an existing file."
        )
    try:
        checkpoint = torch.load(resolved, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
        raise ValueError(
            f"cannot read the InverseForm checkpoint {resolved} ({type(error).__name__}: {error}); recreate it with "
            f"`{TRAIN_COMMAND}`."
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{resolved} is not an InverseForm inverse-network checkpoint of this bundle; recreate it with "
            f"`{TRAIN_COMMAND}`."
        )
    net = InverseFormNet(**checkpoint["config"])
    net.load_state_dict(checkpoint["state_dict"])
    net.requires_grad_(False)
    # What the training command recorded, and the file's digest, identify the network in a run's parameters.
    net.provenance = {
        "mlflow_run_id": str(checkpoint.get("metadata", {}).get("mlflow_run_id", "unknown")),
        "sha256": hashlib.sha256(resolved.read_bytes()).hexdigest(),
    }
    return net.eval()


def resolve_checkpoint(path: str | Path) -> Path:
    """Return ``path`` as an absolute path, relative paths taken from the bundle root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else Path(BUNDLE_ROOT) / path


@register_loss(
    "inverse_form",
    family="boundary",
    paper="Borse, Wang, Zhang, Porikli, InverseForm: a loss function for structured boundary-aware segmentation, "
    "CVPR 2021",
    arxiv="2104.02745",
)
class InverseFormLoss(SegmentationLoss):
    r"""Cross-entropy plus a class-balanced boundary BCE and the InverseForm distance of the boundary head.

    .. math:: L = \lambda_{CE} L_{CE} + \beta \, L_{BCE}(b, g) + \gamma \, L_{IF}(\sigma(b), g)

    * :math:`b` are the logits of a class-agnostic boundary head (:class:`scripts.networks.BoundaryHeadNetwork`) and
      :math:`g` the ground-truth boundary, voxels whose label differs from a face neighbour
      (:class:`scripts.transforms.boundary.LabelBoundaryd`).
    * :math:`L_{BCE}` weighs boundary voxels by the fraction of non-boundary voxels and vice versa
      (:math:`w_+ = n_-/n`, :math:`w_- = n_+/n`), averaged over the sample's voxels, as the official ``bce2d``.
    * :math:`L_{IF}` cuts :math:`\sigma(b)` and :math:`g` into cubic tiles of ``T`` voxels, zero-padded at the far
      edges. A frozen :class:`InverseFormNet` regresses the affine transform between each pair of tiles, and the
      term is the norm of the transform's difference from the identity, averaged over the tiles that contain
      ground-truth boundary voxels. Its gradient reaches the boundary head through the frozen network.

    Weights as in the official code (``Qualcomm-AI-research/InverseForm``, ``JointEdgeSegLoss``): segmentation 1.0,
    boundary BCE 0.3, InverseForm 0.3. ``mean`` averages over samples; ``batch=True`` pools the BCE weights and the
    tiles over the batch.

    The inverse network is not downloadable and the published one is 2D and trained on street scenes, so the bundle
    trains its own on the dataset's label boundaries with ``python -m scripts.inverse_form train --dataset_dir
    DIR``, which writes ``models/inverse_form_net.pt``; the loss loads it at construction (relative paths start at
    the bundle root). 2D inputs are scored as one-slice volumes by the same 3D network.

    Differences from the official code: the image-based class-weighted CE and the edge-attention CE term (weight
    0.1) are dropped, so the segmentation term is this library's :class:`CrossEntropyLoss` with its
    ``class_weights``; tiles are cut from the patch at its resolution instead of after resizing the image to
    672 x 1344; tiles without ground-truth boundary are skipped; the inverse network sees the head's sigmoid
    probabilities (the official code takes a ``log_softmax`` over the single edge channel, which is identically
    zero).

    Args:
        include_background: ``False`` gives background voxels zero weight in the cross-entropy term.
        class_weights: class weights of the cross-entropy term.
        ignore_index: label of voxels to leave out of every term (they are zero in both tiles).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over samples.
        batch: pool the batch.
        checkpoint: the trained inverse network, absolute or relative to the bundle root.
        cross_entropy_weight: :math:`\lambda_{CE}`.
        boundary_weight: :math:`\beta`, weight of the boundary BCE.
        inverse_form_weight: :math:`\gamma`, weight of the InverseForm distance.

    Raises:
        ValueError: when ``checkpoint`` is missing or not an inverse-network file; the message gives the command
            that trains one.
    """

    extra_inputs = ("boundary_logits", "boundary")

    def __init__(
        self,
        include_background: bool = True,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        reduction: str = "mean",
        batch: bool = False,
        checkpoint: str = DEFAULT_CHECKPOINT,
        cross_entropy_weight: float = 1.0,
        boundary_weight: float = 0.3,
        inverse_form_weight: float = 0.3,
    ) -> None:
        super().__init__(
            include_background=include_background,
            class_weights=class_weights,
            ignore_index=ignore_index,
            reduction=reduction,
            batch=batch,
        )
        weights = check_weights(
            cross_entropy_weight=cross_entropy_weight,
            boundary_weight=boundary_weight,
            inverse_form_weight=inverse_form_weight,
        )
        self.cross_entropy_weight = weights["cross_entropy_weight"]
        self.boundary_weight = weights["boundary_weight"]
        self.inverse_form_weight = weights["inverse_form_weight"]
        self.checkpoint = str(checkpoint)
        self.inverse_net = load_inverse_form_net(checkpoint)

    def tracking_details(self) -> dict[str, str]:
        """Return the inverse network's MLflow run and file digest, logged beside the hyperparameters."""
        return {f"inverse_net.{key}": value for key, value in self.inverse_net.provenance.items()}

    def train(self, mode: bool = True) -> InverseFormLoss:
        super().train(mode)
        self.inverse_net.eval()  # frozen: always in inference mode
        return self

    def per_sample_loss(
        self, inputs: SegmentationInputs, boundary_logits: Tensor = None, boundary: Tensor = None
    ) -> Tensor:
        head = extra_tensor("boundary_logits", boundary_logits, inputs, 1, _HEAD)
        target = extra_tensor("boundary", boundary, inputs, 1, _BOUNDARY, integer_below=2).to(head.dtype)

        valid = torch.ones_like(target) if inputs.mask is None else inputs.mask.to(target)
        total = self.cross_entropy_weight * self.average_voxels(voxel_cross_entropy(inputs), inputs)
        if self.boundary_weight > 0:
            total = total + self.boundary_weight * self.balanced_bce(head, target, valid)
        if self.inverse_form_weight > 0:
            total = total + self.inverse_form_weight * self.inverse_form_distance(head, target, valid)
        return total

    def balanced_bce(self, head: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """Return the class-balanced BCE of the boundary head per sample, ``(B,)`` or ``(1,)``."""
        dims = tuple(range(1, head.ndim))
        positives = (target * valid).sum(dim=dims)
        negatives = ((1.0 - target) * valid).sum(dim=dims)
        if self.batch:
            positives, negatives = positives.sum(0, keepdim=True), negatives.sum(0, keepdim=True)
        voxels = (positives + negatives).clamp_min(1.0)
        positive_weight = (negatives / voxels).view(-1, *([1] * (head.ndim - 1)))
        negative_weight = (positives / voxels).view(-1, *([1] * (head.ndim - 1)))
        weight = (target * positive_weight + (1.0 - target) * negative_weight) * valid
        voxel_loss = F.binary_cross_entropy_with_logits(head, target, reduction="none") * weight
        return pool_batch(voxel_loss.sum(dim=dims), valid.sum(dim=dims), self.batch)

    def inverse_form_distance(self, head: Tensor, target: Tensor, valid: Tensor) -> Tensor:
        """Return the mean InverseForm distance over the tiles with ground-truth boundary, per sample."""
        net = self.inverse_net
        parameter = next(net.parameters())
        if parameter.device != head.device:
            net.to(head.device)
        predicted = torch.sigmoid(head.to(parameter.dtype)) * valid.to(parameter.dtype)
        reference = (target * valid).to(parameter.dtype)
        # A 2D tile becomes a cube only once selected, because most tiles hold no boundary and a cube of a 2D tile
        # is mostly zeros. Cutting cubes first took 2.3 times as long in 2D.
        predicted_tiles = cut_map_tiles(predicted, net.tile_size)
        reference_tiles = cut_map_tiles(reference, net.tile_size)
        batch_size, num_tiles = predicted_tiles.shape[:2]

        has_boundary = reference_tiles.flatten(2).amax(dim=2) > 0
        selected = has_boundary.flatten()
        shape = (-1, 1, *predicted_tiles.shape[2:])
        spatial_dims = predicted.ndim - 2
        moved = as_cubes(predicted_tiles.reshape(shape)[selected], spatial_dims)
        coefficients = net(moved, as_cubes(reference_tiles.reshape(shape)[selected], spatial_dims))
        distances = torch.zeros(batch_size * num_tiles, dtype=coefficients.dtype, device=head.device)
        distances = distances.masked_scatter(selected, coefficients.norm(dim=1))
        totals = distances.view(batch_size, num_tiles).sum(dim=1).to(head.dtype)
        return pool_batch(totals, has_boundary.sum(dim=1).to(head.dtype), self.batch)


def cut_tiles(volume: Tensor, tile_size: int) -> Tensor:
    """Cut ``(B, 1, *spatial)`` maps (2D or 3D) into ``(B, n_tiles, T, T, T)`` cubes, zero-padding the far edges.

    A 2D map is a volume of one slice: each cube holds its tile in the first slice (:func:`as_cubes`).
    """
    return as_cubes(cut_map_tiles(volume, tile_size), volume.ndim - 2)


def cut_map_tiles(volume: Tensor, tile_size: int) -> Tensor:
    """Cut ``(B, 1, *spatial)`` maps into ``(B, n_tiles, T, ..., T)`` tiles of the maps' own dimension (2D or 3D).

    The far edges are zero-padded to a multiple of ``T``, and the tiles are in row-major order of their positions.
    """
    if volume.ndim not in (4, 5):
        raise ValueError(f"InverseForm tiles need 2D or 3D maps, got shape {tuple(volume.shape)}.")
    padding = []
    for size in reversed(volume.shape[2:]):
        padding += [0, math.ceil(size / tile_size) * tile_size - size]
    tiles = F.pad(volume, padding)[:, 0]
    spatial_dims = volume.ndim - 2
    for axis in range(1, spatial_dims + 1):
        tiles = tiles.unfold(axis, tile_size, tile_size)
    return tiles.reshape(volume.shape[0], -1, *([tile_size] * spatial_dims))


def as_cubes(tiles: Tensor, spatial_dims: int) -> Tensor:
    """Return tiles ``(..., T, T)`` of 2D maps as cubes ``(..., T, T, T)`` with the tile in the first slice.

    The inverse network takes cubes. A 2D slice is a volume one slice deep, zero-padded to ``T`` slices like the far
    edge of a 3D map. Tiles of 3D maps (``spatial_dims=3``) are returned as they are.
    """
    if spatial_dims == 3:
        return tiles
    return F.pad(tiles.unsqueeze(-3), (0, 0, 0, 0, 0, tiles.shape[-1] - 1))


def example_extra_inputs(logits: Tensor, labels: Tensor) -> dict:
    """Build the extra inputs of :class:`InverseFormLoss` for tests and benchmarks: the ground-truth boundary of
    ``labels`` ``(B, 1, *spatial)`` and random boundary logits (requiring gradient)."""
    spatial_dims = logits.ndim - 2
    boundary = label_boundary(labels[:, 0], spatial_dims=spatial_dims).unsqueeze(1).float()
    # Every sample gets the same head output, so a sample's inputs do not depend on the rest of the batch.
    generator = torch.Generator().manual_seed(0)
    head = torch.randn((1, 1, *logits.shape[2:]), generator=generator).expand(logits.shape[0], -1, *logits.shape[2:])
    return {
        "boundary_logits": head.to(logits.device).contiguous().requires_grad_(),
        "boundary": boundary.to(logits.device),
    }
