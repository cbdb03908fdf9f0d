"""The epoch weight schedule of weighted_sum losses, run by an ignite engine."""

from __future__ import annotations

import logging

import pytest
import torch
from ignite.engine import Engine

from scripts.losses import build_loss
from scripts.schedules import EqualContribution, WeightTransfer

KERVADEC = {"generalized_dice": {"weight": 1.0}, "boundary": {"weight": 0.01, "include_background": False}}


def run_epochs(handler: WeightTransfer, epochs: int) -> list[dict[str, float]]:
    """Run an engine without data for ``epochs`` epochs and record the loss weights seen in each."""
    seen: list[dict[str, float]] = []

    def step(engine: Engine, batch: int) -> None:
        if batch == 0:
            seen.append(handler.loss.current_weights)

    engine = Engine(step)
    handler.attach(engine)
    engine.run([0, 1], max_epochs=epochs)
    return seen


def test_transfer_follows_kervadec_schedule():
    loss = build_loss("weighted_sum", losses=KERVADEC)
    handler = WeightTransfer(loss, source="generalized_dice", target="boundary", step=0.01, source_floor=0.1)

    seen = run_epochs(handler, 95)

    assert seen[0] == {"generalized_dice": 1.0, "boundary": 0.01}
    assert seen[1]["generalized_dice"] == pytest.approx(0.99)
    assert seen[1]["boundary"] == pytest.approx(0.02)
    # Epoch 91 reaches the floor 1 - 0.9 = 0.1; the boundary weight keeps growing afterwards.
    assert seen[90]["generalized_dice"] == pytest.approx(0.1)
    assert seen[94]["generalized_dice"] == pytest.approx(0.1)
    assert seen[94]["boundary"] == pytest.approx(0.01 + 0.94)


def test_transfer_keep_total_matches_valverde_gradual_weights():
    loss = build_loss("weighted_sum", losses={"cross_entropy": 1.0, "region_wise": 0.0})
    handler = WeightTransfer(
        loss, source="cross_entropy", target="region_wise", step=0.01, source_floor=0.01, keep_total=True
    )

    for epoch in (1, 50, 100, 150):
        source, target = handler.weights_at(epoch)
        expected = max((100 - (epoch - 1)) / 100, 0.01)
        assert source == pytest.approx(expected)
        assert target == pytest.approx(1 - expected)


def test_transfer_start_sets_epoch_one_weights():
    loss = build_loss("weighted_sum", losses={"cross_entropy": 1.0, "dice": 1.0})
    handler = WeightTransfer(loss, source="dice", target="cross_entropy", start={"dice": 0.5, "cross_entropy": 0.0})

    assert loss.current_weights == {"cross_entropy": 0.0, "dice": 0.5}
    assert handler.weights_at(3) == pytest.approx((0.48, 0.02))


def test_transfer_resumes_from_the_epoch_number():
    loss = build_loss("weighted_sum", losses=KERVADEC)
    handler = WeightTransfer(loss, source="generalized_dice", target="boundary")
    engine = Engine(lambda engine, batch: None)
    handler.attach(engine)
    engine.state.epoch = 10

    handler(engine)

    assert loss.current_weights["generalized_dice"] == pytest.approx(0.91)
    assert loss.current_weights["boundary"] == pytest.approx(0.10)


def test_transfer_logs_each_change(caplog):
    loss = build_loss("weighted_sum", losses=KERVADEC)
    handler = WeightTransfer(loss, source="generalized_dice", target="boundary")

    with caplog.at_level(logging.INFO, logger="scripts.schedules"):
        run_epochs(handler, 2)

    assert "epoch 2: loss weights generalized_dice 1 -> 0.99, boundary 0.01 -> 0.02" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"source": "dice", "target": "boundary"}, "source 'dice' is not a member"),
        ({"source": "generalized_dice", "target": "generalized_dice"}, "name two different members"),
        ({"step": -0.01}, "step must be a finite non-negative number"),
        ({"source_floor": float("nan")}, "source_floor must be"),
        ({"start": {"dice": 1.0}}, "start names 'dice'"),
        ({"start": {"boundary": -1.0}}, "weight of 'boundary'"),
    ],
)
def test_transfer_rejects_bad_options(options, message):
    loss = build_loss("weighted_sum", losses=KERVADEC)
    arguments = {"source": "generalized_dice", "target": "boundary", **options}

    with pytest.raises(ValueError, match=message):
        WeightTransfer(loss, **arguments)


def test_transfer_needs_a_weighted_loss():
    with pytest.raises(ValueError, match="set loss#name to weighted_sum"):
        WeightTransfer(build_loss("dice"), source="a", target="b")


def balanced_training(epochs: int) -> tuple[EqualContribution, list[float], list[float]]:
    """Call a cross-entropy + Dice weighted_sum on two fixed batches per epoch under EqualContribution."""
    generator = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(2, 3, 6, 5, 4, generator=generator), torch.randint(0, 3, (2, 1, 6, 5, 4), generator=generator))
        for _ in range(2)
    ]
    loss = build_loss("weighted_sum", losses={"cross_entropy": 2.0, "dice": 1.0})
    handler = EqualContribution(loss, reference="cross_entropy", balanced="dice")
    dice_weights: list[float] = []

    def step(engine: Engine, batch: int) -> None:
        if batch == 0:
            dice_weights.append(loss.current_weights["dice"])
        loss(*batches[batch])

    engine = Engine(step)
    handler.attach(engine)
    engine.run([0, 1], max_epochs=epochs)
    cross_entropy, dice = build_loss("cross_entropy"), build_loss("dice")
    means = [sum(float(member(*batch)) for batch in batches) / 2 for member in (cross_entropy, dice)]
    return handler, dice_weights, means


def test_equal_contribution_matches_the_means():
    handler, dice_weights, (cross_entropy_mean, dice_mean) = balanced_training(epochs=3)

    # Epoch 1 runs with the config's weight; later epochs give Dice the weighted mean of the reference.
    assert dice_weights[0] == 1.0
    assert dice_weights[1] == pytest.approx(2.0 * cross_entropy_mean / dice_mean, rel=1e-6)
    assert dice_weights[2] == pytest.approx(dice_weights[1], rel=1e-6)
    assert handler.loss.current_weights["cross_entropy"] == 2.0


def test_equal_contribution_logs_each_change(caplog):
    with caplog.at_level(logging.INFO, logger="scripts.schedules"):
        balanced_training(epochs=2)

    assert "epoch 1: mean cross_entropy" in caplog.text
    assert "after epoch 1: mean" in caplog.text
    assert "loss weight dice 1 ->" in caplog.text
    assert "from epoch 2" in caplog.text


@pytest.mark.parametrize(
    "members, message",
    [
        (("cross_entropy", "tversky"), "the balanced 'tversky' is not a member"),
        (("boundary", "dice"), "the reference 'boundary' is not a member"),
        (("dice", "dice"), "reference and balanced are both 'dice'"),
    ],
)
def test_equal_contribution_rejects_bad_members(members, message):
    loss = build_loss("weighted_sum", losses={"cross_entropy": 1.0, "dice": 1.0})

    with pytest.raises(ValueError, match=message):
        EqualContribution(loss, reference=members[0], balanced=members[1])


def test_equal_contribution_needs_a_weighted_loss():
    with pytest.raises(ValueError, match="set loss#name to weighted_sum"):
        EqualContribution(build_loss("dice"), reference="a", balanced="b")
