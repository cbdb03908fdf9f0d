"""Shared entry point of the bundle's command lines (``python -m scripts.<module> ...``)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import fire


def run_commands(commands: dict[str, Any]) -> None:
    """Run a fire command line and turn the bundle's input errors into a one-line message and exit status 1.

    Errors that explain bad input (a missing file, an invalid value, a failed download) are shown without a
    traceback; any other exception is a bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(commands)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
