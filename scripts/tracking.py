"""MLflow tracking of one training run: parameters at the start, metrics per epoch, artifacts at the end.

We go beyond MONAI's ``MLFlowHandler`` (MONAI 1.6.1) here because that handler picks up any unfinished run that
has the same name, or any unfinished run at all when no name is given, so a crashed run silently receives the next
run's metrics. This tracker always creates a new run (its name says loss, fold and seed), logs per-class
validation metrics from MONAI's per-case metric details, records the loss's own trainable parameters and weights,
and marks the run failed with the error when training raises.

It also survives the failures of long trainings: :func:`connect` checks the tracking server before training
(falling back to the local SQLite store when asked), calls made while the server is away are kept and sent later
(:mod:`scripts.tracking_buffer`), and a training resumed from its checkpoint continues its MLflow run without
logging an epoch twice.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import platform
import subprocess
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import torch
import yaml
from ignite.engine import Engine, Events
from mlflow.entities import Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from . import BUNDLE_ROOT
from .checkpoints import saved_by_run
from .losses import describe_loss, get_loss_spec
from .metrics import per_class_means
from .plots import plot_learning_curves
from .tracking_buffer import (
    TRAINING_MAX_RETRIES,
    TRAINING_TIMEOUT_S,
    UNSENT_FILE,
    BufferedClient,
    is_outage,
    request_limits,
)

logger = logging.getLogger(__name__)

# MLflow rejects parameter values longer than this (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3).
MAX_PARAM_LENGTH = 6000


def close_replaced_run(state: Mapping[str, Any], reason: str, client: MlflowClient | None = None) -> None:
    """Mark the MLflow run in a checkpoint's tracking ``state`` as killed when it is still ``RUNNING``.

    A training killed with its process leaves its run ``RUNNING``, and a new training that overwrites the
    checkpoint (``--resume never``) would leave it so for good. The run gets the tag ``replaced`` with ``reason``.
    A run that ended (finished or failed) is left as it is. An unreachable store only logs a warning, because
    the new training does not depend on it.
    """
    run_id, tracking_uri = state.get("run_id"), state.get("tracking_uri")
    if not run_id or not tracking_uri:
        return
    database = tracking_uri.removeprefix("sqlite:///") if tracking_uri.startswith("sqlite:///") else None
    if database is not None and not Path(database).is_file():
        # MLflow would create an empty database there.
        logger.warning("MLflow run %s of the replaced training was not marked killed: %s not found.", run_id, database)
        return
    try:
        client = client or MlflowClient(tracking_uri=tracking_uri)
        if client.get_run(run_id).info.status != RunStatus.to_string(RunStatus.RUNNING):
            return
        client.set_tag(run_id, "replaced", reason[:MAX_PARAM_LENGTH])
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.KILLED))
        logger.info("MLflow run %s of the replaced training marked killed.", run_id)
    except (MlflowException, OSError) as error:
        logger.warning(
            "Marking MLflow run %s in %s of the replaced training killed failed: %s", run_id, tracking_uri, error
        )


def sqlite_tracking_uri(output_dir: str | Path) -> str:
    """Return the default tracking URI: a SQLite database ``mlflow.db`` in ``output_dir``."""
    path = Path(output_dir).expanduser().resolve() / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def connect(tracking_uri: str, fallback_dir: str | Path | None = None, timeout: float = 10.0) -> str:
    """Return the tracking URI to log into: ``tracking_uri`` when its store responds, else the fallback store.

    The check makes one request without retries (``timeout`` seconds at most), so that a server that is down fails
    the run before any data are loaded rather than after the first epoch.

    Args:
        tracking_uri: the MLflow tracking URI of the config.
        fallback_dir: when given and ``tracking_uri`` does not respond, log into the SQLite store
            ``fallback_dir/mlflow.db`` instead, with a warning; ``None`` raises.
        timeout: seconds to wait for a response.

    Raises:
        RuntimeError: when the store does not respond and there is no fallback; the message names the URI and the
            options.
    """
    try:
        with request_limits(max_retries=0, timeout=timeout):
            MlflowClient(tracking_uri=tracking_uri).search_experiments(max_results=1)
    except Exception as error:  # noqa: BLE001 - sorted by is_outage; any other error is re-raised
        if not is_outage(error):
            raise
        reason = short_reason(error)
        if fallback_dir is None:
            raise RuntimeError(
                f"MLflow tracking server {tracking_uri} cannot be reached ({reason}). Start the server, pass "
                "--tracking_uri with a reachable one, or pass --tracking_fallback true to log into the local store "
                "output_dir/mlflow.db instead."
            ) from error
        fallback = sqlite_tracking_uri(fallback_dir)
        logger.warning(
            "MLflow tracking server %s cannot be reached (%s); tracking_fallback is set, so this run logs into %s.",
            tracking_uri,
            reason,
            fallback,
        )
        return fallback
    return tracking_uri


def short_reason(error: BaseException, width: int = 300) -> str:
    """Return ``Type: message`` on one line, shortened at a word boundary (urllib3's messages run to many lines)."""
    return textwrap.shorten(f"{type(error).__name__}: {error}", width=width, placeholder=" ...")


def git_commit(directory: str | Path = BUNDLE_ROOT) -> str:
    """Return the bundle's git commit, with ``-dirty`` for uncommitted changes, or ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if status else commit


def running_config() -> dict[str, Any] | None:
    """Return the merged config of the running ``monai.bundle`` workflow, overrides applied, or ``None``.

    MONAI gives config components no handle on their own config, so this looks up the call stack for the
    ``ConfigWorkflow`` that is instantiating them.
    """
    from monai.bundle import ConfigWorkflow

    for frame_info in inspect.stack(context=0):
        candidate = frame_info.frame.f_locals.get("self")
        if isinstance(candidate, ConfigWorkflow):
            return candidate.parser.get()
    return None


class MLflowTracker:
    """Track a ``SupervisedTrainer`` run and its validation rounds in MLflow.

    Logged on start: the loss (name, family, paper, every hyperparameter), the network (class, parameter count,
    channels), the optimizer and learning rate, the training settings in ``params``, the dataset (name, case counts)
    and the git commit; tags ``loss``, ``loss_family``, ``fold`` and ``seed``; the split and the resolved config as
    artifacts. Per epoch: ``train_loss`` (mean over the epoch's iterations), ``learning_rate``, the loss's scalar
    parameters (``loss_param.*``) and weights (``loss_weight.*``), and for a weighted sum each member's unweighted
    mean (``train_loss.<member>``). Per validation round: ``val_mean_dice``,
    ``val_hd95`` and per-class ``val_dice.<class>`` and ``val_hd95.<class>``. On completion: the best checkpoint
    and ``learning_curves.png``. An exception marks the run ``FAILED`` with the error in the ``error`` tag, and
    Ctrl-C marks it ``KILLED`` with the tag ``interrupted``.

    Args:
        tracking_uri: any MLflow tracking URI (``sqlite:///...``, ``http://host:5000``, ...).
        experiment_name: experiment to log into; created when missing.
        output_dir: folder for local files (the learning-curve plot, the resolved config).
        loss: the loss being trained.
        network: the trained network.
        optimizer: the optimizer.
        evaluator: the validation ``SupervisedEvaluator``; its metrics are logged after each round.
        split: the split from :func:`scripts.data.prepare_split`.
        class_names: names of the classes in label order, background first.
        params: further parameters, e.g. epochs, batch size, patch size, seed, fold.
        loss_name: the name the run is filed under (run name, ``loss`` tag and parameter, ``loss_family`` tag);
            default the registry name of ``loss``. An overlay that trains a registered loss inside a combination
            (the boundary loss inside a weighted sum with a schedule) sets it to that loss's name.
        run_name: name of the new run; default ``<loss_name>-fold<fold>-seed<seed>``.
        tags: further tags, e.g. a study's id and settings hash.
        parent_run_id: id of an existing run to nest this run under (MLflow's ``mlflow.parentRunId`` tag), e.g. a
            study's parent run; ``None`` creates a top-level run.
        checkpoint_path: the best checkpoint, logged as an artifact at the end.
        loss_transforms: the transforms that compute the loss's extra targets (the config's ``loss_transforms``);
            their settings are logged as ``loss_transform.<class>.<attribute>`` parameters.
        artifact_location: where a new experiment stores artifacts; default ``mlartifacts`` beside a SQLite
            database, the server's default otherwise.
        requested_tracking_uri: the URI the config asked for, when ``tracking_uri`` is a fallback from
            :func:`connect`; the run is tagged ``tracking_fallback_from`` and the end of training repeats it.
        retry_interval: seconds between attempts to reach the tracking server during an outage.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        output_dir: str | Path,
        loss: torch.nn.Module,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        evaluator: Engine | None,
        split: Mapping[str, Any],
        class_names: Sequence[str],
        params: Mapping[str, Any] | None = None,
        loss_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        checkpoint_path: str | Path | None = None,
        loss_transforms: Sequence[Any] = (),
        artifact_location: str | None = None,
        requested_tracking_uri: str | None = None,
        retry_interval: float = 60.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.output_dir = Path(output_dir)
        self.loss = loss
        self.network = network
        self.optimizer = optimizer
        self.evaluator = evaluator
        self.split = split
        self.class_names = list(class_names)
        self.params = dict(params or {})
        self.loss_name = loss_name or getattr(loss, "registry_name", type(loss).__name__)
        self.tags = dict(tags or {})
        self.parent_run_id = parent_run_id
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.loss_transforms = list(loss_transforms or ())
        self.artifact_location = artifact_location or default_artifact_location(tracking_uri)
        self.run_name = run_name or self._default_run_name()
        self.requested_tracking_uri = requested_tracking_uri or tracking_uri
        self.retry_interval = retry_interval
        self.run_id: str | None = None
        self._marked_failed = False
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._resume: dict[str, Any] | None = None
        self._logged_steps: set[tuple[str, int]] = set()
        self._epoch_losses: list[float] = []
        self._epoch_member_losses: dict[str, list[float]] = {}
        self._epoch_learning_rate = float("nan")
        self._trainer: Engine | None = None

    # Both clients are created on first use: creating one creates a SQLite database's tables, so a tracker that is
    # built but never attached (on the ranks other than 0 of a distributed run) must not touch the store.

    @functools.cached_property
    def mlflow_client(self) -> MlflowClient:
        """The MLflow client for run creation and lookups, which go straight to MLflow."""
        return MlflowClient(tracking_uri=self.tracking_uri)

    @functools.cached_property
    def client(self) -> BufferedClient:
        """The client for what the run logs after its creation, buffered through tracking-server outages."""
        return BufferedClient(self.tracking_uri, self.output_dir / UNSENT_FILE, self.retry_interval, self.mlflow_client)

    def attach(self, trainer: Engine) -> None:
        """Register the handlers on the trainer and, when given, on the evaluator."""
        self._trainer = trainer
        trainer.add_event_handler(Events.STARTED, self._start_or_explain)
        trainer.add_event_handler(Events.EPOCH_STARTED, self._record_learning_rate)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, self._record_iteration)
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)
        trainer.add_event_handler(Events.COMPLETED, self.finish)
        trainer.add_event_handler(Events.EXCEPTION_RAISED, self.fail)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self.log_validation)

    # Event handlers.

    def start(self, engine: Engine) -> None:
        if self._resume is not None:
            self._continue_run()
            return

        experiment_id = self._experiment_id()
        commit = git_commit()
        tags = {
            "loss": self.loss_name,
            "mlflow.source.git.commit": commit,
            **{key: str(value) for key, value in self.tags.items()},
        }
        description = describe_loss(self.loss) if hasattr(self.loss, "hyperparameters") else {}
        if description.get("loss") != self.loss_name:
            # The registered loss trains inside a combination: file the run under its name and family.
            description["loss_combination"] = description.get("loss")
            description["loss"] = self.loss_name
            try:
                spec = get_loss_spec(self.loss_name)
                description["loss_family"] = spec.family
                description["loss_paper"] = spec.reference
            except ValueError:
                description.pop("loss_family", None)
        if "loss_family" in description:
            tags["loss_family"] = str(description["loss_family"])
        for key in ("fold", "seed"):
            if key in self.params:
                tags[key] = str(self.params[key])
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        if self.requested_tracking_uri != self.tracking_uri:
            tags["tracking_fallback_from"] = self.requested_tracking_uri
        run = self.mlflow_client.create_run(experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        self._announce_run()
        logger.info(
            "MLflow run %s (%s) in experiment %r at %s.",
            self.run_name,
            self.run_id,
            self.experiment_name,
            self.tracking_uri,
        )
        self._log_params({**description, **self._run_params(engine), "git_commit": commit})
        self._log_json_artifact(dict(self.split), "split.json")
        config = running_config()
        if config is not None:
            self._log_yaml_artifact(config, "config.yaml")
        self._log_skipped_cases()

    def log_epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        metrics: dict[str, float] = {}
        if self._epoch_losses:
            metrics["train_loss"] = sum(self._epoch_losses) / len(self._epoch_losses)
            # The console shows every 20th iteration only; this line also covers epochs shorter than that.
            logger.info(
                "Epoch %d/%d: mean train_loss %.4f over %d iterations.",
                epoch,
                engine.state.max_epochs,
                metrics["train_loss"],
                len(self._epoch_losses),
            )
        self._epoch_losses = []
        for name, values in self._epoch_member_losses.items():
            metrics[f"train_loss.{name}"] = sum(values) / len(values)
        self._epoch_member_losses = {}
        metrics["learning_rate"] = self._epoch_learning_rate
        for name, parameter in self.loss.named_parameters():
            if parameter.numel() == 1:
                metrics[f"loss_param.{name}"] = float(parameter.detach())
        for name, value in getattr(self.loss, "current_weights", {}).items():
            metrics[f"loss_weight.{name}"] = float(value)
        self._log_metrics(metrics, step=epoch)

    def log_validation(self, evaluator: Engine) -> None:
        epoch = self._trainer.state.epoch if self._trainer is not None else evaluator.state.epoch
        foreground = self.class_names[1:]
        metrics: dict[str, float] = {}
        for name, value in evaluator.state.metrics.items():
            if isinstance(value, (int, float)):
                metrics[name] = float(value)
        details = getattr(evaluator.state, "metric_details", {})
        for metric_name, prefix in (("val_mean_dice", "val_dice"), ("val_hd95", "val_hd95")):
            if metric_name in details:
                for class_name, value in per_class_means(details[metric_name], foreground).items():
                    metrics[f"{prefix}.{class_name}"] = value
        self._log_metrics(metrics, step=epoch)

    def finish(self, engine: Engine) -> None:
        self._log_learning_curves()
        if self.checkpoint_path is not None and self.checkpoint_path.is_file():
            if saved_by_run(self.checkpoint_path, self.run_id):
                self.client.log_artifact(self.run_id, str(self.checkpoint_path), artifact_path="checkpoints")
            else:
                logger.warning(
                    "%s was not saved by this training (its %s names another run, or is missing), so it is not "
                    "logged to MLflow run %s. Did the training validate at least once?",
                    self.checkpoint_path,
                    self.checkpoint_path.with_suffix(".json").name,
                    self.run_id,
                )
        self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.FINISHED))
        if self._close() is False:
            logger.warning(
                "The training finished, but MLflow run %s stays RUNNING on the server until the kept calls above "
                "are sent.",
                self.run_id,
            )
        else:
            logger.info("MLflow run %s finished.", self.run_id)

    def fail(self, engine: Engine, error: BaseException) -> None:
        """Mark the run ``FAILED`` with the error in the ``error`` tag, or ``KILLED`` for Ctrl-C, then re-raise."""
        # Ignite fires EXCEPTION_RAISED twice for an error inside an epoch: in the epoch loop and in the run loop.
        if self.run_id is not None and not self._marked_failed:
            self._marked_failed = True
            self._log_learning_curves()
            # A stop by the user is not a failure of the training, and rerunning the command resumes it.
            interrupted = isinstance(error, KeyboardInterrupt)
            message = f"{type(error).__name__}: {error}"
            if interrupted:
                self.client.set_tag(self.run_id, "interrupted", "Ctrl-C; rerun the same command to resume")
            else:
                self.client.set_tag(self.run_id, "error", message[:MAX_PARAM_LENGTH])
            status = RunStatus.KILLED if interrupted else RunStatus.FAILED
            self.client.set_terminated(self.run_id, status=RunStatus.to_string(status))
            self._close()
            if interrupted:
                logger.warning("MLflow run %s marked killed: interrupted by Ctrl-C.", self.run_id)
            else:
                logger.error("MLflow run %s marked failed: %s", self.run_id, message)
        raise error

    # Resuming.

    def _announce_run(self) -> None:
        # The evaluator carries the run id to handlers that record it beside their files (BestModelSaver).
        if self.evaluator is not None:
            self.evaluator.training_run_id = self.run_id

    def resume_state(self) -> dict[str, Any]:
        """Return what a resumed training needs to continue this run: its id, store and logged history."""
        return {
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "history": {key: [[step, value] for step, value in values] for key, values in self.history.items()},
        }

    def resume_from(self, state: Mapping[str, Any], epoch: int) -> None:
        """Continue the run in ``state`` (from :meth:`resume_state`) when training starts, after ``epoch``.

        Raises:
            ValueError: when the run is in another tracking store than this training logs into.
        """
        if state.get("tracking_uri") != self.tracking_uri:
            raise ValueError(
                f"the checkpoint continues MLflow run {state.get('run_id')} in {state.get('tracking_uri')}, but this "
                f"training logs into {self.tracking_uri}. Resume with --tracking_uri {state.get('tracking_uri')} "
                "(start that server if it is down), or pass --resume never to start a new run."
            )
        self._resume = {"run_id": state["run_id"], "epoch": int(epoch)}
        # The curves keep only the epochs up to the checkpoint; the epochs after it are trained and logged again.
        self.history = {
            key: [(int(step), float(value)) for step, value in values if step <= epoch]
            for key, values in state.get("history", {}).items()
        }

    def close_replaced_run(self, state: Mapping[str, Any], reason: str) -> None:
        """Mark the run of a checkpoint that a new training replaces as killed, if it is still running.

        ``state`` is the checkpoint's :meth:`resume_state`. See :func:`close_replaced_run`.
        """
        client = self.mlflow_client if state.get("tracking_uri") == self.tracking_uri else None
        close_replaced_run(state, reason, client)

    # Helpers.

    def _record_learning_rate(self, engine: Engine) -> None:
        # Read at the start of the epoch: the scheduler steps at its end, before this tracker logs the epoch.
        self._epoch_learning_rate = float(self.optimizer.param_groups[0]["lr"])

    def _record_iteration(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, Mapping) else None
        if loss is None and isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
            loss = output[0].get("loss")
        if loss is not None:
            self._epoch_losses.append(float(torch.as_tensor(loss).detach().float().mean()))
        # A weighted sum's members, so that a run whose schedule moves weight between them shows each term.
        for name, value in getattr(self.loss, "last_member_losses", {}).items():
            self._epoch_member_losses.setdefault(name, []).append(float(value))

    def _run_params(self, engine: Engine) -> dict[str, Any]:
        network_parameters = sum(parameter.numel() for parameter in self.network.parameters())
        params: dict[str, Any] = {
            "network": type(self.network).__name__,
            "network_parameters": network_parameters,
            "optimizer": type(self.optimizer).__name__,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "weight_decay": self.optimizer.param_groups[0].get("weight_decay"),
            "max_epochs": engine.state.max_epochs,
            "torch_version": torch.__version__,
            "mlflow_version": mlflow.__version__,
            "device": str(next(self.network.parameters()).device),
            "platform": platform.platform(),
        }
        for attribute in ("channels", "strides", "num_res_units"):
            if hasattr(self.network, attribute):
                params[f"network_{attribute}"] = getattr(self.network, attribute)
        dataset = self.split.get("dataset", {}) if isinstance(self.split, Mapping) else {}
        for key in ("name", "num_training", "num_validation", "num_folds"):
            if key in dataset:
                params[f"dataset_{key}" if key == "name" else key] = dataset[key]
        params.update(describe_transforms(self.loss_transforms))
        params.update(self.params)
        return params

    def _experiment_id(self) -> str:
        return experiment_id(self.mlflow_client, self.experiment_name, self.artifact_location)

    def _log_params(self, params: Mapping[str, Any]) -> None:
        log_params(self.client, self.run_id, params)

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        timestamp = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            self.history.setdefault(key, []).append((step, value))
            # A resumed training repeats the epochs after its checkpoint; those the killed process logged stay.
            if math.isfinite(value) and (key, step) not in self._logged_steps:
                entries.append(Metric(key, value, timestamp, step))
        if entries:
            self.client.log_batch(self.run_id, metrics=entries)

    def _log_json_artifact(self, content: Any, name: str) -> None:
        path = self.output_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
        self.client.log_artifact(self.run_id, str(path))

    def _log_yaml_artifact(self, content: Any, name: str) -> None:
        path = self.output_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(plain_values(content), sort_keys=False), encoding="utf-8")
        self.client.log_artifact(self.run_id, str(path))

    def _log_learning_curves(self) -> None:
        if self.run_id is None or not self.history:
            return
        path = self.output_dir / "learning_curves.png"
        plot_learning_curves(self.history, path, title=self.run_name)
        self.client.log_artifact(self.run_id, str(path))

    def _start_or_explain(self, engine: Engine) -> None:
        # Creating or finding the run cannot wait for the server, so a server lost since connect() is an error here.
        try:
            with request_limits(TRAINING_MAX_RETRIES, TRAINING_TIMEOUT_S):
                self.start(engine)
        except Exception as error:  # noqa: BLE001 - sorted by is_outage; any other error is re-raised
            if not is_outage(error):
                raise
            reason = short_reason(error)
            raise RuntimeError(
                f"MLflow tracking at {self.tracking_uri} stopped responding before training started ({reason}). "
                "Start the server and rerun the same command, or pass --tracking_fallback true to log into the "
                "local store output_dir/mlflow.db."
            ) from error

    def _continue_run(self) -> None:
        run_id, epoch = self._resume["run_id"], self._resume["epoch"]
        try:
            run = self.mlflow_client.get_run(run_id)
        except Exception as error:  # noqa: BLE001 - sorted by is_outage; any other error is re-raised
            if not is_outage(error):
                raise ValueError(
                    f"MLflow run {run_id} of the checkpoint is not in {self.tracking_uri} ({error}); pass the "
                    "--tracking_uri it was logged to, or --resume never to start a new run."
                ) from error
            raise
        self.run_id = run_id
        self._announce_run()
        # Calls the killed process kept during an outage go first, so the steps below include them.
        self.client.flush()
        for key in run.data.metrics:
            for metric in self.mlflow_client.get_metric_history(run_id, key):
                self._logged_steps.add((key, metric.step))
        if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
            self.mlflow_client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        self.client.set_tag(run_id, "resumed_after_epoch", str(epoch))
        logger.info(
            "MLflow run %s (%s) continues after epoch %d in %s.", self.run_name, run_id, epoch, self.tracking_uri
        )

    def _log_skipped_cases(self) -> None:
        skipped = self.split.get("skipped") or []
        problems = self.split.get("data_problems") or []
        if not problems:
            return
        self._log_params({"skipped_cases": [case["case_id"] for case in skipped], "num_skipped_cases": len(skipped)})
        self._log_json_artifact({"skipped": skipped, "problems": problems}, "data_problems.json")

    def _close(self) -> bool | None:
        """Close the client; return ``False`` when calls it kept during an outage are still unsent."""
        sent = self.client.close()
        if self.requested_tracking_uri != self.tracking_uri:
            logger.warning(
                "This training logged into %s because %s could not be reached when it started.",
                self.tracking_uri,
                self.requested_tracking_uri,
            )
        return sent

    def _default_run_name(self) -> str:
        name = self.loss_name
        fold = self.params.get("fold", "x")
        seed = self.params.get("seed", "x")
        return f"{name}-fold{fold}-seed{seed}"


