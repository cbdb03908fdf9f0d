"""The study's records in MLflow: the parent run, the child runs by settings key, their state and liveness.

Several processes, on one machine or several, may work on one study through one tracking server. A child run that
is still ``RUNNING`` is either in progress somewhere or left behind by a process that died. The process that runs
it refreshes the ``study.heartbeat`` tag while it works. So a run whose heartbeat is old, or whose process on this
machine is gone, is stale and runs again.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from ..tracking import MAX_PARAM_LENGTH, default_artifact_location, experiment_id

logger = logging.getLogger(__name__)

# Tags of the study's runs.
NAME = "study.name"
ROLE = "study.role"  # "parent" or "child"
KEY = "study.settings_key"
LOSS = "study.loss"  # the overlay's name; the training run's own "loss" tag is the registered loss it builds
ATTEMPT = "study.attempt"  # one id per attempt, to find the run that a training subprocess created
OUTCOME = "study.outcome"  # "complete", "failed" or "interrupted"; missing while a run is in progress
HOST = "study.host"
PID = "study.pid"
HEARTBEAT = "study.heartbeat"  # Unix time of the last sign of life
ERROR = "error"  # the tag that the training tracker sets on failure

HEARTBEAT_INTERVAL = 30.0  # seconds between heartbeats
STALE_AFTER = 600.0  # seconds without a heartbeat after which a RUNNING run counts as abandoned

STUDY_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class RunState:
    """The state of one settings key in the study's records.

    ``state`` is ``complete`` (reuse ``run``), ``failed`` (recorded failure in ``run``), ``running`` (live
    elsewhere, in ``run``) or ``todo``. ``stale`` lists the runs that an earlier, interrupted attempt left behind.
    """

    state: str
    run: Run | None = None
    stale: list[Run] = field(default_factory=list)


def check_tracking_uri(tracking_uri: str, timeout: float = 10.0) -> None:
    """Raise ``RuntimeError`` when an HTTP tracking server does not respond; other URIs are not probed.

    MLflow's client retries an unreachable server for minutes before it fails, so the study probes the server's
    ``/health`` endpoint once, before any training.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user's own server
            response.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise RuntimeError(
            f"MLflow tracking server {tracking_uri} is unreachable ({reason}). Start it (e.g. `mlflow server --host "
            "127.0.0.1 --port 5000 --backend-store-uri sqlite:///mlflow.db`) or pass --tracking_uri with a "
            "reachable server or a sqlite:///path/to/mlflow.db file."
        ) from error


