"""The validation after the last epoch, and the check that keeps another training's model out of a run."""

from __future__ import annotations

import json

import pytest
from ignite.engine import Engine

from scripts.checkpoints import saved_by_run
from scripts.validation import LastEpochValidation


class RecordingValidator:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def run(self, epoch: int) -> None:
        self.epochs.append(epoch)


@pytest.mark.parametrize(
    ("max_epochs", "interval", "expected"),
    [(2, 5, [2]), (7, 5, [7]), (10, 5, []), (3, 1, []), (1, 2, [1])],
    ids=["shorter-than-interval", "last-epoch-skipped", "last-epoch-validated", "every-epoch", "one-epoch"],
)
def test_last_epoch_validation_fills_the_gap(max_epochs, interval, expected):
    validator = RecordingValidator()
    trainer = Engine(lambda engine, batch: None)
    LastEpochValidation(validator, interval).attach(trainer)

    trainer.run([0], max_epochs=max_epochs)

    assert validator.epochs == expected


@pytest.mark.parametrize("interval", [0, -1, 2.5, True, "5"])
def test_last_epoch_validation_rejects_invalid_interval(interval):
    with pytest.raises(ValueError, match="val_interval must be a positive integer"):
        LastEpochValidation(RecordingValidator(), interval)


def test_saved_by_run_reads_the_model_description(tmp_path):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights")
    description = checkpoint.with_suffix(".json")

    assert not saved_by_run(checkpoint, "run-a")
    description.write_text(json.dumps({"training_run_id": "run-a", "epoch": 2}))
    assert saved_by_run(checkpoint, "run-a")
    assert not saved_by_run(checkpoint, "run-b")
    assert not saved_by_run(checkpoint, None)
    description.write_text("{not json")
    assert not saved_by_run(checkpoint, "run-a")
    description.write_text(json.dumps(["run-a"]))
    assert not saved_by_run(checkpoint, "run-a")
