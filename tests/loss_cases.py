"""Inputs for the registry-wide loss tests: tiny 2D and 3D logits, targets, and each loss's extra inputs.

A loss that needs more than logits and target (a distance map, an auxiliary head's output) registers a factory
in ``EXTRA_INPUT_FACTORIES`` that builds those inputs from the test's logits and index target.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from scripts.losses import build_loss
from scripts.losses.boundary import active_boundary, boundary_aware, conditional_boundary, inverse_form
from scripts.losses.extra_inputs import example_extra_inputs
from scripts.transforms import class_distance_maps


def _maps_from_labels(name: str) -> Callable[[Tensor, Tensor], dict[str, Tensor]]:
    # The maps that DistanceMapd would compute from these labels, for the loss as the tests build it.
    return lambda logits, labels: example_extra_inputs(build(name), logits, labels)


# name -> factory(logits, index_target) -> dict of extra inputs for the loss's forward().
EXTRA_INPUT_FACTORIES: dict[str, Callable[[Tensor, Tensor], dict[str, Tensor]]] = {
    **{
        name: _maps_from_labels(name)
        for name in ("boundary", "distance_map_ce", "hausdorff", "region_wise", "weighted_sum")
    },
    # Target maps come from the labels. Network outputs are built so that swapping two classes swaps them too:
    # boundary_aware gets one-hot target bins plus class-independent noise, conditional_boundary the logits as
    # features with an identity classifier, and inverse_form a class-agnostic random boundary head.
    "active_boundary": active_boundary.example_extra_inputs,
    "boundary_aware": boundary_aware.example_extra_inputs,
    "conditional_boundary": conditional_boundary.example_extra_inputs,
    "inverse_form": inverse_form.example_extra_inputs,
}

# The reason shared by the losses that read a ground-truth map from the pipeline.
_MAP_OF_A_CROP = (
    "reads a distance map of the ground truth, and the map of a cropped volume differs from the crop of the map "
    "near the crop border (the distance to a boundary beyond the crop is lost)"
)

# Losses whose value is not a sum over independent voxels, so ignoring a slab of voxels is not the same as
# cropping it away; each entry gives the reason, and the test only checks that the ignored voxels are left out.
IGNORE_IS_NOT_A_CROP: dict[str, str] = {
    "boundary": _MAP_OF_A_CROP,
    "distance_map_ce": _MAP_OF_A_CROP,
    "hausdorff": _MAP_OF_A_CROP + "; the prediction's map also treats ignored voxels as belonging to no class",
    "region_wise": _MAP_OF_A_CROP,
    "weighted_sum": "its test members include the boundary loss, which " + _MAP_OF_A_CROP,
    "active_boundary": (
        "the ground-truth distance map is a distance inside the whole label map: the test builds it from the "
        "uncropped labels for the ignore case and from the cropped labels for the crop case, and near the cut the "
        "two maps differ (the loss itself treats ignored voxels like voxels outside the patch; "
        "test_active_boundary checks that with one map)"
    ),
    "boundary_aware": (
        "the depth-bin targets are distances inside the whole label map, built from the uncropped labels for the "
        "ignore case and from the cropped ones for the crop case; near the cut they differ (test_boundary_aware "
        "checks ignore == crop with one map)"
    ),
    "inverse_form": (
        "the InverseForm term feeds whole tiles to a network, and cropping shifts the content of the tiles at "
        "the cut, so its value is not a sum over voxels"
    ),
}

# A randomly initialised inverse network for the registry-wide tests: the repository has no trained one, and the
# tests check the API contract, not the quality of the network.
_INVERSE_FORM_DIRECTORY = Path(tempfile.mkdtemp(prefix="seglosses-tests-"))
atexit.register(shutil.rmtree, _INVERSE_FORM_DIRECTORY, ignore_errors=True)
with torch.random.fork_rng():
    torch.manual_seed(0)
    _TEST_NETWORK = inverse_form.InverseFormNet()
INVERSE_FORM_TEST_CHECKPOINT = str(
    inverse_form.save_inverse_form_net(_TEST_NETWORK, _INVERSE_FORM_DIRECTORY / "inverse_form_net.pt")
)

# Hyperparameters that the registry-wide tests use instead of a loss's defaults, with the reason.
TEST_OVERRIDES: dict[str, dict] = {
    # The default window of 3 cells after 4-voxel pooling needs 9 voxels per axis, more than the 4 to 8 of the
    # contract's shapes and crops; 2 cells of 2 voxels still exercise pooling, windows and masking there.
    "region_mutual_information": {"radius": 2, "pool_size": 2},
    # weighted_sum has no default members. Kervadec et al.'s pair exercises a region loss on every class, a map
    # loss with its own include_background, and the forwarding of an extra input.
    "weighted_sum": {
        "losses": {"generalized_dice": {"weight": 1.0}, "boundary": {"weight": 0.5, "include_background": False}}
    },
    # No trained inverse network ships with the repository; see INVERSE_FORM_TEST_CHECKPOINT.
    "inverse_form": {"checkpoint": INVERSE_FORM_TEST_CHECKPOINT},
}


def make_logits(shape: tuple[int, ...], seed: int = 0, scale: float = 2.0, dtype=torch.float32) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=generator)).to(dtype)


def make_labels(shape: tuple[int, ...], num_classes: int, seed: int = 1) -> Tensor:
    """Random index labels ``(B, 1, *spatial)`` in which every class occurs in every sample."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (shape[0], 1, *shape[2:]), generator=generator)
    flat = labels.view(shape[0], -1)
    flat[:, :num_classes] = torch.arange(num_classes)
    return labels


