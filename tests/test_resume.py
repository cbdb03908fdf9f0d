"""Interrupted trainings: atomic checkpoints, resuming after kill -9 into the same MLflow run, and when not to
resume."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from mlflow.tracking import MlflowClient
from monai.bundle import ConfigParser
from monai.transforms import Compose
from monai.utils import set_determinism
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
from scripts.checkpoints import TrainingCheckpoint, atomic_save, load_checkpoint
from scripts.data import load_datalist
from scripts.random_state import capture_random_states, restore_random_states
from scripts.tracking import close_replaced_run

# 4 epochs, validation and checkpoints every 2: epoch 3 is trained and logged but not checkpointed, so a training
# killed during epoch 4 resumes from epoch 2 and must not log epoch 3 twice.
RESUMABLE = ["--max_epochs", "4", "--val_interval", "2", "--checkpoint_interval", "2"]


def kill_training_after_epoch(dataset_dir, output_dir, log_path, epoch):
    """Start a resumable training and kill -9 it once it has logged the training loss of ``epoch``."""
    process = start_training(dataset_dir, output_dir, log_path, *RESUMABLE)
    try:
        wait_for(lambda: has_logged_step(sqlite_uri(output_dir), "train_loss", epoch), process, f"epoch {epoch} logged")
    finally:
        process.kill()
        process.wait()


@pytest.mark.training
def test_killed_training_resumes_into_same_run(dataset_dir, tmp_path):
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    run_training(dataset_dir, uninterrupted, *RESUMABLE)

    kill_training_after_epoch(dataset_dir, interrupted, tmp_path / "killed.log", 3)
    client, runs = training_runs(sqlite_uri(interrupted))
    killed_run_id = runs[0].info.run_id
    killed_checkpoint = load_checkpoint(interrupted / "models" / "checkpoint.pt")
    resumed = run_training(dataset_dir, interrupted, *RESUMABLE)

    client, runs = training_runs(sqlite_uri(interrupted))
    reference_client, reference_runs = training_runs(sqlite_uri(uninterrupted))
    history = metric_history(client, killed_run_id)
    reference = metric_history(reference_client, reference_runs[0].info.run_id)
    final = load_checkpoint(interrupted / "models" / "checkpoint.pt")
    model = torch.load(interrupted / "models" / "model.pt", weights_only=True)
    reference_model = torch.load(uninterrupted / "models" / "model.pt", weights_only=True)

    assert killed_checkpoint["epoch"] == 2
    assert "Resuming the training" in resumed.stdout
    assert "after epoch 2 of 4" in resumed.stdout
    assert [run.info.run_id for run in runs] == [killed_run_id]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["resumed_after_epoch"] == "2"
    assert [step for step, _ in history["train_loss"]] == [1, 2, 3, 4]
    assert [step for step, _ in history["val_mean_dice"]] == [2, 4]
    # One process or two, the same seed on the CPU gives the same numbers, bit for bit.
    assert history == reference
    assert final["epoch"] == 4
    assert final["finished"]
    assert model.keys() == reference_model.keys()
    assert all(torch.equal(model[key], reference_model[key]) for key in model)
    assert "learning_curves.png" in {artifact.path for artifact in client.list_artifacts(killed_run_id)}


@pytest.mark.training
def test_resume_never_marks_killed_training_run(dataset_dir, tmp_path):
    output_dir = tmp_path / "killed"
    kill_training_after_epoch(dataset_dir, output_dir, tmp_path / "killed.log", 1)
    _, (killed,) = training_runs(sqlite_uri(output_dir))
    assert killed.info.status == "RUNNING"

    restarted = run_training(dataset_dir, output_dir, "--max_epochs", "1", "--resume", "never")

    client, runs = training_runs(sqlite_uri(output_dir))
    replaced = client.get_run(killed.info.run_id)
    assert "marked killed" in restarted.stdout + restarted.stderr
    assert replaced.info.status == "KILLED"
    assert replaced.data.tags["replaced"].startswith("a new training overwrote its checkpoint")
    assert sorted(run.info.status for run in runs) == ["FINISHED", "KILLED"]


WRITER = textwrap.dedent(
    """
    import sys, torch
    from scripts.checkpoints import atomic_save
    step = 0
    while True:
        step += 1
        atomic_save({"step": step, "weights": torch.full((2_000_000,), float(step))}, sys.argv[1])
    """
)


def test_atomic_save_survives_kill_mid_write(tmp_path):
    path = tmp_path / "checkpoint.pt"
    generator = random.Random(0)
    for attempt in range(3):
        process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=BUNDLE_ROOT)
        wait_for(lambda: path.exists() and path.stat().st_mtime > time.time() - 1, process, "a checkpoint was written")
        # 8 MB take tens of milliseconds to write and flush, so a random kill mostly lands in the middle of a write.
        time.sleep(generator.uniform(0.05, 0.5))
        process.kill()
        process.wait()

        content = torch.load(path, weights_only=True)

        assert content["step"] >= 1, attempt
        assert torch.equal(content["weights"], torch.full((2_000_000,), float(content["step"]))), attempt


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    atomic_save({"version": 1}, path)

    def failing_save(content, stream):
        stream.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"version": 2}, path)

    assert torch.load(path, weights_only=True) == {"version": 1}
    assert [item.name for item in tmp_path.iterdir()] == ["model.pt"]


def tiny_training(
    path: Path,
    settings: dict,
    resume: str = "auto",
    stop_after: int | None = None,
    epochs: int = 3,
    fail_at_first_step: bool = False,
    tracker=None,
):
    """Train a linear model on 4 numbers for ``epochs`` with a TrainingCheckpoint; optionally stop early or fail."""
    torch.manual_seed(0)
    network = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    def step(engine, batch):
        if fail_at_first_step:
            raise ZeroDivisionError("a wrong option")
        optimizer.zero_grad()
        loss = (network(torch.tensor([[float(batch)]])) ** 2).mean()
        loss.backward()
        optimizer.step()
        return {"loss": loss}

    trainer = Engine(step)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: scheduler.step())
    checkpoint = TrainingCheckpoint(
        path, network, optimizer, lr_scheduler=scheduler, settings=settings, resume=resume, tracker=tracker
    )
    checkpoint.attach(trainer)
    if stop_after is not None:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda engine: engine.terminate())
    trainer.run([1, 2, 3, 4], max_epochs=epochs)
    return trainer, network, checkpoint


def test_checkpoint_holds_training_state(tmp_path):
    path = tmp_path / "checkpoint.pt"
    trainer, network, _ = tiny_training(path, {"learning_rate": 0.1}, stop_after=2)

    content = torch.load(path, weights_only=True)

    assert content["epoch"] == 2
    assert content["iteration"] == 8
    assert not content["finished"]
    assert torch.equal(content["network"]["weight"], network.state_dict()["weight"])
    assert content["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.025)
    assert content["lr_scheduler"]["last_epoch"] == 2
    assert content["trainer"]["max_epochs"] == 3
    assert {"torch", "numpy", "python", "transforms"} <= set(content["random_states"])


def test_resume_continues_unfinished_training(tmp_path):
    path = tmp_path / "checkpoint.pt"
    tiny_training(path, {"learning_rate": 0.1}, stop_after=2)
    _, uninterrupted, _ = tiny_training(tmp_path / "other.pt", {"learning_rate": 0.1})

    trainer, resumed, checkpoint = tiny_training(path, {"learning_rate": 0.1})

    assert checkpoint.resumed_epoch == 2
    assert trainer.state.epoch == 3
    assert trainer.state.iteration == 12
    assert torch.equal(resumed.weight, uninterrupted.weight)


def test_resume_rejects_other_settings(tmp_path):
    path = tmp_path / "checkpoint.pt"
    tiny_training(path, {"learning_rate": 0.1, "loss": {"name": "dice"}}, stop_after=1)

    with pytest.raises(ValueError) as raised:
        tiny_training(path, {"learning_rate": 0.01, "loss": {"name": "dice"}})
    message = str(raised.value)

    assert f"{path} contains an unfinished training (epoch 1) with other settings" in message
    assert "learning_rate: 0.1 -> 0.01" in message
    assert "--resume never" in message
    assert torch.load(path, weights_only=True)["epoch"] == 1


def test_failed_first_epoch_does_not_block_other_settings(tmp_path):
    # The corrected command after a first step that raised (a wrong option) must not be refused.
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(ZeroDivisionError):
        tiny_training(path, {"learning_rate": 0.1}, fail_at_first_step=True)
    assert torch.load(path, weights_only=True)["epoch"] == 0

    trainer, _, checkpoint = tiny_training(path, {"learning_rate": 0.01})

    assert checkpoint.resumed_epoch is None
    assert trainer.state.iteration == 12
    assert torch.load(path, weights_only=True)["finished"]


def test_resume_never_starts_over(tmp_path):
    path = tmp_path / "checkpoint.pt"
    tiny_training(path, {"learning_rate": 0.1}, stop_after=1)

    trainer, _, checkpoint = tiny_training(path, {"learning_rate": 0.01}, resume="never")

    assert checkpoint.resumed_epoch is None
    assert trainer.state.iteration == 12
    assert torch.load(path, weights_only=True)["finished"]


class RunStub:
    """The part of MLflowTracker that TrainingCheckpoint uses, with a real run in a SQLite store."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        experiment = self.client.get_experiment_by_name("tiny")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("tiny")
        self.run_id = self.client.create_run(experiment_id).info.run_id

    def resume_state(self):
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "history": {}}

    def resume_from(self, state, epoch):
        pass

    def close_replaced_run(self, state, reason):
        close_replaced_run(state, reason)

    def status(self):
        return self.client.get_run(self.run_id).info.status


