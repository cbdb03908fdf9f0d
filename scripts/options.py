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


def as_int(name: str, value: Any, minimum: int | None = None) -> int:
    """Return an integer option, accepting a whole number given as a string, as a command line gives it.

    Raises:
        ValueError: for a value that is not a whole number (``2.5``, ``"abc"``, ``True``) or is below ``minimum``.
    """
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None or (minimum is not None and number < minimum):
        bound = "" if minimum is None else f" of at least {minimum}"
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}.")
    return number


def count(number: int, noun: str, plural: str | None = None) -> str:
    """Return ``1 epoch``, ``2 epochs``: the number with the noun in singular or plural (default ``noun + "s"``)."""
    return f"{number} {noun}" if number == 1 else f"{number} {plural or noun + 's'}"