def describe_transforms(transforms: Sequence[Any], prefix: str = "loss_transform") -> dict[str, Any]:
    """Return the settings of each transform as flat parameters, ``<prefix>.<class>.<attribute>``.

    A setting is a public attribute whose value is a number, a string, a flag, ``None`` or a short list of those.
    The keys a transform reads and any other objects it stores are left out. ``<prefix>.<class>`` names the
    transform's full class path. A class that occurs twice gets its position in the list appended to its name.
    """
    names = [type(transform).__name__ for transform in transforms]
    described: dict[str, Any] = {}
    for index, (transform, name) in enumerate(zip(transforms, names, strict=True)):
        if names.count(name) > 1:
            name = f"{name}{index}"
        described[f"{prefix}.{name}"] = f"{type(transform).__module__}.{type(transform).__qualname__}"
        for attribute, value in sorted(getattr(transform, "__dict__", {}).items()):
            if attribute.startswith("_") or attribute in ("keys", "allow_missing_keys"):
                continue
            if _is_setting(value):
                described[f"{prefix}.{name}.{attribute}"] = list(value) if isinstance(value, tuple) else value
    return described


def _is_setting(value: Any) -> bool:
    plain = (bool, int, float, str, type(None))
    if isinstance(value, plain):
        return True
    return isinstance(value, (list, tuple)) and len(value) <= 16 and all(isinstance(item, plain) for item in value)


def default_artifact_location(tracking_uri: str) -> str | None:
    """Return ``mlartifacts`` beside a SQLite database, or ``None`` to let a tracking server decide."""
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///") :])
        return (database.parent / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """Return the id of the experiment ``name``, creating it (with ``artifact_location``) when missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as error:
        # Another process (a parallel shard of a study) created it since the lookup.
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    """Log parameters in batches of 100 (MLflow's limit per request), lists and dicts as JSON."""
    entries = [Param(key, _param_value(value)) for key, value in params.items()]
    for start in range(0, len(entries), 100):
        client.log_batch(run_id, params=entries[start : start + 100])


def _param_value(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, tuple, dict)) else str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def plain_values(value: Any) -> Any:
    """Convert a config tree to built-in types that YAML and JSON can write (other objects become strings)."""
    if isinstance(value, Mapping):
        return {str(key): plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_values(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


__all__ = [
    "MLflowTracker",
    "connect",
    "default_artifact_location",
    "experiment_id",
    "git_commit",
    "log_params",
    "plain_values",
    "running_config",
    "sqlite_tracking_uri",
]