def test_resume_never_ends_replaced_run(tmp_path):
    # A training stopped after epoch 1 without ending its run, as a killed process leaves it, stays RUNNING until
    # the training that overwrites its checkpoint ends it.
    path, uri = tmp_path / "checkpoint.pt", f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = RunStub(uri)
    tiny_training(path, {"learning_rate": 0.1}, stop_after=1, tracker=killed)
    assert killed.status() == "RUNNING"

    tiny_training(path, {"learning_rate": 0.01}, resume="never", tracker=RunStub(uri))

    assert killed.status() == "KILLED"
    tag = killed.client.get_run(killed.run_id).data.tags["replaced"]
    assert f"a new training overwrote its checkpoint {path} (epoch 1)" == tag


def test_failed_first_epoch_run_ends(tmp_path):
    path, uri = tmp_path / "checkpoint.pt", f"sqlite:///{tmp_path / 'mlflow.db'}"
    killed = RunStub(uri)
    with pytest.raises(ZeroDivisionError):
        tiny_training(path, {"learning_rate": 0.1}, fail_at_first_step=True, tracker=killed)

    tiny_training(path, {"learning_rate": 0.01}, tracker=RunStub(uri))

    assert killed.status() == "KILLED"


def test_resume_never_keeps_ended_run(tmp_path):
    path, uri = tmp_path / "checkpoint.pt", f"sqlite:///{tmp_path / 'mlflow.db'}"
    failed = RunStub(uri)
    tiny_training(path, {"learning_rate": 0.1}, stop_after=1, tracker=failed)
    failed.client.set_terminated(failed.run_id, status="FAILED")

    tiny_training(path, {"learning_rate": 0.1}, resume="never", tracker=RunStub(uri))

    assert failed.status() == "FAILED"
    assert "replaced" not in failed.client.get_run(failed.run_id).data.tags


