"""The study's figures: per-loss box plots grouped by family, and overlaid validation curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on training servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..losses import FAMILIES  # noqa: E402

FAMILY_COLOURS = dict(zip(FAMILIES, ("tab:blue", "tab:orange", "tab:green", "tab:purple")))


def plot_boxes(
    values: Mapping[str, Sequence[float]],
    families: Mapping[str, str],
    path: str | Path,
    ylabel: str,
    title: str,
) -> Path:
    """Draw one box per loss (over its per-case values), losses grouped by family and coloured by it.

    ``values`` maps each loss, in table order, to its values; a loss without values keeps its place, empty.
    """
    losses = list(values)
    positions, position, previous = [], 0.0, None
    for loss in losses:
        if previous is not None and families[loss] != previous:
            position += 0.8  # a gap between families
        position += 1.0
        positions.append(position)
        previous = families[loss]

    figure, axis = plt.subplots(figsize=(max(6.0, 0.55 * len(losses) + 2.0), 4.5))
    data = [np.asarray(values[loss], dtype=np.float64) for loss in losses]
    shown = [index for index, column in enumerate(data) if column.size]
    if shown:
        boxes = axis.boxplot(
            [data[index] for index in shown],
            positions=[positions[index] for index in shown],
            widths=0.6,
            patch_artist=True,
            showmeans=True,
            medianprops={"color": "black"},
            meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "black", "markersize": 4},
        )
        for patch, index in zip(boxes["boxes"], shown):
            patch.set_facecolor(FAMILY_COLOURS.get(families[losses[index]], "tab:gray"))
            patch.set_alpha(0.6)
    axis.set_xticks(positions)
    axis.set_xticklabels(losses, rotation=45, ha="right")
    axis.set_xlim(0.0, (positions[-1] if positions else 1.0) + 1.0)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(axis="y", alpha=0.3)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=colour, alpha=0.6)
        for family, colour in FAMILY_COLOURS.items()
        if family in set(families.values())
    ]
    labels = [family for family in FAMILY_COLOURS if family in set(families.values())]
    axis.legend(handles, labels, title="family", fontsize="small", loc="best")
    return _save(figure, path)


def plot_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    families: Mapping[str, str],
    path: str | Path,
    title: str,
) -> Path:
    """Overlay one validation curve per loss, ``(epoch, value)`` pairs, coloured by family."""
    figure, axis = plt.subplots(figsize=(8.0, 5.0))
    styles = ("-", "--", ":", "-.")
    # Line style and marker together tell up to 16 losses of one family (the region family has 10) apart.
    markers = ("o", "s", "^", "v")
    seen: dict[str, int] = {}
    for loss, points in curves.items():
        if not points:
            continue
        family = families[loss]
        index = seen.get(family, 0)
        seen[family] = index + 1
        epochs, means = zip(*points)
        axis.plot(
            epochs,
            means,
            linestyle=styles[index % len(styles)],
            marker=markers[(index // len(styles)) % len(markers)],
            markersize=3,
            color=FAMILY_COLOURS.get(family, "tab:gray"),
            label=f"{loss} ({family})",
        )
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation mean Dice")
    axis.set_ylim(0.0, 1.0)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(fontsize="x-small", ncol=2 if len(axis.lines) > 8 else 1, loc="lower right")
    return _save(figure, path)


def _save(figure: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
