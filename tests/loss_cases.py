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

from scripts.losses import build_loss, get_loss_spec
from scripts.losses.boundary import active_boundary, boundary_aware, conditional_boundary, inverse_form

# name -> factory(logits, index_target) -> dict of extra inputs for the loss's forward().
EXTRA_INPUT_FACTORIES: dict[str, Callable[[Tensor, Tensor], dict[str, Tensor]]] = {
    # Target maps come from the labels. Network outputs are built so that swapping two classes swaps them too:
    # boundary_aware gets one-hot target bins plus class-independent noise, conditional_boundary the logits as
    # features with an identity classifier, and inverse_form a class-agnostic random boundary head.
    "active_boundary": active_boundary.example_extra_inputs,
    "boundary_aware": boundary_aware.example_extra_inputs,
    "conditional_boundary": conditional_boundary.example_extra_inputs,
    "inverse_form": inverse_form.example_extra_inputs,
}

# Losses whose value is not a sum over independent voxels, so ignoring a slab of voxels is not the same as
# cropping it away; each entry gives the reason, and the test only checks that the ignored voxels are left out.
IGNORE_IS_NOT_A_CROP: dict[str, str] = {
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
    spec = get_loss_spec(name)
    if not spec.extra_inputs:
        return {}
    if name not in EXTRA_INPUT_FACTORIES:
        raise AssertionError(f"loss {name!r} needs {spec.extra_inputs}; add a factory to EXTRA_INPUT_FACTORIES.")
    return EXTRA_INPUT_FACTORIES[name](logits, labels)


def evaluate(loss: torch.nn.Module, name: str, logits: Tensor, target: Tensor, labels: Tensor | None = None) -> Tensor:
    """Call ``loss`` with the extra inputs it needs, derived from the index ``labels`` (default: ``target``)."""
    labels = target if labels is None else labels
    return loss(logits, target, **extra_inputs(name, logits, labels))
