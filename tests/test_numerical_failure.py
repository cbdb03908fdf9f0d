"""A NaN or inf loss or network output stops training with an error naming the iteration, the loss and the last good
checkpoint, which stays intact, and the MLflow run is marked failed with that message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow
from training_runs import CONFIGS, META, run_training, sqlite_uri, training_runs

from scripts.guards import NonFiniteLossError

pytestmark = pytest.mark.training

ITERATION = re.compile(r"at epoch (\d+), iteration (\d+) \((\d+) of (\d+) in the epoch\)")
CHECKPOINT = re.compile(r"Last good checkpoint: (\S+) \(epoch (\d+), left unchanged\)")


class NaNLossFrom(torch.nn.Module):
    """The bundle's loss, turning NaN from its ``first_nan_call``-th call on, as an overflowing loss does.

    Args:
        loss: the loss module the trainer would call.
        first_nan_call: the 1-based call from which the value is NaN.
    """

    def __init__(self, loss: torch.nn.Module, first_nan_call: int) -> None:
        super().__init__()
        self.loss = loss
        self.first_nan_call = first_nan_call
        self.calls = 0

    def forward(self, prediction, target):
        self.calls += 1
        value = self.loss(prediction, target)
        return value * float("nan") if self.calls >= self.first_nan_call else value


def failure_message(stderr: str) -> str:
    found = re.findall(r"NonFiniteLossError: (.+)", stderr)
    assert found, stderr[-3000:]
    return found[-1].strip()


def finite_weights(state_dict: dict) -> bool:
    return all(torch.isfinite(value).all() for value in state_dict.values() if value.is_floating_point())


def test_diverging_training_stops_and_keeps_last_checkpoint(dataset_dir, tmp_path):
    # A learning rate of 1e30 sends the weights far out after one Adam step, so a later forward pass overflows.
    output_dir = tmp_path / "outputs"
    options = ["--max_epochs", "3", "--val_interval", "3", "--learning_rate", "1e30"]
    result = run_training(dataset_dir, output_dir, *options, check=False)
    message = failure_message(result.stderr)
    epoch, iteration, within, epoch_length = map(int, ITERATION.search(message).groups())
    path, checkpoint_epoch = CHECKPOINT.search(message).groups()
    checkpoint = torch.load(output_dir / "models" / "checkpoint.pt", weights_only=True)
    client, runs = training_runs(sqlite_uri(output_dir))

    assert result.returncode != 0
    assert (result.stdout + result.stderr).count(f"MLflow run {runs[0].info.run_id} marked failed") == 1
    assert message.startswith("the network output contains")
    assert "before the loss 'combo'" in message
    assert iteration == (epoch - 1) * epoch_length + within
    assert Path(path) == output_dir / "models" / "checkpoint.pt"
    assert int(checkpoint_epoch) == epoch - 1
    assert checkpoint["epoch"] == epoch - 1
    assert finite_weights(checkpoint["network"])
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["error"] == f"NonFiniteLossError: {message}"

    # Rerunning the same command resumes from that checkpoint into the same run, and fails at the same iteration.
    rerun = run_training(dataset_dir, output_dir, *options, check=False)
    client, rerun_runs = training_runs(sqlite_uri(output_dir))

    assert rerun.returncode != 0
    assert f"after epoch {epoch - 1} of 3" in rerun.stdout
    assert failure_message(rerun.stderr) == message
    assert [run.info.run_id for run in rerun_runs] == [runs[0].info.run_id]
    assert rerun_runs[0].info.status == "FAILED"


def test_nan_loss_stops_before_the_optimizer_step(dataset_dir, tmp_path):
    output_dir = tmp_path / "outputs"
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.yaml"),
        meta_file=META,
        workflow_type="train",
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        ckpt_dir=str(output_dir / "models"),
        max_epochs=3,
        val_interval=3,
        max_cases=2,
        patch_size=[24, 32, 24],
        # Two training cases and batch_size 2 give one iteration per epoch: the loss is NaN in epoch 2.
        loss_function={
            "_target_": f"{__name__}.NaNLossFrom",
            "loss": "$scripts.engine.LossAdapter(@loss).to(@device)",
            "first_nan_call": 2,
        },
    )
    workflow.initialize()

    with pytest.raises(Exception) as raised:
        workflow.run()
    error = raised.value
    while error is not None and not isinstance(error, NonFiniteLossError):
        error = error.__cause__
    message = str(error)
    checkpoint = torch.load(output_dir / "models" / "checkpoint.pt", weights_only=True)
    network = workflow.parser.get_parsed_content("network").state_dict()
    client, runs = training_runs(sqlite_uri(output_dir))

    assert isinstance(error, NonFiniteLossError), raised.value
    assert message.startswith("the loss 'combo' is nan at epoch 2, iteration 2 (1 of 1 in the epoch)")
    assert f"Last good checkpoint: {output_dir / 'models' / 'checkpoint.pt'} (epoch 1, left unchanged)" in message
    assert checkpoint["epoch"] == 1
    # The error came before the backward pass, so the weights in memory are still those of the checkpoint.
    assert all(torch.equal(network[key], checkpoint["network"][key]) for key in network)
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["error"] == f"NonFiniteLossError: {message}"
