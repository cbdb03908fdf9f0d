"""The deterministic k-fold cross-validation split, written to the output folder of every run."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from ..options import as_bool, as_int, count
from .check import DataCheckReport, check_dataset
from .datalist import load_datalist, read_dataset_json

logger = logging.getLogger(__name__)


def fold_split(cases: list[dict[str, Any]], fold: int, num_folds: int = 5, seed: int = 0) -> dict[str, list]:
    """Split the cases into the training and validation lists of one fold.

    The order comes from a SHA-256 hash of the seed and each case id, so the split depends only on the case ids,
    the seed and the number of folds: not on the listing order, the platform or library versions. Cases are dealt
    round-robin into ``num_folds`` folds of sizes differing by at most one; fold ``fold`` is the validation set.

    Raises:
        ValueError: for a fold, fold count or seed that is not an integer, ``num_folds < 2``, a fold outside
            ``[0, num_folds)``, or fewer cases than folds.
    """
    num_folds = as_int("num_folds", num_folds, minimum=2)
    fold = as_int("fold", fold)
    # Any integer seeds the hash, but a text seed would be taken as is and split the cases silently.
    seed = as_int("seed", seed)
    if not 0 <= fold < num_folds:
        raise ValueError(f"fold must lie in [0, {num_folds - 1}], got {fold}.")
    if len(cases) < num_folds:
        raise ValueError(
            f"{len(cases)} cases cannot be split into {num_folds} folds; pass a smaller --num_folds (at least 2)."
        )

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
    check_data: bool = False,
    skip_broken_cases: bool = False,
) -> dict[str, Any]:
    """Read the task folder, split it, check the cases of the split, and write the split to ``output_dir/split.json``.

    Args:
        dataset_dir: the Decathlon task folder.
        fold: the validation fold.
        num_folds: number of folds.
        seed: seed of the split (independent of the training seed in the config, so a new training seed does not
            change which cases are held out unless asked).
        output_dir: where ``split.json`` is written; ``None`` writes nothing.
        max_cases: keep only the first ``max_cases`` cases of each list, for smoke tests; ``None`` keeps all.
        check_data: run :func:`scripts.data.check_dataset` on the cases of both lists (after ``max_cases``) and on
            the files around them; with problems, raise unless ``skip_broken_cases`` is set.
        skip_broken_cases: with ``check_data``, drop the broken cases from both lists instead of raising, log them,
            and list them with their problems under ``"skipped"``. The fold split is made before dropping, so a
            broken case never moves other cases to another fold.

    Returns:
        ``{"training": [...], "validation": [...], "dataset": {...}}`` with the cases as dicts of absolute paths;
        with skipped cases also ``"skipped"`` and ``"data_problems"`` (every problem of the check, as text).

    Raises:
        ValueError: with ``check_data`` and without ``skip_broken_cases``, when the check finds a problem; the
            message contains the whole report. Also when skipping leaves a list without cases.
    """
    check_data = as_bool("check_data", check_data)
    skip_broken_cases = as_bool("skip_broken_cases", skip_broken_cases)
    content = read_dataset_json(dataset_dir)
    # With the check, a missing file is one problem of the report instead of an error on its own.
    cases = load_datalist(dataset_dir, check_files=not check_data)
    split: dict[str, Any] = fold_split(cases, fold=fold, num_folds=num_folds, seed=seed)
    if max_cases is not None:
        if isinstance(max_cases, bool) or not isinstance(max_cases, int) or max_cases < 1:
            raise ValueError(
                f"max_cases must be a positive number of cases or None, got {max_cases!r}. "
                "On the command line, --max_cases None keeps every case."
            )
        split = {key: cases[:max_cases] for key, cases in split.items()}
    if check_data:
        split = _check_split(dataset_dir, split, output_dir, skip_broken_cases)
    split["dataset"] = {
        "name": str(content.get("name", Path(dataset_dir).name)),
        "dataset_dir": str(Path(dataset_dir).expanduser().resolve()),
        "fold": fold,
        "num_folds": num_folds,
        "seed": seed,
        "num_training": len(split["training"]),
        "num_validation": len(split["validation"]),
        "num_skipped": len(split.get("skipped", [])),
    }
    if output_dir is not None:
        path = Path(output_dir) / "split.json"
        atomic_write_text(path, json.dumps(split, indent=2) + "\n")
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


def _check_split(
    dataset_dir: str | Path, split: dict[str, Any], output_dir: str | Path | None, skip_broken_cases: bool
) -> dict[str, Any]:
    case_ids = [case["case_id"] for key in ("training", "validation") for case in split[key]]
    report = _check_cases(dataset_dir, case_ids, output_dir)
    if report.ok:
        logger.info(report.summary())
        return split
    if not skip_broken_cases:
        raise ValueError(f"the dataset check found problems, so training does not start.\n{report.text()}")

    broken = set(report.broken_cases)
    problems_by_case: dict[str, list[str]] = {}
    for problem in report.problems:
        if problem.case_id:
            problems_by_case.setdefault(problem.case_id, []).append(str(problem))
    skipped = [
        {**case, "problems": problems_by_case[case["case_id"]]}
        for key in ("training", "validation")
        for case in split[key]
        if case["case_id"] in broken
    ]
    kept = {key: [case for case in split[key] if case["case_id"] not in broken] for key in ("training", "validation")}
    logger.warning(
        "skip_broken_cases is set: training without %s (%s). Every problem found:\n%s",
        count(len(skipped), "broken case"),
        ", ".join(case["case_id"] for case in skipped) or "none",
        report.text(hint=False),
    )
    for key in ("training", "validation"):
        if not kept[key]:
            raise ValueError(
                f"every case of the {key} list is broken, so nothing is left to train with after skipping them. "
                f"Fix or replace the files named below, or use another dataset_dir.\n{report.text(hint=False)}"
            )
    return {**kept, "skipped": skipped, "data_problems": [str(problem) for problem in report.problems]}


def evaluation_cases(
    dataset_dir: str | Path,
    cases: list[dict[str, Any]],
    check_data: bool = True,
    skip_broken_cases: bool = False,
    output_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Return the cases to evaluate after checking them.

    Evaluation checks only the cases it evaluates (the validation fold, or every case of another task folder), so a
    broken training case does not stop it.

    Args:
        dataset_dir: the Decathlon task folder the cases come from.
        cases: the cases, as :func:`scripts.data.load_datalist` returns them.
        check_data: ``False`` returns the cases unchecked.
        skip_broken_cases: drop the broken cases, with a warning that lists them, instead of raising.
        output_dir: where the check's cache (``data_check_cache.json``) is kept; ``None`` keeps none.

    Raises:
        ValueError: with the check's report when a case to evaluate is broken and ``skip_broken_cases`` is not
            set, or when no case is left. Problems outside those cases are logged as a warning only.
    """
    if not as_bool("check_data", check_data):
        return cases
    report = _check_cases(dataset_dir, [case["case_id"] for case in cases], output_dir)
    broken = set(report.broken_cases)
    if not broken:
        # Files outside the listed cases (an image without its label) do not affect the evaluated cases.
        if report.ok:
            logger.info(report.summary())
        else:
            logger.warning("The dataset check found problems outside the cases to evaluate:\n%s", report.text())
        return cases
    if not as_bool("skip_broken_cases", skip_broken_cases):
        raise ValueError(
            f"the dataset check found problems in the cases to evaluate; restore them, or set skip_broken_cases "
            f"to true to evaluate the others.\n{report.text()}"
        )
    intact = [case for case in cases if case["case_id"] not in broken]
    logger.warning(
        "skip_broken_cases is set: evaluating without the broken cases %s.\n%s",
        ", ".join(sorted(broken)),
        report.text(hint=False),
    )
    if not intact:
        raise ValueError(
            f"every case to evaluate is broken. Fix or replace the files named below, or evaluate another "
            f"folder.\n{report.text(hint=False)}"
        )
    return intact


def _check_cases(dataset_dir: str | Path, case_ids: list[str], output_dir: str | Path | None) -> DataCheckReport:
    """Check the cases, with the check's cache in ``output_dir/data_check_cache.json`` (none without a folder)."""
    cache = Path(output_dir) / "data_check_cache.json" if output_dir is not None else None
    return check_dataset(dataset_dir, case_ids=case_ids, cache_path=cache)
