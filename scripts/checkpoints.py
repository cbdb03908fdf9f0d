"""Checkpoints that survive a killed process: atomic writes, the best model, and the training state for resuming.

Every file is written to a temporary file beside its target and renamed over it, so a process killed mid-write
leaves the previous file intact. Checkpoints contain only tensors, numbers, strings and containers of them, and
load with ``torch.load(..., weights_only=True)``.

:class:`TrainingCheckpoint` decides whether a run is a rerun: when ``checkpoint.pt`` in the checkpoint folder contains
an unfinished training with the same settings, the run continues it (``resume: auto``), into the same MLflow run.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from .files import atomic_write, atomic_write_text
from .random_state import capture_random_states, restore_random_states

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
RESUME_MODES = ("auto", "never", "must")


def atomic_save(content: Any, path: str | Path) -> None:
    """Write ``torch.save(content)`` to ``path`` so that a reader sees the old file or the new one, never a part.

    See :func:`scripts.files.atomic_write`. Only one process writes checkpoints, so the temporary files of earlier
    writes that were killed are removed.
    """
    atomic_write(path, lambda stream: torch.save(content, stream), remove_stale=True)


def atomic_write_json(content: Any, path: str | Path) -> None:
    """Write ``content`` as indented JSON to ``path``, atomically as :func:`atomic_save` does."""
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n", remove_stale=True)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` onto the CPU.

    Raises:
        RuntimeError: when the file cannot be unpickled; the message names the file and the ways to start over.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:
        # The first line of torch's message states what failed; the rest is advice about weights_only.
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise RuntimeError(
            f"checkpoint {path} cannot be loaded ({type(error).__name__}: {reason}). Move it away to start a new "
            "training, or pass --resume never to overwrite it."
        ) from error


def unwrap(network: nn.Module) -> nn.Module:
    """Return the module inside ``DataParallel``/``DistributedDataParallel``, whose state dict has no prefix."""
    return network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network


class BestModelSaver:
    """Save the network's weights atomically each time the evaluator's key metric reaches a new best.

    MONAI's evaluator compares the key metric itself (``state.best_metric``, ``state.best_metric_epoch``) before any
    handler runs. This handler writes the plain state dict when that comparison found a new best, as MONAI's
    ``CheckpointSaver(save_key_metric=True, key_metric_filename=...)`` does. We do not use that handler because in
    MONAI 1.6.1 it deletes the previous best file before writing the new one, non-atomically, so a process killed
    in between loses the best model or leaves a truncated one.

    Beside the weights, ``model.json`` (the same name with ``.json``) records what produced them: ``description``
    (the loss, fold and seed in the bundle's config), the training's MLflow run id (which
    :class:`scripts.tracking.MLflowTracker` sets on the evaluator), the epoch and the metric. The
    evaluation overlay reads it to name and link its run.

    Args:
        network: the network whose ``state_dict`` is saved (wrappers such as ``DataParallel`` are removed).
        path: the file, e.g. ``models/model.pt``; the inference config loads it.
        description: values to record in the JSON file beside the weights.
    """

    def __init__(
        self,
        network: nn.Module,
        path: str | Path,
        description: Mapping[str, Any] | None = None,
    ) -> None:
        self.network = network
        self.path = Path(path)
        self.description = dict(description or {})

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self.save_if_best)

    def save_if_best(self, evaluator: Engine) -> None:
        if evaluator.state.best_metric_epoch != evaluator.state.epoch:
            return
        atomic_save(unwrap(self.network).state_dict(), self.path)
        atomic_write_json(
            {
                **_as_json(self.description),
                "training_run_id": getattr(evaluator, "training_run_id", None),
                "epoch": int(evaluator.state.best_metric_epoch),
                evaluator.state.key_metric_name: float(evaluator.state.best_metric),
            },
            self.path.with_suffix(".json"),
        )
        logger.info(
            "Saved the best model (%s %.4f at epoch %d) to %s.",
            evaluator.state.key_metric_name,
            evaluator.state.best_metric,
            evaluator.state.best_metric_epoch,
            self.path,
        )


def saved_by_run(checkpoint_path: Path, run_id: str | None) -> bool:
    """Return whether the best model at ``checkpoint_path`` was saved by the training run ``run_id``.

    :class:`BestModelSaver` records the run in the JSON file beside the weights. A model left in
    the folder by an earlier training has another run id there, or no readable JSON file at all.
    """
    try:
        description = json.loads(checkpoint_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(description, dict) and run_id is not None and description.get("training_run_id") == run_id


class TrainingCheckpoint:
    """Save the whole training state during training, and resume from it when the same training is rerun.

    The checkpoint contains the network, optimizer, learning-rate scheduler, loss (its trainable parameters and
    buffers), the mixed-precision scaler, the epoch and iteration, the evaluator's best metric and its epoch, every
    random number generator (:mod:`scripts.random_state`), the MLflow run id and the metrics logged so far, and the
    training's settings. It is written when training starts (so a process killed in its first epoch continues the
    same MLflow run), every ``interval`` epochs after validation and tracking, and after the last epoch. A non-finite
    loss stops training before the next write, so the checkpoint stays the last good state.

    ``resume`` decides what a run does with an existing checkpoint:

    - ``auto``: continue an unfinished training with the same settings. Start a new training when there is no
      checkpoint, or when it contains a finished training or one that completed no epoch. Raise when it contains a
      training with completed epochs and other settings, because starting over would overwrite it.
    - ``never``: start a new training and overwrite the checkpoint.
    - ``must``: continue, and raise when there is nothing to continue.

    Attach it to the trainer after the MLflow tracker (the config lists it after ``@tracker``).

    NOTE: handlers keep no state in the checkpoint. One that keeps its own counters (an ``extra_train_handlers``
    entry of a loss overlay, say) resumes correctly only if it derives them from ``engine.state.epoch``.

    Args:
        path: the checkpoint file, e.g. ``models/checkpoint.pt``.
        network, optimizer: the trained network and its optimizer.
        lr_scheduler: the learning-rate scheduler, if any.
        loss_function: the loss module, if it has state (trainable parameters, buffers).
        evaluator: the validation engine, whose best metric and epoch are kept.
        tracker: the :class:`scripts.tracking.MLflowTracker`, whose run the resumed training continues.
        transform: the training pipeline (``train_dataset.transform``), whose random transforms are restored.
        settings: the values that define the training (loss, fold, seed, epochs, cases, ...); a checkpoint resumes
            only a training with equal settings. Values are compared as JSON.
        resume: ``auto``, ``never`` or ``must``.
        interval: epochs between checkpoints.
        write: whether this process writes the checkpoint. In a distributed training every process reads it to
            resume, so that all start from the same state, and rank 0 alone writes it.
    """

    def __init__(
        self,
        path: str | Path,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        loss_function: nn.Module | None = None,
        evaluator: Engine | None = None,
        tracker: Any = None,
        transform: Any = None,
        settings: Mapping[str, Any] | None = None,
        resume: str = "auto",
        interval: int = 1,
        write: bool = True,
    ) -> None:
        if resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, got {resume!r}.")
        if int(interval) < 1:
            raise ValueError(f"the checkpoint interval must be a positive number of epochs, got {interval}.")
        self.path = Path(path)
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.loss_function = loss_function
        self.evaluator = evaluator
        self.tracker = tracker
        self.transform = transform
        self.settings = _as_json(settings or {})
        self.resume = resume
        self.interval = int(interval)
        self.write = bool(write)
        self.resumed_epoch: int | None = None
        self.last_saved_epoch: int | None = None

    def attach(self, trainer: Engine) -> None:
        """Restore the checkpoint when resuming, and register the writes on the trainer."""
        checkpoint = self._checkpoint_to_resume()
        if checkpoint is not None:
            self._restore(trainer, checkpoint)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every process has read the file before rank 0 may overwrite it when training starts.
            torch.distributed.barrier()
        trainer.add_event_handler(Events.STARTED, self._register_saving)

    def save(self, engine: Engine) -> None:
        """Write the training state of ``engine`` (the trainer) to the checkpoint file, unless ``write`` is off."""
        epoch = engine.state.epoch
        if not self.write:
            self.last_saved_epoch = epoch
            return
        content: dict[str, Any] = {
            "version": CHECKPOINT_VERSION,
            "settings": json.dumps(self.settings, sort_keys=True),
            "epoch": epoch,
            "iteration": engine.state.iteration,
            "finished": epoch >= engine.state.max_epochs,
            "trainer": dict(engine.state_dict()),
            "network": unwrap(self.network).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "random_states": capture_random_states(self.transform),
        }
        if self.lr_scheduler is not None:
            content["lr_scheduler"] = self.lr_scheduler.state_dict()
        if self.loss_function is not None:
            content["loss_function"] = self.loss_function.state_dict()
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            content["scaler"] = scaler.state_dict()
        if self.evaluator is not None:
            content["best_metric"] = float(self.evaluator.state.best_metric)
            content["best_metric_epoch"] = int(self.evaluator.state.best_metric_epoch)
        if self.tracker is not None:
            content["tracking"] = self.tracker.resume_state()
        atomic_save(content, self.path)
        self.last_saved_epoch = epoch
        logger.info("Saved the training checkpoint of epoch %d to %s.", epoch, self.path)

    def describe_last_good(self) -> str:
        """Return where the last good training state is, for error messages."""
        if self.last_saved_epoch is None:
            return f"no training checkpoint was written yet ({self.path})"
        return f"{self.path} (epoch {self.last_saved_epoch}, left unchanged)"

    # Resuming.

    def _checkpoint_to_resume(self) -> dict[str, Any] | None:
        exists = self.path.is_file()
        if self.resume == "never":
            if exists:
                logger.info("resume is 'never': starting a new training; %s will be overwritten.", self.path)
                self._close_replaced_run(self.path)
            return None
        if not exists:
            if self.resume == "must":
                raise FileNotFoundError(
                    f"resume is 'must' but {self.path} does not exist; check --ckpt_dir, or pass --resume auto to "
                    "start a new training."
                )
            return None

        checkpoint = load_checkpoint(self.path)
        if checkpoint.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"{self.path} has checkpoint format version {checkpoint.get('version')!r}, but this bundle reads "
                f"version {CHECKPOINT_VERSION}; pass --resume never to start a new training, or another --ckpt_dir."
            )
        differences = _differences(json.loads(checkpoint.get("settings", "{}")), self.settings)
        if checkpoint.get("finished") and self.resume == "auto":
            logger.info("%s contains a finished training; starting a new training that overwrites it.", self.path)
            return None
        if checkpoint.get("finished"):
            raise ValueError(
                f"resume is 'must' but {self.path} contains a finished training (epoch {checkpoint['epoch']}), so "
                "nothing is left to resume. Pass --resume never to train again from the start."
            )
        if differences and not checkpoint.get("epoch") and self.resume == "auto":
            # A training that failed in its first epoch (a wrong option, say) leaves no epoch worth keeping.
            logger.info(
                "%s contains a training that completed no epoch, with other settings (%s); starting a new training "
                "that overwrites it.",
                self.path,
                "; ".join(differences),
            )
            self._close_replaced_run(self.path, checkpoint)
            return None
        if differences:
            raise ValueError(
                f"{self.path} contains an unfinished training (epoch {checkpoint['epoch']}) with other settings: "
                f"{'; '.join(differences)}. Rerun with the same settings to resume it, pass --resume never to start "
                "a new training that overwrites it, or pass another --ckpt_dir."
            )
        return checkpoint

    def _close_replaced_run(self, path: Path, checkpoint: Mapping[str, Any] | None = None) -> None:
        """Have the tracker end the MLflow run of the unfinished training in ``path`` that this training replaces.

        A checkpoint that cannot be read is replaced, and its run is left as it is.
        """
        if self.tracker is None or not self.write:
            return
        if checkpoint is None:
            try:
                checkpoint = load_checkpoint(path)
            except RuntimeError:
                return
        if checkpoint.get("finished") or not isinstance(checkpoint.get("tracking"), Mapping):
            return
        reason = f"a new training overwrote its checkpoint {path} (epoch {checkpoint.get('epoch')})"
        self.tracker.close_replaced_run(checkpoint["tracking"], reason)

    def _restore(self, trainer: Engine, checkpoint: Mapping[str, Any]) -> None:
        unwrap(self.network).load_state_dict(checkpoint["network"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in checkpoint:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        if self.loss_function is not None and "loss_function" in checkpoint:
            self.loss_function.load_state_dict(checkpoint["loss_function"])
        scaler = getattr(trainer, "scaler", None)
        if scaler is not None and "scaler" in checkpoint:
            scaler.load_state_dict(checkpoint["scaler"])
        trainer.load_state_dict(checkpoint["trainer"])
        if self.evaluator is not None and "best_metric" in checkpoint:
            self.evaluator.state.best_metric = checkpoint["best_metric"]
            self.evaluator.state.best_metric_epoch = checkpoint["best_metric_epoch"]
        if self.tracker is not None and "tracking" in checkpoint:
            self.tracker.resume_from(checkpoint["tracking"], epoch=checkpoint["epoch"])
        # Last, because restoring the states above must not draw from any generator afterwards.
        restore_random_states(checkpoint["random_states"], self.transform)
        self.resumed_epoch = self.last_saved_epoch = int(checkpoint["epoch"])
        logger.info(
            "Resuming the training in %s after epoch %d of %d (iteration %d).",
            self.path,
            checkpoint["epoch"],
            checkpoint["trainer"]["max_epochs"],
            checkpoint["iteration"],
        )

    def _register_saving(self, engine: Engine) -> None:
        # Registered when the run starts, after every handler the trainer was built with (the config's extra
        # handlers too), so that each write comes after validation and tracking of its epoch.
        if not engine.has_event_handler(self._save_after_epoch, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._save_after_epoch)
        if self.resumed_epoch is None:
            self.save(engine)

    def _save_after_epoch(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval == 0 or epoch >= engine.state.max_epochs:
            self.save(engine)


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _differences(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """Return ``key: saved -> current`` for every value that differs between two JSON trees."""
    if isinstance(saved, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                found.append(f"{name}: not in the checkpoint -> {current[key]!r}")
            elif key not in current:
                found.append(f"{name}: {saved[key]!r} -> not set")
            else:
                found += _differences(saved[key], current[key], name)
        return found
    if saved != current:
        return [f"{prefix or 'settings'}: {_short(saved)} -> {_short(current)}"]
    return []


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = ["BestModelSaver", "TrainingCheckpoint", "atomic_save", "load_checkpoint", "saved_by_run", "unwrap"]
