"""Real cases for the tests that read the dataset passed with --dataset-dir (the ``dataset_dir`` fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def first_label_path(dataset_dir: Path) -> Path:
    """Return the label file of the first training case listed in ``dataset.json``."""
    entry = json.loads((dataset_dir / "dataset.json").read_text())["training"][0]
    return (dataset_dir / entry["label"]).resolve()


def first_label(dataset_dir: Path) -> torch.Tensor:
    """Return the first training label as int64 class indices ``(1, 1, *spatial)``."""
    labels = np.asarray(nib.load(str(first_label_path(dataset_dir))).dataobj)
    return torch.from_numpy(np.rint(labels).astype(np.int64))[None, None]
