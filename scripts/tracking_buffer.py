"""MLflow calls that survive a tracking-server outage: kept in order, written to a local file, and sent later.

:class:`BufferedClient` makes the ``MlflowClient`` calls of a training after its run is created. A call that fails
because the server does not respond (connection refused, timeout, HTTP 5xx or 429) is kept, with its original
timestamps, and written to a JSON-lines file, so even a killed process loses nothing. Later calls join the
queue, and the queue is sent again at most every ``retry_interval`` seconds and once more at the end. The outage is
logged once when it starts and once when it ends. Calls the server rejects (HTTP 4xx: an invalid value) would fail
again, so they are logged as errors and dropped.

What is still unsent when training ends stays in the file; send it later with::

    python -m scripts.tracking_buffer replay outputs/mlflow_unsent.jsonl
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import SQLAlchemyError

from .files import atomic_write_text

logger = logging.getLogger(__name__)

UNSENT_FILE = "mlflow_unsent.jsonl"
# Retries and timeout of each HTTP request while training: MLflow's defaults (7 retries with exponential backoff,
# 120 s timeout in MLflow 3) would block a training for minutes per call during an outage.
TRAINING_MAX_RETRIES = 2
TRAINING_TIMEOUT_S = 15


@contextlib.contextmanager
def request_limits(max_retries: int, timeout: float) -> Iterator[None]:
    """Limit the retries and timeout of MLflow's HTTP requests inside the block.

    MLflow reads ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and ``MLFLOW_HTTP_REQUEST_TIMEOUT`` at each request and has no
    per-client setting, so they are set here for the duration of the block. Values the user exported win.
    """
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(max_retries), "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(timeout))}
    added = [name for name in limits if name not in os.environ]
    for name in added:
        os.environ[name] = limits[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    # urllib3 logs a warning per retried request; the buffer logs an outage once instead.
    retries_logger = logging.getLogger("urllib3.connectionpool")
    level = retries_logger.level
    retries_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        retries_logger.setLevel(level)


def is_outage(error: BaseException) -> bool:
    """Return whether a failed MLflow call may succeed later: no response, a timeout, HTTP 5xx or 429.

    MLflow raises ``MlflowException`` both for a server that does not respond (status 500, ``INTERNAL_ERROR``) and
    for a rejected value (a 4xx status such as ``INVALID_PARAMETER_VALUE``), from a server and from a local store.
    """
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(error, (requests.RequestException, OSError, SQLAlchemyError))


class BufferedClient:
    """The ``MlflowClient`` calls of a running training, kept through outages of the tracking server.

    Args:
        tracking_uri: the MLflow tracking URI.
        unsent_path: the JSON-lines file of calls not sent yet. Calls for this URI already in it are sent first:
            they come from a training that was killed during an outage. Calls for other URIs stay in it untouched.
        retry_interval: seconds between attempts to send kept calls during an outage.
        client: the ``MlflowClient`` for ``tracking_uri`` to send with; a new one by default.
    """

    def __init__(
        self,
        tracking_uri: str,
        unsent_path: str | Path,
        retry_interval: float = 60.0,
        client: MlflowClient | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.unsent_path = Path(unsent_path)
        self.retry_interval = float(retry_interval)
        self.client = client or MlflowClient(tracking_uri=tracking_uri)
        self.pending: list[dict[str, Any]] = []
        self.other_uris: list[dict[str, Any]] = []
        self.rejected = 0
        self._outage_error: str | None = None
        self._next_attempt = 0.0
        self._sent_during_outage = 0
        for record in read_unsent(self.unsent_path):
            (self.pending if record.get("tracking_uri") == tracking_uri else self.other_uris).append(record)
        if self.pending:
            logger.info(
                "%d MLflow calls of an earlier training are waiting in %s.", len(self.pending), self.unsent_path
            )

    # The MlflowClient methods the tracker uses after creating its run.

    def log_batch(
        self,
        run_id: str,
        metrics: Sequence[Metric] = (),
        params: Sequence[Param] = (),
        tags: Sequence[RunTag] = (),
    ) -> None:
        self.submit(
            {
                "method": "log_batch",
                "run_id": run_id,
                "metrics": [[metric.key, metric.value, metric.timestamp, metric.step] for metric in metrics],
                "params": [[param.key, param.value] for param in params],
                "tags": [[tag.key, tag.value] for tag in tags],
            }
        )

    def set_tag(self, run_id: str, key: str, value: Any) -> None:
        self.submit({"method": "set_tag", "run_id": run_id, "key": key, "value": str(value)})

    def set_terminated(self, run_id: str, status: str = "FINISHED", end_time: int | None = None) -> None:
        # The end time is taken now, so that a call sent after an outage still records when training ended.
        end_time = int(time.time() * 1000) if end_time is None else end_time
        self.submit({"method": "set_terminated", "run_id": run_id, "status": status, "end_time": end_time})

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self.submit(
            {
                "method": "log_artifact",
                "run_id": run_id,
                "local_path": str(Path(local_path).resolve()),
                "artifact_path": artifact_path,
            }
        )

    # Queue.

    def submit(self, record: dict[str, Any]) -> None:
        """Send one call, or keep it (and every later call) while the server does not respond."""
        record = {"tracking_uri": self.tracking_uri, **record}
        self.pending.append(record)
        if len(self.pending) > 1 and time.monotonic() < self._next_attempt:
            self._write_unsent()
            return
        self.flush()

    def flush(self) -> bool:
        """Send the kept calls in order; return whether none is left. Stops at the first call that fails."""
        sent = 0
        while self.pending:
            record = self.pending[0]
            try:
                with request_limits(TRAINING_MAX_RETRIES, TRAINING_TIMEOUT_S), _quiet_retries():
                    send(self.client, record)
            except Exception as error:  # noqa: BLE001 - sorted by is_outage; any other error is re-raised
                if is_outage(error):
                    self._start_outage(error)
                    break
                if not isinstance(error, MlflowException):
                    raise
                self._reject(error)
                continue
            self.pending.pop(0)
            sent += 1
        if self._outage_error is not None:
            self._sent_during_outage += sent
            if not self.pending:
                logger.info(
                    "MLflow tracking at %s responds again; sent the %d calls kept during the outage.",
                    self.tracking_uri,
                    self._sent_during_outage,
                )
                self._outage_error = None
                self._sent_during_outage = 0
        if sent or self.pending or self.unsent_path.exists():
            self._write_unsent()
        return not self.pending

    def close(self) -> bool:
        """Try once more to send what is kept, and report what is left; return whether everything was sent."""
        self._next_attempt = 0.0
        done = self.flush()
        if self.pending:
            metrics = sum(len(record.get("metrics", [])) for record in self.pending)
            artifacts = sum(record["method"] == "log_artifact" for record in self.pending)
            logger.error(
                "%d MLflow calls (%d metric values, %d artifacts) could not be sent to %s and are kept in %s. "
                "Send them when the server responds: python -m scripts.tracking_buffer replay %s",
                len(self.pending),
                metrics,
                artifacts,
                self.tracking_uri,
                self.unsent_path,
                self.unsent_path,
            )
        if self.other_uris:
            logger.warning(
                "%s also keeps %d calls for other tracking URIs; send them with python -m scripts.tracking_buffer "
                "replay %s",
                self.unsent_path,
                len(self.other_uris),
                self.unsent_path,
            )
        return done

    def _start_outage(self, error: BaseException) -> None:
        self._next_attempt = time.monotonic() + self.retry_interval
        if self._outage_error is None:
            self._outage_error = f"{type(error).__name__}: {error}"
            logger.warning(
                "MLflow tracking at %s failed (%s). Training continues; MLflow calls are kept in %s and sent again "
                "every %.0f s and at the end.",
                self.tracking_uri,
                _short(self._outage_error),
                self.unsent_path,
                self.retry_interval,
            )

    def _reject(self, error: MlflowException) -> None:
        record = self.pending.pop(0)
        self.rejected += 1
        logger.error(
            "MLflow at %s rejected a %s call for run %s (%s); it is dropped: %s",
            self.tracking_uri,
            record["method"],
            record.get("run_id"),
            _short(str(error)),
            _short(json.dumps(record)),
        )

    def _write_unsent(self) -> None:
        write_unsent(self.unsent_path, self.other_uris + self.pending)


def send(client: MlflowClient, record: dict[str, Any]) -> None:
    """Make the MLflow call that ``record`` describes."""
    method, run_id = record["method"], record["run_id"]
    if method == "log_batch":
        client.log_batch(
            run_id,
            metrics=[Metric(key, value, timestamp, step) for key, value, timestamp, step in record["metrics"]],
            params=[Param(key, value) for key, value in record["params"]],
            tags=[RunTag(key, value) for key, value in record["tags"]],
        )
    elif method == "set_tag":
        client.set_tag(run_id, record["key"], record["value"])
    elif method == "set_terminated":
        client.set_terminated(run_id, status=record["status"], end_time=record["end_time"])
    elif method == "log_artifact":
        client.log_artifact(run_id, record["local_path"], artifact_path=record["artifact_path"])
    else:
        raise ValueError(f"unknown MLflow call {method!r} in {record!r}; expected one written by BufferedClient.")


def read_unsent(path: str | Path) -> list[dict[str, Any]]:
    """Return the calls kept in a JSON-lines file, or ``[]`` when it does not exist.

    Raises:
        ValueError: for a line that is not a JSON object; the message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}, is not valid JSON ({error}); fix or delete the line.") from error
        if not isinstance(record, dict) or "method" not in record:
            raise ValueError(f"{path}, line {number}, is not an MLflow call record; fix or delete the line.")
        records.append(record)
    return records


