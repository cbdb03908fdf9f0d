"""The learning-curve plot logged with every training run, and the study's validation curves."""

from __future__ import annotations

import matplotlib.pyplot as plt

from scripts import plots


def test_learning_curves_show_member_losses_and_whole_epochs(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(plt, "close", saved.append)  # keep the figure for the checks
    history = {
        "train_loss": [(1, 13.0), (2, 22.5)],
        "train_loss.dice": [(1, 0.6), (2, 0.5)],
        "train_loss.hausdorff": [(1, 12.4), (2, 10.6)],
        "val_mean_dice": [(1, 0.5), (2, 0.6)],
    }

    path = plots.plot_learning_curves(history, tmp_path / "curves.png", title="run")

    assert path.stat().st_size > 0
    loss_axis, dice_axis = saved[0].axes
    assert [line.get_label() for line in loss_axis.lines] == ["train_loss", "train_loss.dice", "train_loss.hausdorff"]
    assert [line.get_label() for line in dice_axis.lines] == ["val_mean_dice"]
    ticks = [tick for tick in loss_axis.get_xticks() if 1 <= tick <= 2]
    assert ticks == [1.0, 2.0]


def test_study_curves_of_one_family_look_different(tmp_path, monkeypatch):
    from scripts.study import plots

    saved = {}
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.setdefault("figure", figure))
    losses = [f"loss{index}" for index in range(10)]

    plots.plot_curves({loss: [(1, 0.5), (2, 0.6)] for loss in losses}, dict.fromkeys(losses, "region"), tmp_path, "t")

    lines = saved["figure"].axes[0].lines
    assert len(lines) == 10
    assert len({(line.get_linestyle(), line.get_marker()) for line in lines}) == 10
