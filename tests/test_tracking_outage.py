"""Tracking outages with a real MLflow server on 127.0.0.1 that the tests start and stop.

An unreachable server fails the run before training, or with the fallback, training logs into the local store and
logs a warning. A server that goes away during training costs nothing: training continues, the outage is logged
once, and the calls kept meanwhile reach the server afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient
from training_runs import (
    has_logged_step,
    metric_history,
    run_training,
    sqlite_uri,
    start_training,
    training_runs,
    wait_for,
)

from scripts import BUNDLE_ROOT
from scripts.losses import build_loss
from scripts.tracking import MLflowTracker, connect
from scripts.tracking_buffer import UNSENT_FILE, BufferedClient, read_unsent, write_unsent

pytestmark = pytest.mark.training


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite backend in ``directory``; restarts keep the port and the data."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> None:
        log = (self.directory / "server.log").open("a")
        self.process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.directory / 'server.db'}",
                "--artifacts-destination",
                str(self.directory / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() ends the server's worker processes too
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not start; see {self.directory / 'server.log'}")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    instance = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def running_server(server):
    if not server.running:
        server.start()
    return server


# A command line gives "false" as a string, which must keep the fallback off.
@pytest.mark.parametrize("fallback", [[], ["--tracking_fallback", "false"]], ids=["default", "false"])
def test_unreachable_server_fails_before_training(dataset_dir, tmp_path, fallback):
    uri = f"http://127.0.0.1:{free_port()}"
    output_dir = tmp_path / "outputs"

    result = run_training(dataset_dir, output_dir, "--max_epochs", "1", "--tracking_uri", uri, *fallback, check=False)

    assert result.returncode != 0
    assert f"MLflow tracking server {uri} cannot be reached" in result.stderr
    assert "--tracking_fallback true" in result.stderr
    assert not (output_dir / "split.json").exists()
    assert not (output_dir / "models" / "checkpoint.pt").exists()


def test_fallback_trains_into_local_store_and_says_so(dataset_dir, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    output_dir = tmp_path / "outputs"

    result = run_training(
        dataset_dir,
        output_dir,
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
        "--tracking_uri",
        uri,
        "--tracking_fallback",
        "true",
    )
    client, runs = training_runs(sqlite_uri(output_dir))

    assert f"tracking_fallback is set, so this run logs into {sqlite_uri(output_dir)}" in result.stdout
    assert f"This training logged into {sqlite_uri(output_dir)} because {uri} could not be reached" in result.stdout
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["tracking_fallback_from"] == uri
    assert "val_mean_dice" in runs[0].data.metrics


def test_connect_returns_reachable_server(running_server):
    assert connect(running_server.uri) == running_server.uri


def test_server_stopped_during_training_loses_nothing(dataset_dir, tmp_path, running_server):
    server = running_server
    output_dir = tmp_path / "outputs"
    log_path = tmp_path / "training.log"
    options = [
        "--max_epochs",
        "3",
        "--val_interval",
        "1",
        "--tracking_uri",
        server.uri,
        "--tracker#retry_interval",
        "5",
    ]

    process = start_training(dataset_dir, output_dir, log_path, *options)
    try:
        wait_for(lambda: has_logged_step(server.uri, "val_mean_dice", 1), process, "epoch 1 was logged")
        server.stop()
        returncode = process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.kill()
    log = log_path.read_text()
    unsent = output_dir / UNSENT_FILE
    kept = read_unsent(unsent)

    assert returncode == 0, log[-4000:]
    assert log.count(f"MLflow tracking at {server.uri} failed") == 1
    assert f"could not be sent to {server.uri} and are kept in {unsent}" in log
    assert f"python -m scripts.tracking_buffer replay {unsent}" in log
    assert "stays RUNNING on the server until the kept calls above are sent" in log
    assert re.search(r"MLflow run \w+ finished\.", log) is None
    assert kept and all(record["tracking_uri"] == server.uri for record in kept)
    assert kept[-1]["method"] == "set_terminated"
    assert kept[-1]["status"] == "FINISHED"

    server.start()
    replay = subprocess.run(
        [sys.executable, "-m", "scripts.tracking_buffer", "replay", str(unsent)],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    client, runs = training_runs(server.uri)
    run = runs[-1]
    history = metric_history(client, run.info.run_id, ["train_loss", "learning_rate", "val_mean_dice", "val_hd95"])
    artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}

    assert replay.returncode == 0, replay.stderr[-3000:]
    assert f"sent {len(kept)} MLflow calls from {unsent}" in replay.stdout
    assert not unsent.exists()
    assert run.info.status == "FINISHED"
    for key, values in history.items():
        assert [step for step, _ in values] == [1, 2, 3], key
    assert {"learning_curves.png", "checkpoints", "split.json", "config.yaml"} <= artifacts


def test_buffered_client_sends_kept_calls_when_server_returns(running_server, tmp_path, caplog):
    server = running_server
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("outage") or client.get_experiment(client.create_experiment("outage"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    unsent = tmp_path / UNSENT_FILE
    buffered = BufferedClient(server.uri, unsent, retry_interval=0)
    caplog.set_level(logging.INFO, logger="scripts.tracking_buffer")

    server.stop()
    for step in (1, 2):
        buffered.log_batch(run_id, metrics=[Metric("loss", float(step), 1000 * step, step)])
    kept = read_unsent(unsent)
    server.start()
    buffered.log_batch(run_id, metrics=[Metric("loss", 3.0, 3000, 3)])
    messages = [record.getMessage() for record in caplog.records]

    assert [record["metrics"][0][3] for record in kept] == [1, 2]
    assert sum(f"MLflow tracking at {server.uri} failed" in message for message in messages) == 1
    assert sum("responds again; sent the 3 calls kept during the outage" in message for message in messages) == 1
    assert not unsent.exists()
    assert sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, "loss")) == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
    ]


def test_buffered_client_sends_calls_left_by_earlier_process(running_server, tmp_path):
    server = running_server
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("outage") or client.get_experiment(client.create_experiment("outage"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    unsent = tmp_path / UNSENT_FILE
    elsewhere = {"tracking_uri": "http://127.0.0.1:1", "method": "set_tag", "run_id": "x", "key": "k", "value": "v"}
    write_unsent(
        unsent,
        [
            elsewhere,
            {
                "tracking_uri": server.uri,
                "method": "log_batch",
                "run_id": run_id,
                "metrics": [["loss", 0.5, 1000, 1]],
                "params": [["fold", "0"]],
                "tags": [],
            },
            {
                "tracking_uri": server.uri,
                "method": "set_terminated",
                "run_id": run_id,
                "status": "FAILED",
                "end_time": 2000,
            },
        ],
    )

    sent = BufferedClient(server.uri, unsent).flush()
    run = client.get_run(run_id)

    assert sent
    assert run.data.metrics == {"loss": 0.5}
    assert run.data.params == {"fold": "0"}
    assert run.info.status == "FAILED"
    assert run.info.end_time == 2000
    assert read_unsent(unsent) == [elsewhere]
    assert json.loads(unsent.read_text().splitlines()[0]) == elsewhere


def test_server_lost_before_run_starts_names_uri(tmp_path):
    # connect() saw the server, then it went away while the data were loading: creating the run fails clearly.
    uri = f"http://127.0.0.1:{free_port()}"
    network = torch.nn.Conv3d(1, 3, 1)
    tracker = MLflowTracker(
        tracking_uri=uri,
        experiment_name="outage",
        output_dir=tmp_path,
        loss=build_loss("dice"),
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        evaluator=None,
        split={},
        class_names=["background", "a", "b"],
    )
    trainer = Engine(lambda engine, batch: None)
    tracker.attach(trainer)

    with pytest.raises(RuntimeError) as raised:
        trainer.run([0], max_epochs=1)

    assert f"MLflow tracking at {uri} stopped responding before training started" in str(raised.value)
    assert "--tracking_fallback true" in str(raised.value)


def test_replay_of_missing_file_says_not_found(tmp_path):
    from scripts.tracking_buffer import replay

    message = replay(str(tmp_path / "mlflow_unsent.jsonl"))

    assert message.startswith(f"{tmp_path / 'mlflow_unsent.jsonl'} not found")
    assert "no MLflow calls to send" in message
