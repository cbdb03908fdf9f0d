"""Evaluation outputs: a per-case CSV of every metric and class, a summary, and an MLflow run that holds both."""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from mlflow.entities import Metric, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .data.datalist import case_id_from_path
from .distributed import gather_case_ids, rank
from .tracking import (
    connect,
    default_artifact_location,
    experiment_id,
    git_commit,
    log_params,
    plain_values,
    short_reason,
)

logger = logging.getLogger(__name__)


def require_checkpoint(path: str | Path) -> str:
    """Return ``path`` as a string, or raise an error that explains how to get a usable checkpoint.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is empty, as an interrupted copy leaves it (PyTorch would fail with a bare EOFError).
    """
    path = Path(path).expanduser()
    train_first = (
        "Train first (python -m monai.bundle run --config_file configs/train.yaml --meta_file metadata.json "
        "--dataset_dir DIR), or pass --ckpt_path with an existing model.pt."
    )
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found. {train_first}")
    if path.stat().st_size == 0:
        raise ValueError(
            f"checkpoint {path} is empty (0 bytes), e.g. from an interrupted copy. Copy it again. {train_first}"
        )
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle means the same to the user
        raise ValueError(
            f"checkpoint {path} cannot be loaded ({short_reason(error, width=200)}). Copy it again. {train_first}"
        ) from error
    if isinstance(content, Mapping) and not _holds_weights(content):
        if "optimizer" in content and "network" in content:
            raise ValueError(
                f"checkpoint {path} is a training state (the file that resumes a training), not the network's "
                f"weights. Pass the model.pt beside it, the best model of that training."
            )
        keys = ", ".join(sorted(map(str, content))[:8])
        raise ValueError(
            f"checkpoint {path} does not contain the segmentation network's weights (its keys: {keys}). Pass the "
            f"model.pt that a training wrote."
        )
    return str(path)


def _holds_weights(content: Mapping[str, Any]) -> bool:
    """Return whether ``content`` is a state dict, or has one under ``model`` as MONAI's CheckpointLoader reads."""
    if isinstance(content.get("model"), Mapping):
        content = content["model"]
    return all(isinstance(value, torch.Tensor) for value in content.values())


def read_model_description(checkpoint: str | Path) -> dict[str, Any]:
    """Return the content of ``model.json`` beside ``checkpoint``, or ``{}`` without the file.

    Raises:
        ValueError: when the file cannot be read as a JSON object.
    """
    path = Path(checkpoint).expanduser().with_suffix(".json")
    try:
        description = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} cannot be read as JSON ({error}); delete it or train again.") from error
    if not isinstance(description, dict):
        raise ValueError(f"{path} must contain a JSON object; delete it or train again.")
    return description


def warn_if_not_trained_settings(checkpoint: str | Path, description: Mapping[str, Any], **settings: Any) -> None:
    """Log a warning for each setting that differs from the value ``model.json`` records of the training.

    Evaluation and inference take ``patch_size`` and ``pixdim`` from ``model.json`` unless the command line sets
    them. A network run on other voxel sizes or windows than it was trained on scores lower, with no error.
    """
    for name, value in settings.items():
        trained = description.get(name)
        if trained is None or _as_floats(trained) == _as_floats(value):
            continue
        logger.warning(
            "%s was trained with %s %s, but this run uses %s: a network run on other windows or voxel sizes than "
            "it was trained on scores lower. Leave --%s unset to use the training's value.",
            checkpoint,
            name,
            list(trained),
            list(value),
            name,
        )


def warn_of_training_cases(
    cases: Sequence[Mapping[str, Any]], training_cases: Sequence[Mapping[str, Any]], fold: int
) -> None:
    """Log a warning when cases to evaluate have the ids of training cases of the checkpoint's split.

    A folder given as ``eval_dataset_dir`` may hold copies of the cases the model trained on; their scores would
    overstate the model's. Case ids are the image names without suffix.
    """
    training_ids = {case["case_id"] for case in training_cases}
    shared = [case["case_id"] for case in cases if case["case_id"] in training_ids]
    if shared:
        listed = ", ".join(shared[:10]) + (", ..." if len(shared) > 10 else "")
        logger.warning(
            "%d of the %d cases to evaluate have the names of training cases of fold %s (%s). If they are the same "
            "images, the model trained on them and their scores overstate it; remove them from the folder.",
            len(shared),
            len(cases),
            fold,
            listed,
        )


