"""Download a Medical Segmentation Decathlon task with MONAI's own download code."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from monai.apps import DecathlonDataset, download_and_extract

logger = logging.getLogger(__name__)


def download_task(dataset_dir: str | Path, task: str = "Task04_Hippocampus") -> Path:
    """Download and extract a Decathlon task into ``dataset_dir``, checking the archive's MD5.

    The addresses and checksums are the ones MONAI's ``DecathlonDataset`` uses. The archive is kept beside the
    folder, so an interrupted extraction can be rerun without downloading again.

    Raises:
        ValueError: for an unknown task name.
        RuntimeError: when the archive cannot be downloaded (no network, server unreachable) or is corrupt.
    """
    if task not in DecathlonDataset.resource:
        raise ValueError(f"unknown Decathlon task {task!r}; choose one of {sorted(DecathlonDataset.resource)}.")
    target = Path(dataset_dir).expanduser().resolve()
    if (target / "dataset.json").is_file():
        logger.info("%s already contains dataset.json; nothing to download.", target)
        return target

    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    archive = parent / f"{task}.tar"
    url = DecathlonDataset.resource[task]
    try:
        download_and_extract(url=url, filepath=archive, output_dir=str(parent), hash_val=DecathlonDataset.md5[task])
    # MONAI's download_url raises a bare Exception for unreachable hosts, so nothing narrower catches it.
    except Exception as error:  # noqa: BLE001
        raise RuntimeError(
            f"could not download {url} ({error}). Without network access, copy the task folder to this machine "
            f"and pass its path with --dataset_dir."
        ) from error

    extracted = parent / task
    if extracted != target:
        if target.exists():
            raise RuntimeError(f"{target} exists but has no dataset.json; remove it or choose another --dataset_dir.")
        shutil.move(str(extracted), str(target))
    logger.info("Downloaded %s into %s.", task, target)
    return target