def blob_labels(shape: tuple[int, ...], num_classes: int) -> Tensor:
    """Index labels ``(B, 1, *spatial)`` with one compact box per foreground class, so boundaries exist."""
    labels = torch.zeros((shape[0], 1, *shape[2:]), dtype=torch.long)
    spatial = shape[2:]
    for c in range(1, num_classes):
        index = [slice(None), slice(None)]
        for axis, size in enumerate(spatial):
            start = 1 + (c - 1) * max(size // (2 * num_classes), 1) if axis == 0 else 1
            stop = max(start + 2, size // 2 + (c - 1) if axis == 0 else size - 2)
            index.append(slice(start, min(stop, size - 1)))
        labels[tuple(index)] = c
    return labels


def one_hot(labels: Tensor, num_classes: int, dtype=torch.float32) -> Tensor:
    shape = (labels.shape[0], num_classes, *labels.shape[2:])
    return torch.zeros(shape, dtype=dtype).scatter_(1, labels.long(), 1.0)


def perfect_logits(labels: Tensor, num_classes: int, margin: float = 8.0, dtype=torch.float32) -> Tensor:
    """Logits that put almost all probability on the target class of every voxel."""
    if num_classes == 1:
        return (margin * (2.0 * labels.to(dtype) - 1.0)).to(dtype)
    return (margin * (2.0 * one_hot(labels, num_classes, dtype) - 1.0)).to(dtype)


def build(name: str, **hyperparameters) -> torch.nn.Module:
    return build_loss(name, **{**TEST_OVERRIDES.get(name, {}), **hyperparameters})


def extra_inputs(name: str, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    # The built loss's extra_inputs: a combination's depend on its members, a variant's on its options.
    needed = build(name).extra_inputs
    if not needed:
        return {}
    if name not in EXTRA_INPUT_FACTORIES:
        raise AssertionError(f"loss {name!r} needs {needed}; add a factory to EXTRA_INPUT_FACTORIES.")
    return EXTRA_INPUT_FACTORIES[name](logits, labels)


def evaluate(loss: torch.nn.Module, name: str, logits: Tensor, target: Tensor, labels: Tensor | None = None) -> Tensor:
    """Call ``loss`` with the extra inputs it needs, derived from the index ``labels`` (default: ``target``)."""
    labels = target if labels is None else labels
    return loss(logits, target, **extra_inputs(name, logits, labels))


# The 1 x 7 row of the distance-loss reference values: foreground probabilities against the target 0111110.
ROW_PROBS = torch.tensor([0.2, 0.9, 0.8, 0.9, 0.7, 0.6, 0.1], dtype=torch.float64)
ROW_LABELS = torch.tensor([0, 1, 1, 1, 1, 1, 0])


def row_case(kind: str, spatial_dims: int = 2) -> tuple[Tensor, Tensor, Tensor]:
    """Sigmoid logits, index labels and the float64 ``kind`` map of the reference row, in 2D or 3D shape."""
    shape = (1, 1) + (1,) * (spatial_dims - 1) + (7,)
    labels = ROW_LABELS.reshape(shape)
    class_map = class_distance_maps(labels, 2, kind, batched=True).double()
    return torch.logit(ROW_PROBS).reshape(shape), labels, class_map
