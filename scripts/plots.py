"""Plots logged with each run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_learning_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: str | Path, title: str = "") -> Path:
    """Plot the training loss and the validation Dice against the epoch and save a PNG.

    ``history`` maps metric names to ``(epoch, value)`` pairs, as the tracker records them. The left panel shows
    ``train_loss`` and a weighted sum's ``train_loss.<member>`` curves; the right one ``val_mean_dice`` and the
    per-class ``val_dice.*`` curves. Epoch ticks are whole numbers.
    """
    figure, (loss_axis, dice_axis) = plt.subplots(1, 2, figsize=(11, 4))
    if "train_loss" in history:
        epochs, values = zip(*history["train_loss"])
        loss_axis.plot(epochs, values, marker=".", linewidth=2.5, label="train_loss")
    # A weighted sum's members, unweighted: they show which term moves when a schedule changes the weights.
    for name in sorted(history):
        if name.startswith("train_loss."):
            epochs, values = zip(*history[name])
            loss_axis.plot(epochs, values, marker=".", linestyle="--", label=name)
    if len(loss_axis.lines) > 1:
        loss_axis.legend(loc="best", fontsize="small")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    loss_axis.set_title("training loss")
    loss_axis.grid(alpha=0.3)

    for name in sorted(history):
        if name == "val_mean_dice" or name.startswith("val_dice."):
            epochs, values = zip(*history[name])
            style = {"linewidth": 2.5} if name == "val_mean_dice" else {"linestyle": "--"}
            dice_axis.plot(epochs, values, marker="o", label=name, **style)
    dice_axis.set_xlabel("epoch")
    dice_axis.set_ylabel("Dice")
    dice_axis.set_ylim(0.0, 1.0)
    dice_axis.set_title("validation Dice")
    dice_axis.grid(alpha=0.3)
    if dice_axis.lines:
        # "best" keeps the legend off the curves, which lie low early in a training and high later.
        dice_axis.legend(loc="best", fontsize="small")

    for axis in (loss_axis, dice_axis):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
