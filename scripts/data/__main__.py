"""Command line of the data module: ``python -m scripts.data download|split``."""

from __future__ import annotations

import json

from .. import BUNDLE_ROOT
from ..cli import run_commands
from .download import download_task
from .split import prepare_split

DEFAULT_DATASET_DIR = f"{BUNDLE_ROOT}/data/Task04_Hippocampus"


def download(dataset_dir: str = DEFAULT_DATASET_DIR, task: str = "Task04_Hippocampus") -> str:
    """Download a Decathlon task (default: Task04 Hippocampus, 27 MB) into the bundle's default dataset folder.

    Args:
        dataset_dir: folder to create; training reads it from the config key ``dataset_dir``.
        task: the Decathlon task name, e.g. ``Task04_Hippocampus`` or ``Task09_Spleen``.
    """
    return str(download_task(dataset_dir, task))


def split(dataset_dir: str = DEFAULT_DATASET_DIR, fold: int = 0, num_folds: int = 5, seed: int = 0) -> str:
    """Print the case ids of the training and validation lists of one fold.

    Args:
        dataset_dir: the Decathlon task folder with dataset.json.
        fold: the validation fold, from 0 to num_folds - 1.
        num_folds: number of cross-validation folds.
        seed: seed of the split.
    """
    result = prepare_split(dataset_dir, fold=fold, num_folds=num_folds, seed=seed)
    summary = {key: [case["case_id"] for case in result[key]] for key in ("training", "validation")}
    return json.dumps(summary, indent=2)


if __name__ == "__main__":
    run_commands({"download": download, "split": split})