def test_missing_store_only_warns(tmp_path, caplog):
    state = {"run_id": "0123", "tracking_uri": f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"}

    close_replaced_run(state, "a new training")

    assert "of the replaced training was not marked killed" in caplog.text
    assert "not found" in caplog.text
    assert not (tmp_path / "missing").exists()


def test_unknown_run_only_warns(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    RunStub(uri)

    close_replaced_run({"run_id": "0123", "tracking_uri": uri}, "a new training")

    assert "MLflow run 0123 in" in caplog.text
    assert "of the replaced training killed failed" in caplog.text


def test_resume_auto_starts_over_after_finished_training(tmp_path):
    path = tmp_path / "checkpoint.pt"
    tiny_training(path, {"learning_rate": 0.1})

    trainer, _, checkpoint = tiny_training(path, {"learning_rate": 0.1})

    assert checkpoint.resumed_epoch is None
    assert trainer.state.iteration == 12


def test_resume_must_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"resume is 'must' but .*checkpoint\.pt does not exist"):
        tiny_training(tmp_path / "checkpoint.pt", {}, resume="must")


def test_resume_must_after_finished_training_raises(tmp_path):
    path = tmp_path / "checkpoint.pt"
    tiny_training(path, {})

    with pytest.raises(ValueError, match="contains a finished training"):
        tiny_training(path, {}, resume="must")


def test_resume_mode_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"resume must be one of \('auto', 'never', 'must'\), got 'sometimes'"):
        tiny_training(tmp_path / "checkpoint.pt", {}, resume="sometimes")


