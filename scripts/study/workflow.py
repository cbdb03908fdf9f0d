"""The study's two commands: run a shard of the grid and write the report, or write the report alone."""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException

from .. import BUNDLE_ROOT
from ..options import as_bool
from ..options import count as plural
from ..tracking import sqlite_tracking_uri
from .report import collect, write_report
from .runner import StudyRunner
from .settings import DEFAULT_OVERLAY_DIR, DEFAULT_REFERENCE, PRESETS, StudySettings, parse_shard
from .store import StudyStore, check_tracking_uri

logger = logging.getLogger(__name__)

DEFAULT_DATASET_DIR = f"{BUNDLE_ROOT}/data/Task04_Hippocampus"
DEFAULT_OUTPUT_DIR = f"{BUNDLE_ROOT}/outputs/study"
DEFAULT_EXPERIMENT = "seglosses-study"
SETTINGS_ARTIFACT = "study/settings.json"


def run(
    preset: str = "quick",
    losses: str | Sequence[str] | None = None,
    seeds: int | str | Sequence[int] | None = None,
    folds: int | str | Sequence[int] | None = None,
    max_epochs: int | None = None,
    val_interval: int | None = None,
    dataset_dir: str = DEFAULT_DATASET_DIR,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    tracking_uri: str | None = None,
    shard: str = "0/1",
    study_name: str | None = None,
    reference: str | None = None,
    retry_failed: bool = False,
    report_dir: str | None = None,
    num_folds: int = 5,
    max_cases: int | None = None,
    overrides: str | Mapping[str, Any] | None = None,
    overlay_dir: str | None = None,
    surface_tolerance: float = 1.0,
    experiment_name: str = DEFAULT_EXPERIMENT,
) -> str:
    """Train and evaluate every (loss, seed, fold) of the study that has no result yet, then write the report.

    A rerun with the same settings skips the finished runs, restarts interrupted ones and keeps recorded failures.

    Args:
        preset: the budget. quick runs 1 seed, 1 fold and 10 epochs (hours on a 2-core CPU). full runs 3 seeds,
            5 folds and the config's epochs (for a GPU).
        losses: comma-separated loss names (overlays in configs/losses/); default: every registered loss.
        seeds: training seeds, e.g. 0,1,2; default: the preset's.
        folds: validation folds, e.g. 0,1; default: the preset's.
        max_epochs: training epochs per run; default: the preset's, else the config's.
        val_interval: validate every this many epochs; default: the preset's, else the config's.
        dataset_dir: the Decathlon task folder containing dataset.json.
        output_dir: folder for the runs' files, the report and the default MLflow database (mlflow.db).
        tracking_uri: MLflow tracking URI shared by every shard, e.g. http://127.0.0.1:5000; default: a SQLite
            database in output_dir.
        shard: i/n runs every n-th run of the sorted grid from the i-th (0/1: all), so n machines can share a study.
        study_name: name of the study in MLflow; default: the preset's name.
        reference: the loss every other loss is tested against; default: combo (the config's default loss), or
            the first of ``losses`` when combo is not among them.
        retry_failed: also run again the runs recorded as failed.
        report_dir: folder for results.md and results/; default: output_dir/report.
        num_folds: number of cross-validation folds of the split.
        max_cases: keep this many cases of each split list (smoke tests); default: all.
        overrides: further config overrides for every run, as JSON, e.g. '{"batch_size": 4}'.
        overlay_dir: folder of the loss overlays; default: configs/losses.
        surface_tolerance: tolerance of the normalised surface Dice, in mm.
        experiment_name: MLflow experiment of the study.
    """
    index, count = parse_shard(shard)
    retry_failed = as_bool("retry_failed", retry_failed)
    settings = StudySettings.create(
        preset=preset,
        losses=losses,
        reference=reference,
        seeds=seeds,
        folds=folds,
        num_folds=num_folds,
        max_epochs=max_epochs,
        val_interval=val_interval,
        max_cases=max_cases,
        overrides=_mapping(overrides),
        dataset_dir=dataset_dir,
        overlay_dir=overlay_dir,
        surface_tolerance=surface_tolerance,
        study_name=study_name,
        experiment_name=experiment_name,
    )
    output = Path(output_dir).expanduser().resolve()
    store = open_store(tracking_uri or sqlite_tracking_uri(output), settings.experiment_name, settings.study_name)
    parent = store.parent(create=True)
    parent_id = parent.info.run_id
    client = store.client
    client.update_run(parent_id, status=RunStatus.to_string(RunStatus.RUNNING))
    for key, value in {
        "study.preset": settings.preset,
        "study.reference": settings.reference,
        "study.losses": ",".join(settings.losses),
        "study.seeds": _join(settings.seeds),
        "study.folds": _join(settings.folds),
        "study.max_epochs": settings.max_epochs,
        "study.dataset": settings.dataset_name,
    }.items():
        client.set_tag(parent_id, key, str(value))
    command = _command(settings, dataset_dir, output_dir, tracking_uri, shard, retry_failed)
    client.set_tag(parent_id, "study.command", command)
    settings_path = output / "settings.json"
    settings_path.parent.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(settings.to_json(), encoding="utf-8")
    client.log_artifact(parent_id, str(settings_path), artifact_path="study")
    logger.info(
        "Study %r: parent run %s in experiment %r at %s.",
        settings.study_name,
        parent_id,
        settings.experiment_name,
        store.tracking_uri,
    )

    runner = StudyRunner(settings, store, output, shard=(index, count), retry_failed=retry_failed)
    try:
        results = runner.run(parent_id)
    except KeyboardInterrupt:
        client.set_terminated(parent_id, status=RunStatus.to_string(RunStatus.KILLED))
        raise

    report = _report(settings, store, parent_id, Path(report_dir) if report_dir else output / "report", command)
    client.set_terminated(parent_id, status=RunStatus.to_string(RunStatus.FINISHED))
    counts = {
        outcome: sum(result.outcome == outcome for result in results)
        for outcome in ("complete", "failed", "skipped_complete", "skipped_failed", "skipped_running")
    }
    earlier = counts["skipped_complete"] + counts["skipped_failed"]
    outcome = (
        f"Shard {index}/{count}: {plural(counts['complete'], 'run')} finished, {counts['failed']} failed, "
        f"{earlier} had a result already, {counts['skipped_running']} in progress elsewhere. Report: {report}"
    )
    if counts["failed"]:
        # The exit status signals the failed runs to a pipeline; the report and MLflow contain the finished ones.
        raise RuntimeError(
            f"{outcome}. The report's section 'Failed runs' and the runs' error tags in MLflow give each error; "
            "after fixing it, run the same command with --retry_failed true."
        )
    return outcome