class StudyStore:
    """The MLflow side of one study: find or create its parent run, find, classify and mark its child runs.

    ``create=False`` opens an existing experiment only, for a reader such as the report, which must not leave an
    empty experiment behind a mistyped name.

    Raises:
        ValueError: for a study name with characters other than letters, digits, ``_``, ``.`` and ``-``, or, with
            ``create=False``, an experiment that does not exist (the message lists those that do).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, study_name: str, create: bool = True) -> None:
        if not STUDY_NAME.match(study_name):
            raise ValueError(f"invalid study name {study_name!r}: use letters, digits, '_', '.' and '-'.")
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.client = MlflowClient(tracking_uri=tracking_uri)
        if create:
            self.experiment_id = experiment_id(self.client, experiment_name, default_artifact_location(tracking_uri))
        else:
            experiment = self.client.get_experiment_by_name(experiment_name)
            if experiment is None:
                names = sorted(found.name for found in self.client.search_experiments())
                raise ValueError(
                    f"no experiment named {experiment_name!r} at {tracking_uri}; it has "
                    f"{', '.join(repr(name) for name in names) or 'none'}. Pass the --experiment_name that "
                    "`python -m scripts.study run` used."
                )
            self.experiment_id = experiment.experiment_id
        self.host = socket.gethostname()

    # Queries.

    def search(self, filter_string: str) -> list[Run]:
        """Return every run of the experiment matching ``filter_string``, oldest first, across result pages."""
        runs: list[Run] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                max_results=1000,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def children(self, key: str | None = None) -> list[Run]:
        """Return the study's child runs, all of them or those of one settings key."""
        query = f"tags.`{NAME}` = '{self.study_name}' and tags.`{ROLE}` = 'child'"
        if key is not None:
            query += f" and tags.`{KEY}` = '{key}'"
        return self.search(query)

    def parent(self, create: bool = False) -> Run | None:
        """Return the study's parent run (the oldest when concurrent starts made two), creating it if asked."""
        query = f"tags.`{NAME}` = '{self.study_name}' and tags.`{ROLE}` = 'parent'"
        found = self.search(query)
        if found or not create:
            return found[0] if found else None
        created = self.client.create_run(
            self.experiment_id, run_name=f"study-{self.study_name}", tags={NAME: self.study_name, ROLE: "parent"}
        )
        oldest = self.search(query)[0]
        if oldest.info.run_id != created.info.run_id:
            # Another process created a parent at the same time: keep the oldest, so all children share it.
            self.client.delete_run(created.info.run_id)
        return oldest

    def run_for_attempt(self, attempt: str) -> str | None:
        """Return the id of the run that carries ``attempt``, or ``None`` while the subprocess has made none."""
        found = self.search(f"tags.`{ATTEMPT}` = '{attempt}'")
        return found[0].info.run_id if found else None

    def classify(self, runs: list[Run], retry_failed: bool = False) -> RunState:
        """Decide what to do with a settings key from its child runs (oldest first)."""
        for run in runs:
            if run.info.status == "FINISHED" and run.data.tags.get(OUTCOME) == "complete":
                return RunState("complete", run)
        in_progress = [run for run in runs if OUTCOME not in run.data.tags]
        for run in in_progress:
            if self.is_live(run):
                return RunState("running", run)
        failed = [run for run in runs if run.data.tags.get(OUTCOME) == "failed"]
        if failed and not retry_failed:
            return RunState("failed", failed[-1], in_progress)
        return RunState("todo", None, in_progress)

    def is_live(self, run: Run) -> bool:
        """Return whether a run's process still works on it: a fresh heartbeat and, on this host, a live process."""
        tags = run.data.tags
        try:
            heartbeat = float(tags.get(HEARTBEAT, "0"))
        except ValueError:
            heartbeat = 0.0
        if time.time() - heartbeat > STALE_AFTER:
            return False
        if tags.get(HOST) == self.host:
            return _process_exists(int(tags.get(PID, "0") or 0))
        return True

    # Updates.

    def heartbeat(self, run_id: str) -> None:
        self.client.set_tag(run_id, HEARTBEAT, f"{time.time():.0f}")

    def mark_stale(self, run: Run) -> None:
        """Mark a run that an interrupted attempt left behind as killed, so that it is not taken for a result."""
        self.client.set_tag(run.info.run_id, OUTCOME, "interrupted")
        if run.info.status in ("RUNNING", "FINISHED"):
            self.client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
        logger.info("Marked the stale run %s (%s) as killed.", run.info.run_name, run.info.run_id)

    def mark_outcome(self, run_id: str, outcome: str, error: str | None = None) -> None:
        """Record a child run's outcome; ``failed`` and ``interrupted`` also set the run's status and error."""
        self.client.set_tag(run_id, OUTCOME, outcome)
        if error:
            self.client.set_tag(run_id, ERROR, error[:MAX_PARAM_LENGTH])
        status = {"complete": RunStatus.FINISHED, "failed": RunStatus.FAILED, "interrupted": RunStatus.KILLED}
        self.client.set_terminated(run_id, status=RunStatus.to_string(status[outcome]))

    def create_failed_child(self, run_name: str, tags: dict[str, str], error: str) -> str:
        """Create a ``FAILED`` child run for an attempt that failed before the training made its own run."""
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        self.mark_outcome(run.info.run_id, "failed", error)
        return run.info.run_id


def _process_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