def test_corrupt_checkpoint_names_file_and_way_out(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")

    with pytest.raises(RuntimeError, match=r"checkpoint .*checkpoint\.pt cannot be loaded .*--resume never"):
        tiny_training(path, {})


def test_random_states_restore_augmentation_stream(dataset_dir):
    parser = ConfigParser()
    parser.read_config(f"{BUNDLE_ROOT}/configs/train.yaml")
    parser["dataset_dir"] = str(dataset_dir)
    parser["patch_size"] = [24, 32, 24]
    case = load_datalist(dataset_dir)[0]
    set_determinism(seed=0)
    loaded = Compose(parser.get_parsed_content("preprocessing"))(case)
    augmentation = Compose(parser.get_parsed_content("augmentation"))

    def draw() -> list:
        return [
            [sample["image"].clone() for sample in augmentation(dict(loaded))],
            torch.rand(3),
            np.random.rand(3),
            random.random(),
        ]

    draw()
    states = capture_random_states(augmentation)
    first = draw()
    draw()
    restore_random_states(states, augmentation)
    second = draw()

    for expected, actual in zip(first[0], second[0]):
        assert torch.equal(expected, actual)
    assert torch.equal(first[1], second[1])
    assert np.array_equal(first[2], second[2])
    assert first[3] == second[3]
    assert len(states["transforms"]) >= 6


def test_checkpoint_of_other_format_version_is_rejected(tmp_path):
    path = tmp_path / "checkpoint.pt"
    tiny_training(path, {}, stop_after=1)
    content = torch.load(path, weights_only=True)
    content["version"] = 99
    torch.save(content, path)

    with pytest.raises(ValueError, match=r"checkpoint format version 99, but this bundle reads version 1"):
        tiny_training(path, {})


@pytest.mark.training
def test_ctrl_c_marks_run_killed(dataset_dir, tmp_path):
    output_dir = tmp_path / "interrupted"
    process = start_training(dataset_dir, output_dir, tmp_path / "interrupted.log", *RESUMABLE)
    try:
        wait_for(lambda: has_logged_step(sqlite_uri(output_dir), "train_loss", 1), process, "epoch 1 logged")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        process.kill()
    _, (run,) = training_runs(sqlite_uri(output_dir))

    assert run.info.status == "KILLED"
    assert run.data.tags["interrupted"] == "Ctrl-C; rerun the same command to resume"
    assert "error" not in run.data.tags
