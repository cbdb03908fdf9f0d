"""Command line of the loss registry: ``python -m scripts.losses list``."""

from __future__ import annotations

from ..cli import run_commands
from .registry import get_loss_spec, list_losses


def list(family: str | None = None) -> str:  # noqa: A001 - the command's name on the command line
    """Print the registered losses as a table: name, family, extra inputs and paper.

    Args:
        family: show only this family (pixel, region, boundary or combination).
    """
    specs = list_losses(family)
    rows = [("name", "family", "extra inputs", "paper")]
    for spec in specs:
        rows.append((spec.name, spec.family, ", ".join(spec.extra_inputs) or "-", spec.reference))
    widths = [max(len(row[column]) for row in rows) for column in range(3)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths)) + "  " + row[3])
        if index == 0:
            lines.append("  ".join("-" * width for width in widths) + "  " + "-" * 5)
    lines.append(f"{len(specs)} losses registered.")
    return "\n".join(lines)


def show(name: str) -> str:
    """Print one loss: family, paper, extra inputs and default hyperparameters.

    Args:
        name: the registered name, e.g. ``dice``.
    """
    spec = get_loss_spec(name)
    lines = [
        f"name: {spec.name}",
        f"class: {spec.loss_class.__module__}.{spec.loss_class.__qualname__}",
        f"family: {spec.family}",
        f"paper: {spec.reference}",
        f"extra inputs: {', '.join(spec.extra_inputs) or 'none'}",
        "defaults:",
    ]
    lines += [f"  {key}: {value!r}" for key, value in spec.defaults.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    run_commands({"list": list, "show": show})