def _as_floats(value: Any) -> list[float] | None:
    try:
        return [float(item) for item in value]
    except (TypeError, ValueError):
        return None


def trained_model_description(checkpoint: str | Path, loss_name: str, fold: int | None = None) -> dict[str, Any]:
    """Return what ``model.json`` beside ``checkpoint`` records of its training, with the loss to name the run by.

    The loss comes from the file when it has one, so that an evaluation run without the training's loss overlay
    still carries the loss that trained the weights. A config loss that differs is logged as a warning, and so is a
    config fold that differs from the training's (its validation cases then include training cases). Without the
    file (a checkpoint from elsewhere), the config's loss is used and the training run is unknown.
    """
    description = read_model_description(checkpoint)
    if not description:
        return {"loss": loss_name, "training_run_id": "unknown"}
    trained_loss = description.get("loss", loss_name)
    if trained_loss != loss_name:
        logger.warning(
            "%s was trained with the loss %r (MLflow run %s), but the config's loss is %r; the evaluation run is "
            "named and tagged after %r. Pass the training's loss overlay to silence this warning.",
            checkpoint,
            trained_loss,
            description.get("training_run_id"),
            loss_name,
            trained_loss,
        )
    trained_fold = description.get("fold")
    if fold is not None and trained_fold is not None and int(trained_fold) != int(fold):
        logger.warning(
            "%s was trained on fold %s, but the config's fold is %s: the validation cases of fold %s include cases "
            "this model trained on. Pass --fold %s to evaluate on its held-out cases.",
            checkpoint,
            trained_fold,
            fold,
            fold,
            trained_fold,
        )
    return {**description, "loss": trained_loss, "training_run_id": description.get("training_run_id") or "unknown"}


def evaluation_tracking_uri(
    tracking_uri: str | None,
    run_id: str | None = None,
    fallback_dir: str | Path | None = None,
    training_run_id: str | None = None,
) -> str | None:
    """Return the tracking URI the evaluation logs into, checked before any case is evaluated.

    Evaluating every case takes minutes, so an unreachable store or a mistyped ``eval_run_id`` is reported first.
    The store is checked as training checks it (:func:`scripts.tracking.connect`): without a response the
    evaluation stops, or with ``fallback_dir`` logs into ``fallback_dir/mlflow.db``. A run to log into must exist
    in the store that responds, and be the checkpoint's training run when ``model.json`` names one, so that the
    evaluation's metrics do not land in an unrelated run.

    Args:
        tracking_uri: the config's tracking URI; ``None`` or empty logs nothing and checks nothing.
        run_id: ``eval_run_id``, an existing run to log into, or ``None`` for a new run.
        fallback_dir: the folder of the local store to fall back to, or ``None`` to stop instead.
        training_run_id: the training run that ``model.json`` names, or ``None``/``"unknown"`` without one.

    Raises:
        RuntimeError: when the store does not respond and there is no fallback.
        ValueError: when ``run_id`` is not a run of the store, is another run than ``training_run_id``, or already
            contains an evaluation.
    """
    if not tracking_uri:
        return None
    if run_id and training_run_id not in (None, "unknown") and str(run_id) != str(training_run_id):
        raise ValueError(
            f"eval_run_id {run_id!r} is not the run that trained the checkpoint: model.json beside it names the "
            f"training run {training_run_id!r}. Pass --eval_run_id {training_run_id}, or leave eval_run_id unset to "
            "log into a new run."
        )
    active = connect(tracking_uri, fallback_dir=fallback_dir)
    if run_id:
        try:
            run = MlflowClient(tracking_uri=active).get_run(str(run_id))
        except MlflowException as error:
            fallback = "" if active == tracking_uri else f" (the fallback store; {tracking_uri} did not respond)"
            raise ValueError(
                f"eval_run_id {run_id!r} is not a run of the tracking store {active}{fallback}. Pass the id of an "
                "existing run (model.json beside the checkpoint names the training's run), or leave eval_run_id "
                "unset to log into a new run."
            ) from error
        if any(key.startswith("eval.") for key in run.data.params):
            raise ValueError(
                f"MLflow run {run_id} already contains an evaluation (its eval.* parameters), and MLflow cannot change "
                "a logged parameter. Leave eval_run_id unset to log this evaluation into a new run."
            )
    return active