def write_unsent(path: str | Path, records: Sequence[dict[str, Any]]) -> None:
    """Replace the file with ``records``, one JSON object per line, atomically; remove it when there are none."""
    path = Path(path)
    if not records:
        path.unlink(missing_ok=True)
        return
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


def replay(path: str, tracking_uri: str | None = None) -> str:
    """Send the MLflow calls kept in a file, in order, and remove the ones sent from it.

    Args:
        path: the file, e.g. ``outputs/mlflow_unsent.jsonl``.
        tracking_uri: send to this URI instead of the one each call was recorded for (after the server moved).
    """
    if not Path(path).is_file():
        # Not an error: the file is removed once every call in it has been sent.
        return f"{path} not found, so there are no MLflow calls to send (the file is removed once all are sent)."
    records = read_unsent(path)
    if not records:
        return f"{path} has no MLflow calls to send."
    clients: dict[str, MlflowClient] = {}
    for index, record in enumerate(records):
        uri = tracking_uri or record["tracking_uri"]
        client = clients.setdefault(uri, MlflowClient(tracking_uri=uri))
        try:
            with request_limits(TRAINING_MAX_RETRIES, TRAINING_TIMEOUT_S):
                send(client, record)
        except MlflowException as error:
            write_unsent(path, records[index:])
            raise RuntimeError(
                f"sending call {index + 1} of {len(records)} ({record['method']} for run {record['run_id']}) to {uri} "
                f"failed ({_short(str(error))}); the {len(records) - index} unsent calls stay in {path}. Retry when "
                "the server responds, or pass --tracking_uri with the server's current address."
            ) from error
    write_unsent(path, [])
    return f"sent {len(records)} MLflow calls from {path}; the file is removed."


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["BufferedClient", "UNSENT_FILE", "is_outage", "read_unsent", "replay", "request_limits", "write_unsent"]


if __name__ == "__main__":
    from .cli import run_commands

    run_commands({"replay": replay})
