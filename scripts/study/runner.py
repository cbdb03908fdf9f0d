"""Run the study's grid: each run is the bundle's training workflow, then its evaluation, in subprocesses.

Every run is ``python -m monai.bundle run`` with the training config, the loss's overlay and the run's overrides
(written to an ``--args_file`` kept in the run's folder, so any run can be repeated by hand). A subprocess per
workflow keeps one run's crash, memory or CUDA state from taking the study down, and its exit status distinguishes
a failure from a kill. The training's ``MLflowTracker`` creates the child run under the study's parent run; the
evaluation logs into that same run.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import BUNDLE_ROOT
from .settings import EVALUATE_CONFIG, TRAIN_CONFIG, RunSpec, StudySettings
from .store import (
    ATTEMPT,
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    HOST,
    KEY,
    LOSS,
    NAME,
    PID,
    ROLE,
    StudyStore,
)

logger = logging.getLogger(__name__)

META_FILE = Path(BUNDLE_ROOT) / "metadata.json"
LOGGING_FILE = Path(BUNDLE_ROOT) / "configs" / "logging.conf"
# The first line of a Python exception report, e.g. "ValueError: class_weights has 1 entries ...".
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b:?.*$")
# Python's notes between the reports of chained exceptions.
CHAINED_EXCEPTION = ("The above exception was the direct cause", "During handling of the above exception")
SIGTERM_GRACE = 30.0  # seconds a subprocess gets to record its own failure before it is killed
RUN_DIR_KEY_DIGITS = 8  # hex digits of the settings key in a run's folder name


@dataclass
class RunResult:
    """The outcome of one grid cell in this process: ``complete``, ``failed``, or reused/skipped (``skipped_*``)."""

    spec: RunSpec
    outcome: str
    run_id: str | None = None
    seconds: float = 0.0
    detail: str = ""


class StudyInterrupted(KeyboardInterrupt):
    """Raised by SIGTERM, so that a terminated study cleans up as after Ctrl-C."""


class StudyRunner:
    """Run one shard of a study's grid and record every run in MLflow.

    Args:
        settings: the study's settings.
        store: the study's MLflow records.
        output_dir: folder for the runs' files (``runs/<loss>-fold<f>-seed<s>-<key>/``, the first 8 digits of the
            settings key).
        shard: ``(index, count)`` of the shard to run.
        retry_failed: run again the runs recorded as failed; by default a recorded failure is a result.
    """

    def __init__(
        self,
        settings: StudySettings,
        store: StudyStore,
        output_dir: str | Path,
        shard: tuple[int, int] = (0, 1),
        retry_failed: bool = False,
    ) -> None:
        self.settings = settings
        self.store = store
        self.output_dir = Path(output_dir)
        self.shard = shard
        self.retry_failed = retry_failed
        self.hardware = describe_hardware()

    def run(self, parent_id: str) -> list[RunResult]:
        """Run every cell of the shard that has no result yet; return one result per cell."""
        specs = self.settings.shard(*self.shard)
        keys = {spec: self.settings.settings_key(spec) for spec in specs}
        recorded: dict[str, list] = {}
        for run in self.store.children():
            recorded.setdefault(run.data.tags.get(KEY, ""), []).append(run)
        # The runs expected to need work, for the ETA; each run is checked again just before its turn.
        planned = {
            spec
            for spec in specs
            if self.store.classify(recorded.get(keys[spec], []), self.retry_failed).state == "todo"
        }
        logger.info(
            "Study %r, shard %d/%d: %d of %d runs of the grid, %d of them to run.",
            self.settings.study_name,
            *self.shard,
            len(specs),
            len(self.settings.grid()),
            len(planned),
        )

        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupted)
        started = time.monotonic()
        durations: list[float] = []
        results = []
        try:
            for position, spec in enumerate(specs, 1):
                # Ask again just before the run: another shard may have finished or started it meanwhile.
                state = self.store.classify(self.store.children(keys[spec]), self.retry_failed)
                for stale in state.stale:
                    self.store.mark_stale(stale)
                if state.state == "todo":
                    result = self._execute(spec, keys[spec], parent_id)
                    durations.append(result.seconds)
                else:
                    result = _skipped(spec, state)
                planned.discard(spec)
                results.append(result)
                logger.info("%s", _progress_line(position, len(specs), result, started, durations, len(planned)))
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
        return results

    # One run.

    def _execute(self, spec: RunSpec, key: str, parent_id: str) -> RunResult:
        # The settings key in the name keeps a study with other settings in the same output folder from
        # overwriting these files.
        run_dir = self.output_dir / "runs" / f"{spec.name}-{key[:RUN_DIR_KEY_DIGITS]}"
        if run_dir.exists():
            shutil.rmtree(run_dir)  # files of an earlier, interrupted attempt with the same settings
        run_dir.mkdir(parents=True)
        attempt = uuid.uuid4().hex
        tags = {
            NAME: self.settings.study_name,
            ROLE: "child",
            KEY: key,
            LOSS: spec.loss,
            ATTEMPT: attempt,
            HOST: self.store.host,
            PID: str(os.getpid()),
            HEARTBEAT: f"{time.time():.0f}",
            "study.preset": self.settings.preset,
            "study.hardware": self.hardware,
        }
        logger.info("Starting %s (settings key %s); files in %s.", spec.name, key, run_dir)
        common = self._common_args(spec, run_dir)
        train_args = {
            **common,
            "config_file": [str(TRAIN_CONFIG), str(self.settings.overlay_path(spec.loss))],
            "run_name": spec.name,
            "tracking_tags": tags,
            "parent_run_id": parent_id,
        }

        started = time.monotonic()
        run_id = None
        try:
            code, run_id = self._run_workflow(train_args, run_dir, "train", attempt=attempt)
            train_seconds = time.monotonic() - started
            train_log = run_dir / "train.log"
            if code != 0:
                error = error_message(train_log, code, "training")
                return self._record_failure(spec, run_id, tags, parent_id, train_log, error, train_seconds)
            if run_id is None:
                # Only possible when an override took the tracker out of the training handlers.
                error = "training finished without creating an MLflow run; keep the tracker in train_handlers"
                return self._record_failure(spec, None, tags, parent_id, train_log, error, train_seconds)

            eval_args = {
                **common,
                "config_file": [*train_args["config_file"], str(EVALUATE_CONFIG)],
                "eval_output_dir": str(run_dir / "evaluation"),
                "eval_run_id": run_id,
                "surface_tolerance": self.settings.surface_tolerance,
            }
            code, _ = self._run_workflow(eval_args, run_dir, "evaluate", run_id=run_id)
            if code != 0:
                error = error_message(run_dir / "evaluate.log", code, "evaluation")
                return self._record_failure(
                    spec,
                    run_id,
                    tags,
                    parent_id,
                    run_dir / "evaluate.log",
                    error,
                    time.monotonic() - started,
                    keep_recorded_error=False,
                )
        except KeyboardInterrupt:
            run_id = run_id or self.store.run_for_attempt(attempt)
            if run_id is not None:
                self.store.mark_outcome(run_id, "interrupted", "the study was interrupted (Ctrl-C or SIGTERM)")
            raise

        seconds = time.monotonic() - started
        client = self.store.client
        client.set_tag(run_id, "study.train_seconds", f"{train_seconds:.0f}")
        client.set_tag(run_id, "study.total_seconds", f"{seconds:.0f}")
        for name in ("train.log", "evaluate.log", "train_args.json", "evaluate_args.json"):
            client.log_artifact(run_id, str(run_dir / name), artifact_path="study")
        self.store.mark_outcome(run_id, "complete")
        summary = json.loads((run_dir / "evaluation" / "summary.json").read_text(encoding="utf-8"))
        dice = summary["dice"]["mean"]["mean"]
        return RunResult(spec, "complete", run_id, seconds, f"evaluation Dice {dice:.3f}")

    def _common_args(self, spec: RunSpec, run_dir: Path) -> dict[str, Any]:
        args: dict[str, Any] = {
            "meta_file": str(META_FILE),
            "logging_file": str(LOGGING_FILE),
            "dataset_dir": self.settings.dataset_dir,
            "fold": spec.fold,
            "num_folds": self.settings.num_folds,
            "seed": spec.seed,
            "max_epochs": self.settings.max_epochs,
            "val_interval": self.settings.val_interval,
            "output_dir": str(run_dir),
            "ckpt_dir": str(run_dir / "models"),
            "tracking_uri": self.store.tracking_uri,
            "experiment_name": self.settings.experiment_name,
            **self.settings.overrides,
        }
        if self.settings.max_cases is not None:
            args["max_cases"] = self.settings.max_cases
        return args

    def _run_workflow(
        self, args: dict[str, Any], run_dir: Path, stage: str, attempt: str | None = None, run_id: str | None = None
    ) -> tuple[int, str | None]:
        """Run ``monai.bundle run`` with ``args``, refreshing the run's heartbeat; return the exit status and run id.

        The output goes to ``<stage>.log``; a negative status is the number of the signal that killed the process.
        """
        args_path = run_dir / f"{stage}_args.json"
        args_path.write_text(json.dumps(args, indent=2) + "\n", encoding="utf-8")
        command = [sys.executable, "-m", "monai.bundle", "run", "--args_file", str(args_path)]
        with (run_dir / f"{stage}.log").open("w", encoding="utf-8") as log:
            process = subprocess.Popen(
                command, cwd=run_dir, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_end_with_parent
            )
            try:
                while True:
                    try:
                        code = process.wait(timeout=HEARTBEAT_INTERVAL)
                        break
                    except subprocess.TimeoutExpired:
                        run_id = self._heartbeat(run_id, attempt)
            except KeyboardInterrupt:
                _stop(process)
                raise
        if run_id is None and attempt is not None:
            run_id = self.store.run_for_attempt(attempt)
        return code, run_id

    def _heartbeat(self, run_id: str | None, attempt: str | None) -> str | None:
        try:
            if run_id is None and attempt is not None:
                run_id = self.store.run_for_attempt(attempt)
            if run_id is not None:
                self.store.heartbeat(run_id)
        except Exception as error:  # noqa: BLE001 - a missed heartbeat must not stop the training
            logger.warning("Heartbeat of run %s failed (the run goes on): %s", run_id, error)
        return run_id

    def _record_failure(
        self,
        spec: RunSpec,
        run_id: str | None,
        tags: dict[str, str],
        parent_id: str,
        log_path: Path,
        error: str,
        seconds: float,
        keep_recorded_error: bool = True,
    ) -> RunResult:
        """Record a failed run with ``error``, or with the tracker's own ``error`` tag if ``keep_recorded_error``."""
        if run_id is None:
            # The workflow failed before its tracker made a run (e.g. an invalid overlay): record one here.
            tags = {
                **tags,
                "mlflow.parentRunId": parent_id,
                "loss": self.settings.registered_loss(spec.loss),
                "loss_family": self.settings.loss_family(spec.loss),
                "fold": str(spec.fold),
                "seed": str(spec.seed),
            }
            run_id = self.store.create_failed_child(spec.name, tags, error)
        else:
            recorded = self.store.client.get_run(run_id).data.tags.get("error")
            self.store.mark_outcome(run_id, "failed", None if recorded and keep_recorded_error else error)
        self.store.client.log_artifact(run_id, str(log_path), artifact_path="study")
        logger.error("Run %s failed (%s); the study goes on. Log: %s", spec.name, error, log_path)
        return RunResult(spec, "failed", run_id, seconds, error)


