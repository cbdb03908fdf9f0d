"""Values of command-line and config options that need more than Python's casts, and counts in messages."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any


def as_bool(name: str, value: Any) -> bool:
    """Return a boolean option, accepting ``"true"``/``"false"`` in any case as a command line gives them.

    ``bool("false")`` is ``True``, so a plain cast would silently invert a flag passed as ``--loss#batch false``.

    Raises:
        ValueError: for any other value.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{name} must be true or false, got {value!r}.")


def as_int(name: str, value: Any, minimum: int | None = None, allow_text: bool = True) -> int:
    """Return an integer option, accepting a whole number given as a string, as a command line gives it.

    ``allow_text=False`` rejects strings too, for a value that is passed on unconverted.

    Raises:
        ValueError: for a value that is not a whole number (``2.5``, ``"abc"``, ``True``) or is below ``minimum``.
    """
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif allow_text and isinstance(value, str) and re.fullmatch(r"[+-]?[0-9]+", value.strip()):
        number = int(value.strip())
    if number is None or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" of at least {minimum}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}.")
    return number


def check_settings(
    integers: Mapping[str, tuple[Any, int]] | None = None,
    positive_numbers: Mapping[str, Any] | None = None,
    flags: Mapping[str, Any] | None = None,
    voxel_counts: Mapping[str, tuple[Any, int]] | None = None,
    voxel_sizes: Mapping[str, Any] | None = None,
    spatial_dims: int = 3,
) -> None:
    """Check a config's settings by kind, so that a wrong value stops the run with its name before anything runs.

    Args:
        integers: name to ``(value, minimum)``; the value must be an int, not text, because the config passes it on
            unconverted.
        positive_numbers: name to value, a finite number above 0.
        flags: name to value, true or false as :func:`as_bool` reads them.
        voxel_counts: name to ``(value, multiple)``; the value must list one positive integer per spatial axis, each
            a multiple of ``multiple`` (a patch size that the network's downsampling divides).
        voxel_sizes: name to value, one positive number per spatial axis (a voxel size in mm).
        spatial_dims: the number of spatial axes of ``voxel_counts`` and ``voxel_sizes``.

    Raises:
        ValueError: naming the first setting of a wrong kind or out of range, and its value.
    """
    for name, (value, minimum) in (integers or {}).items():
        as_int(name, value, minimum, allow_text=False)
    for name, value in (positive_numbers or {}).items():
        if not _is_positive_number(value):
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    for name, value in (flags or {}).items():
        as_bool(name, value)
    for name, (value, multiple) in (voxel_counts or {}).items():
        if not _is_axis_list(value, spatial_dims) or not all(
            isinstance(item, int) and not isinstance(item, bool) and item > 0 and item % multiple == 0 for item in value
        ):
            raise ValueError(
                f"{name} must list {spatial_dims} positive integers, one per axis, each a multiple of {multiple}, "
                f"got {value!r}; for example [40, 56, 40]."
            )
    for name, value in (voxel_sizes or {}).items():
        if not _is_axis_list(value, spatial_dims) or not all(_is_positive_number(item) for item in value):
            raise ValueError(
                f"{name} must list {spatial_dims} positive voxel sizes in mm, one per axis, got {value!r}; "
                "for example [1.0, 1.0, 1.0]."
            )


def _is_positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _is_axis_list(value: Any, spatial_dims: int) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == spatial_dims


def count(number: int, noun: str, plural: str | None = None) -> str:
    """Return ``1 epoch``, ``2 epochs``: the number with the noun in singular or plural (default ``noun + "s"``)."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"