class CaseMetricsWriter:
    """Write the per-case metrics of an evaluator run to CSV and JSON, and log them to a new MLflow run.

    Files in ``output_dir``: ``cases.csv`` (one row per case: case id, then ``<metric>.<class>`` columns) and
    ``summary.json`` (per metric and class: mean, standard deviation, median, number of cases with a value and
    number without one, e.g. an HD95 that is undefined because the prediction misses the class). Its key
    ``skipped_cases`` lists the cases of ``listed_cases`` that were not evaluated (left out by
    ``skip_broken_cases``); the MLflow run has them as the parameters ``num_skipped_cases`` and ``skipped_cases``,
    and a warning names them. Its key ``settings`` repeats ``params`` (checkpoint, surface tolerance, ...).

    In distributed evaluation the writer runs on every process. It gathers the case ids of all processes and puts
    them and MONAI's gathered metric details back in the order of the dataset. Rank 0 alone writes the files and
    the MLflow run, which then equal those of a single-process evaluation.

    Args:
        output_dir: folder for the two files.
        class_names: class names in label order, background first; the metrics cover the foreground classes.
        metrics: column prefix -> name of the evaluator metric whose per-case details to write, e.g.
            ``{"dice": "val_mean_dice", "hd95": "val_hd95"}``.
        tracking_uri: MLflow tracking URI; ``None`` skips MLflow.
        experiment_name: MLflow experiment.
        run_name: name of the evaluation run.
        params: parameters of the evaluation run (checkpoint, dataset, ...).
        run_id: an existing run to log into instead of a new one, e.g. the training run of the checkpoint. Its
            status stays as it is, and the files go under ``evaluation/``. The parameters get the prefix
            ``eval.`` because MLflow forbids changing a logged parameter and the training run has its own
            ``fold`` and ``seed``.
        listed_cases: the ids of the cases the evaluation was asked for, before broken ones were skipped; ``None``
            records no skipped cases.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        metrics: Mapping[str, str],
        tracking_uri: str | None = None,
        experiment_name: str = "seglosses",
        run_name: str = "evaluate",
        params: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        listed_cases: Sequence[str] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.foreground = list(class_names)[1:]
        self.metrics = dict(metrics)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.params = dict(params or {})
        self.run_id = run_id
        self.listed_cases = None if listed_cases is None else [str(case_id) for case_id in listed_cases]
        self.case_ids: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record_case_ids)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _reset(self, engine: Engine) -> None:
        self.case_ids = []

    def _record_case_ids(self, engine: Engine) -> None:
        # MONAI's evaluator decollates the batch into a list of per-case dicts; a collated dict is handled too.
        batch = engine.state.batch
        items = batch if isinstance(batch, list) else [batch]
        for item in items:
            image = item["image"]
            filenames = image.meta.get("filename_or_obj") if hasattr(image, "meta") else None
            if filenames is None:
                count = image.shape[0] if not isinstance(batch, list) else 1
                filenames = [f"case_{len(self.case_ids) + index}" for index in range(count)]
            elif isinstance(filenames, str):
                filenames = [filenames]
            self.case_ids.extend(case_id_from_path(name) for name in filenames)

    def write(self, engine: Engine) -> dict[str, Any] | None:
        """Write the files and the MLflow run; return the summary, or ``None`` on ranks other than 0."""
        case_ids, order = gather_case_ids(self.case_ids)
        self.case_ids = [case_ids[index] for index in order]
        if rank() > 0:
            return None
        tables = {}
        for prefix, metric_name in self.metrics.items():
            details = engine.state.metric_details.get(metric_name)
            if details is None:
                raise KeyError(f"the evaluator has no per-case details of {metric_name!r}; enable save_details.")
            table = np.asarray(torch.as_tensor(details).detach().cpu(), dtype=np.float64)
            if table.shape != (len(self.case_ids), len(self.foreground)):
                raise ValueError(
                    f"{metric_name} details have shape {table.shape}, expected ({len(self.case_ids)} cases, "
                    f"{len(self.foreground)} classes)."
                )
            tables[prefix] = table[order]

        self.output_dir.mkdir(parents=True, exist_ok=True)
        cases_path = self.output_dir / "cases.csv"
        with cases_path.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            columns = [f"{prefix}.{name}" for prefix in tables for name in self.foreground]
            writer.writerow(["case_id", *columns])
            for row, case_id in enumerate(self.case_ids):
                values = [tables[prefix][row, column] for prefix in tables for column in range(len(self.foreground))]
                writer.writerow([case_id, *(f"{value:.6g}" for value in values)])

        summary = {prefix: summarise(table, self.foreground) for prefix, table in tables.items()}
        evaluated = set(self.case_ids)
        skipped = [case_id for case_id in self.listed_cases or [] if case_id not in evaluated]
        summary_path = self.output_dir / "summary.json"
        content = {**summary, "skipped_cases": skipped, "settings": plain_values(self.params)}
        summary_path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
        logger.info("Evaluation of %d cases written to %s and %s.", len(self.case_ids), cases_path, summary_path)
        if skipped:
            logger.warning(
                "Not evaluated, because broken and skip_broken_cases is set: %d of the %d listed cases (%s). The "
                "means leave them out; summary.json and the MLflow run list them.",
                len(skipped),
                len(self.listed_cases),
                ", ".join(skipped),
            )
        for prefix, per_class in summary.items():
            means = ", ".join(f"{name} {values['mean']:.4f}" for name, values in per_class.items())
            logger.info("Mean %s: %s.", prefix, means)

        if self.tracking_uri:
            self._log_to_mlflow(summary, skipped, [cases_path, summary_path])
        return summary

    def _log_to_mlflow(self, summary: Mapping[str, Any], skipped: Sequence[str], files: Sequence[Path]) -> None:
        client = MlflowClient(tracking_uri=self.tracking_uri)
        params = {**self.params, "num_cases": len(self.case_ids)}
        if self.listed_cases is not None:
            params.update(num_skipped_cases=len(skipped), skipped_cases=list(skipped))
        if self.run_id:
            run_id, artifact_path = self.run_id, "evaluation"
            params = {f"eval.{key}": value for key, value in params.items()}
        else:
            experiment = experiment_id(client, self.experiment_name, default_artifact_location(self.tracking_uri))
            run = client.create_run(
                experiment,
                run_name=self.run_name,
                tags={
                    "evaluation": "true",
                    "mlflow.source.git.commit": git_commit(),
                    **{key: str(value) for key, value in self.params.items() if key in ("loss", "fold", "seed")},
                },
            )
            run_id, artifact_path = run.info.run_id, None
        log_params(client, run_id, params)
        timestamp = int(time.time() * 1000)
        metrics = []
        for prefix, per_class in summary.items():
            for name, values in per_class.items():
                if math.isfinite(values["mean"]):
                    metrics.append(Metric(f"eval_{prefix}.{name}", values["mean"], timestamp, 0))
        client.log_batch(run_id, metrics=metrics)
        for path in files:
            client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        if not self.run_id:
            client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED))
        logger.info("Evaluation logged to MLflow run %s.", run_id)


def summarise(table: np.ndarray, class_names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Summarise a ``(cases, classes)`` table per class, plus ``mean`` over the classes' per-case means."""
    summary: dict[str, dict[str, float]] = {}
    for column, name in enumerate(class_names):
        values = table[:, column]
        finite = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "std": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
            "median": float(np.median(finite)) if finite.size else float("nan"),
            "cases": int(finite.size),
            "cases_without_value": int(values.size - finite.size),
        }
    finite_mask = np.isfinite(table)
    counts = finite_mask.sum(axis=1)
    sums = np.where(finite_mask, table, 0.0).sum(axis=1)
    # The mean over the classes that have a value in that case; a case without any value is left out.
    finite_means = sums[counts > 0] / counts[counts > 0]
    summary["mean"] = {
        "mean": float(finite_means.mean()) if finite_means.size else float("nan"),
        "std": float(finite_means.std(ddof=1)) if finite_means.size > 1 else float("nan"),
        "median": float(np.median(finite_means)) if finite_means.size else float("nan"),
        "cases": int(finite_means.size),
        "cases_without_value": int(table.shape[0] - finite_means.size),
    }
    return summary