def error_message(log_path: Path, code: int, stage: str) -> str:
    """Return a one-line description of a failed workflow: the root exception in its log, or the signal.

    MONAI's config parser re-raises a component's error as ``RuntimeError: Failed to instantiate ...``; the
    exception line just before Python's first "The above exception ..." note is the original one.
    """
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines() if log_path.is_file() else []
    exceptions = []
    for line in lines:
        if line.startswith(CHAINED_EXCEPTION) and exceptions:
            break
        if EXCEPTION_LINE.match(line.strip()):
            exceptions.append(line.strip())
    if exceptions:
        cause = exceptions[-1]
    elif lines:
        cause = lines[-1].strip()
    else:
        cause = "no output"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"{stage} killed by {name} (out of memory, or stopped from outside); last output: {cause}"
    return f"{stage} failed with exit status {code}: {cause}"


def describe_hardware() -> str:
    """Return the CPU model and core count, and the GPU when PyTorch finds one."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    description = f"{model}, {cores} CPU cores"
    if torch.cuda.is_available():
        description += f", GPU {torch.cuda.get_device_name(0)}"
    return f"{description}, {socket.gethostname()}"


def format_duration(seconds: float) -> str:
    """Format seconds as ``42s``, ``5m12s`` or ``2h05m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _skipped(spec: RunSpec, state) -> RunResult:
    run = state.run
    if state.state == "complete":
        detail = f"finished earlier with the same settings (run {run.info.run_id})"
        return RunResult(spec, "skipped_complete", run.info.run_id, detail=detail)
    if state.state == "failed":
        error = run.data.tags.get("error", "no error recorded")
        return RunResult(
            spec,
            "skipped_failed",
            run.info.run_id,
            detail=f"failed earlier ({error}); --retry_failed true runs it again",
        )
    host = run.data.tags.get(HOST, "another host")
    return RunResult(spec, "skipped_running", run.info.run_id, detail=f"in progress on {host}")


def _progress_line(
    position: int, total: int, result: RunResult, started: float, durations: list[float], remaining: int
) -> str:
    if result.outcome == "complete":
        outcome = f"finished in {format_duration(result.seconds)} ({result.detail})"
    elif result.outcome == "failed":
        outcome = f"failed after {format_duration(result.seconds)} ({result.detail})"
    else:
        outcome = f"skipped: {result.detail}"
    if durations:
        eta = format_duration(sum(durations) / len(durations) * remaining)
    else:
        eta = "unknown" if remaining else format_duration(0)
    elapsed = format_duration(time.monotonic() - started)
    return f"[{position}/{total}] {result.spec.name}: {outcome} | elapsed {elapsed}, ETA {eta}"


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise StudyInterrupted(f"received {signal.Signals(signum).name}")


def _end_with_parent() -> None:
    """Ask Linux to send SIGTERM to the workflow when the study process dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 is PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen) -> None:
    """Stop a workflow subprocess: SIGTERM, then SIGKILL after a grace period."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=SIGTERM_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


__all__ = ["RunResult", "StudyInterrupted", "StudyRunner", "describe_hardware", "error_message", "format_duration"]