def report(
    study_name: str = "quick",
    output_dir: str = DEFAULT_OUTPUT_DIR,
    tracking_uri: str | None = None,
    report_dir: str | None = None,
    experiment_name: str = DEFAULT_EXPERIMENT,
) -> str:
    """Write the report of a study from MLflow alone, e.g. after every shard has finished.

    The settings are those of the study's last `run` command, read from its parent run.

    Args:
        study_name: name of the study in MLflow (the preset's name unless run was given --study_name).
        output_dir: the study's output folder, which contains the default MLflow database and report folder.
        tracking_uri: MLflow tracking URI; default: the SQLite database in output_dir.
        report_dir: folder for results.md and results/; default: output_dir/report.
        experiment_name: MLflow experiment of the study.
    """
    output = Path(output_dir).expanduser().resolve()
    if tracking_uri is None:
        database = output / "mlflow.db"
        if not database.is_file():
            # MLflow would create an empty database there, and sqlite_tracking_uri the folder.
            raise FileNotFoundError(
                f"no study database {database}: pass the --output_dir that `python -m scripts.study run` used, or "
                "--tracking_uri with the study's MLflow store."
            )
        tracking_uri = f"sqlite:///{database}"
    store = open_store(tracking_uri, experiment_name, study_name, create=False)
    parent = store.parent()
    if parent is None:
        raise ValueError(
            f"no study named {study_name!r} in experiment {experiment_name!r} at {store.tracking_uri}; run "
            "`python -m scripts.study run` first, or pass the --study_name and --tracking_uri that it used."
        )
    path = store.client.download_artifacts(parent.info.run_id, SETTINGS_ARTIFACT, str(output))
    settings = StudySettings.from_json(Path(path).read_text(encoding="utf-8"))
    command = parent.data.tags.get("study.command", "unknown")
    rewritten_by = f"python -m scripts.study report --study_name {shlex.quote(study_name)}"
    return str(
        _report(
            settings,
            store,
            parent.info.run_id,
            Path(report_dir) if report_dir else output / "report",
            command,
            rewritten_by,
        )
    )


