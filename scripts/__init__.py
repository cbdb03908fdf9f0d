"""seglosses: the Python package of the bundle (data, losses, training engine, tracking).

``python -m monai.bundle run`` puts the bundle root on ``sys.path``, so the configs reach this package as
``scripts``. Submodules load on first attribute access (``scripts.data``, ``scripts.tracking``, ...), so a config
needs only ``$import scripts`` and the command lines do not import MLflow unless they use it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

BUNDLE_ROOT = str(Path(__file__).resolve().parent.parent)

_SUBMODULES = (
    "allocator",
    "checkpoints",
    "cli",
    "data",
    "distance_maps",
    "distributed",
    "engine",
    "evaluation",
    "guards",
    "losses",
    "metrics",
    "options",
    "plots",
    "random_state",
    "study",
    "tracking",
    "tracking_buffer",
    "transforms",
    "validation",
)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
