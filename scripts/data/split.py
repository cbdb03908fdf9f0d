"""The deterministic k-fold cross-validation split, written to the output folder of every run."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from .datalist import load_datalist, read_dataset_json

logger = logging.getLogger(__name__)


def fold_split(cases: list[dict[str, Any]], fold: int, num_folds: int = 5, seed: int = 0) -> dict[str, list]:
    """Split the cases into the training and validation lists of one fold.

    The order comes from a SHA-256 hash of the seed and each case id, so the split depends only on the case ids,
    the seed and the number of folds: not on the listing order, the platform or library versions. Cases are dealt
    round-robin into ``num_folds`` folds of sizes differing by at most one; fold ``fold`` is the validation set.

    Raises:
        ValueError: for ``num_folds < 2``, a fold outside ``[0, num_folds)``, or fewer cases than folds.
    """
    if num_folds < 2:
        raise ValueError(f"num_folds must be at least 2, got {num_folds}.")
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must lie in [0, {num_folds - 1}], got {fold}.")
    if len(cases) < num_folds:
        raise ValueError(f"{len(cases)} cases cannot be split into {num_folds} folds; use fewer folds.")

    def order(case: dict[str, Any]) -> str:
        return hashlib.sha256(f"{seed}:{case['case_id']}".encode()).hexdigest()

    ranked = sorted(cases, key=order)
    validation = [case for index, case in enumerate(ranked) if index % num_folds == fold]
    training = [case for index, case in enumerate(ranked) if index % num_folds != fold]
    return {"training": training, "validation": validation}


def prepare_split(
    dataset_dir: str | Path,
    fold: int,
    num_folds: int = 5,
    seed: int = 0,
    output_dir: str | Path | None = None,
    max_cases: int | None = None,
) -> dict[str, Any]:
    """Read the task folder, split it, and write the split to ``output_dir/split.json``.

    Args:
        dataset_dir: the Decathlon task folder.
        fold: the validation fold.
        num_folds: number of folds.
        seed: seed of the split (independent of the training seed in the config, so a new training seed does not
            change which cases are held out unless asked).
        output_dir: where ``split.json`` is written; ``None`` writes nothing.
        max_cases: keep only the first ``max_cases`` cases of each list, for smoke tests; ``None`` keeps all.

    Returns:
        ``{"training": [...], "validation": [...], "dataset": {...}}`` with the cases as dicts of absolute paths.
    """
    content = read_dataset_json(dataset_dir)
    split = fold_split(load_datalist(dataset_dir), fold=fold, num_folds=num_folds, seed=seed)
    if max_cases is not None:
        if max_cases < 1:
            raise ValueError(f"max_cases must be a positive number of cases or None, got {max_cases}.")
        split = {key: cases[:max_cases] for key, cases in split.items()}
    split["dataset"] = {
        "name": str(content.get("name", Path(dataset_dir).name)),
        "dataset_dir": str(Path(dataset_dir).expanduser().resolve()),
        "fold": fold,
        "num_folds": num_folds,
        "seed": seed,
        "num_training": len(split["training"]),
        "num_validation": len(split["validation"]),
    }
    if output_dir is not None:
        path = Path(output_dir) / "split.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(split, indent=2) + "\n", encoding="utf-8")
        logger.info(
            "Fold %d of %d (split seed %d): %d training and %d validation cases, written to %s.",
            fold,
            num_folds,
            seed,
            len(split["training"]),
            len(split["validation"]),
            path,
        )
    return split