def open_store(tracking_uri: str, experiment_name: str, study_name: str, create: bool = True) -> StudyStore:
    """Return the study's MLflow store, or raise ``RuntimeError`` naming the URI when it cannot be reached.

    ``create=False`` raises ``ValueError`` instead of creating a missing experiment (see :class:`StudyStore`).
    """
    check_tracking_uri(tracking_uri)
    try:
        return StudyStore(tracking_uri, experiment_name, study_name, create=create)
    except MlflowException as error:
        raise RuntimeError(
            f"cannot open the MLflow tracking store {tracking_uri} ({error.message}). Pass --tracking_uri with a "
            "sqlite:///path/to/mlflow.db file or the http:// address of a running MLflow server."
        ) from error


def _report(
    settings: StudySettings,
    store: StudyStore,
    parent_id: str,
    report_dir: Path,
    command: str,
    rewritten_by: str | None = None,
) -> Path:
    results = collect(settings, store)
    paths = write_report(results, report_dir, command, rewritten_by)
    for path in paths:
        artifact_path = "report" if path.parent == report_dir else "report/results"
        store.client.log_artifact(parent_id, str(path), artifact_path=artifact_path)
    return paths[0]


def _command(
    settings: StudySettings, dataset_dir: str, output_dir: str, tracking_uri: str | None, shard: str, retry_failed: bool
) -> str:
    """Return the command line that repeats this study, with every setting spelled out."""
    options: dict[str, Any] = {
        "preset": settings.preset,
        "losses": ",".join(settings.losses),
        "seeds": _join(settings.seeds),
        "folds": _join(settings.folds),
    }
    preset = PRESETS[settings.preset]
    if preset.max_epochs not in (None, settings.max_epochs):
        options["max_epochs"] = settings.max_epochs
    if preset.val_interval not in (None, settings.val_interval):
        options["val_interval"] = settings.val_interval
    if settings.study_name != settings.preset:
        options["study_name"] = settings.study_name
    if settings.reference != DEFAULT_REFERENCE:
        options["reference"] = settings.reference
    options["dataset_dir"] = dataset_dir
    if output_dir != DEFAULT_OUTPUT_DIR:
        options["output_dir"] = output_dir
    if tracking_uri:
        options["tracking_uri"] = tracking_uri
    if str(shard) != "0/1":
        options["shard"] = shard
    if settings.max_cases:
        options["max_cases"] = settings.max_cases
    if settings.overrides:
        options["overrides"] = json.dumps(dict(settings.overrides))
    if Path(settings.overlay_dir) != DEFAULT_OVERLAY_DIR.resolve():
        options["overlay_dir"] = settings.overlay_dir
    if settings.num_folds != 5:
        options["num_folds"] = settings.num_folds
    if settings.surface_tolerance != 1.0:
        options["surface_tolerance"] = settings.surface_tolerance
    if settings.experiment_name != DEFAULT_EXPERIMENT:
        options["experiment_name"] = settings.experiment_name
    if retry_failed:
        options["retry_failed"] = "true"
    arguments = " ".join(f"--{key} {shlex.quote(str(value))}" for key, value in options.items())
    return f"python -m scripts.study run {arguments}"


def _mapping(value: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if value is None or isinstance(value, Mapping):
        return dict(value) if value is not None else None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"overrides must be a JSON object, e.g. '{{\"batch_size\": 4}}'; got {value!r}.") from error
    if not isinstance(parsed, dict):
        raise ValueError(f"overrides must be a JSON object, e.g. '{{\"batch_size\": 4}}'; got {value!r}.")
    return parsed


def _join(values: Sequence[int]) -> str:
    return ",".join(str(value) for value in values)
