"""seglosses: the Python package of the bundle (data, losses, training engine, tracking).

``python -m monai.bundle run`` puts the bundle root on ``sys.path``, so the configs reach this package as
``scripts``.
"""

from __future__ import annotations

from pathlib import Path

BUNDLE_ROOT = str(Path(__file__).resolve().parent.parent)
