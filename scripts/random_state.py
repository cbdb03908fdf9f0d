"""Capture and restore every random number generator a training draws from, for an exact resume.

A training draws from four kinds of generators. Torch's generator initialises the network and drives the
DataLoader's shuffling and its per-epoch base seed. Numpy and Python have global generators. Each MONAI random
transform owns a ``numpy.random.RandomState`` (``Randomizable.R``), seeded once when the pipeline is built. The
states are stored as tensors, lists and numbers, so checkpoints load with ``torch.load(..., weights_only=True)``.

NOTE: DataLoader worker processes (``num_workers > 0``) hold their own copies of the transforms; with persistent
workers those copies keep drawing across epochs and are not captured, so a resumed run's augmentations then differ
from an uninterrupted run's. With ``num_workers: 0`` (the bundle's CPU setting) the resume is exact.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable, Transform


def capture_random_states(transform: Any = None) -> dict[str, Any]:
    """Return the states of torch's, numpy's and Python's generators and of every random transform in ``transform``.

    Args:
        transform: a transform or pipeline (``Compose``), searched recursively for ``Randomizable`` transforms,
            including those nested as attributes (``RandAffined`` contains a ``RandAffine``, which contains a
            ``RandAffineGrid``).
    """
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(np.random.get_state()),
        "python": _python_state(random.getstate()),
        "transforms": {path: _numpy_state(item.R.get_state()) for path, item in _random_transforms(transform)},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(states: Mapping[str, Any], transform: Any = None) -> None:
    """Set every generator to the states from :func:`capture_random_states`.

    Raises:
        ValueError: when the random transforms of ``transform`` differ from those captured (another pipeline).
    """
    found = dict(_random_transforms(transform))
    saved = states["transforms"]
    if set(found) != set(saved):
        missing, extra = sorted(set(saved) - set(found)), sorted(set(found) - set(saved))
        raise ValueError(
            f"the random transforms differ from the checkpoint's (only in the checkpoint: {missing}; only in this "
            f"pipeline: {extra}); resume with the configuration that wrote the checkpoint."
        )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(_numpy_tuple(states["numpy"]))
    random.setstate(_python_tuple(states["python"]))
    for path, item in found.items():
        item.R.set_state(_numpy_tuple(saved[path]))


def _random_transforms(root: Any) -> list[tuple[str, Randomizable]]:
    """Return ``(path, transform)`` for every ``Randomizable`` reachable from ``root``, in a stable order.

    The search follows attributes, lists, tuples and dicts, but enters only MONAI transforms, so that it never walks
    into a dataset's cache or a tensor.
    """
    found: list[tuple[str, Randomizable]] = []
    visited: set[int] = set()

    def visit(item: Any, path: str) -> None:
        if isinstance(item, (list, tuple)):
            for index, child in enumerate(item):
                visit(child, f"{path}[{index}]")
            return
        if isinstance(item, dict):
            for key, child in item.items():
                visit(child, f"{path}[{key!r}]")
            return
        if not isinstance(item, (Transform, Randomizable)) or id(item) in visited:
            return
        visited.add(id(item))
        if isinstance(item, Randomizable):
            found.append((path or type(item).__name__, item))
        for name, child in vars(item).items():
            if name != "R":
                visit(child, f"{path}.{name}" if path else name)

    visit(root, "")
    return found


def _numpy_state(state: tuple) -> dict[str, Any]:
    name, keys, position, has_gauss, cached_gaussian = state
    return {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "position": int(position),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached_gaussian),
    }


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["position"], state["has_gauss"], state["cached_gaussian"]


def _python_state(state: tuple) -> list[Any]:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _python_tuple(state: list[Any]) -> tuple:
    version, internal, gauss_next = state
    return version, tuple(internal), gauss_next


__all__ = ["capture_random_states", "restore_random_states"]
