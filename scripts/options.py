"""Values of command-line and config options that need more than Python's casts, and counts in messages."""

from __future__ import annotations

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


def count(number: int, noun: str, plural: str | None = None) -> str:
    """Return ``1 epoch``, ``2 epochs``: the number with the noun in singular or plural (default ``noun + "s"``)."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"
