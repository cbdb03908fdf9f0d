"""Command line of the data module: ``python -m scripts.data download|split|check``."""

from __future__ import annotations

import json
import sys

from .. import BUNDLE_ROOT
from ..cli import run_commands
from .check import check_dataset
from .split import prepare_split

DEFAULT_DATASET_DIR = f"{BUNDLE_ROOT}/data/Task04_Hippocampus"


def download(dataset_dir: str = DEFAULT_DATASET_DIR, task: str = "Task04_Hippocampus") -> str:
    """Download a Decathlon task (default: Task04 Hippocampus, 27 MB) into the bundle's default dataset folder.

    Args:
        dataset_dir: folder to create; training reads it from the config key ``dataset_dir``.
        task: the Decathlon task name, e.g. ``Task04_Hippocampus`` or ``Task09_Spleen``.
    """
    # Imported here: MONAI's download code takes seconds to import, which the other commands do not need.
    from .download import download_task

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


def check(dataset_dir: str = DEFAULT_DATASET_DIR, cache: str | None = None) -> None:
    """Check every case of dataset.json and print one line per problem, then a summary; exit status 1 on problems.

    Args:
        dataset_dir: the Decathlon task folder with dataset.json.
        cache: a JSON file that stores the result per case. A rerun then reads only the files that changed, by
            size and modification time. None by default.
    """
    report = check_dataset(dataset_dir, cache_path=cache)
    print(report.text())
    if not report.ok:
        sys.exit(1)


if __name__ == "__main__":
    run_commands({"download": download, "split": split, "check": check})
