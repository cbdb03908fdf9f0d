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


def show_root_cause_last() -> None:
    """Make an uncaught exception end with the message of the exception that started it.

    MONAI's config reader wraps an error raised while it builds a component (an invalid loss option, a missing
    dataset file) in ``RuntimeError: Failed to instantiate component ...``, and Python prints that wrapper last, far
    below the message that describes the problem. After this call an uncaught exception prints its traceback as
    before, followed by one line ``error: <message of the innermost exception>``. The bundle's configs call it
    first in their ``run`` section; calling it again changes nothing.
    """
    previous = sys.excepthook
    if getattr(previous, "shows_root_cause", False):
        return

    def hook(kind, error, traceback) -> None:
        previous(kind, error, traceback)
        root = innermost_cause(error)
        if root is not error:
            print(f"error: {str(root) or type(root).__name__}", file=sys.stderr)

    hook.shows_root_cause = True
    sys.excepthook = hook


def innermost_cause(error: BaseException) -> BaseException:
    """Return the exception at the start of ``error``'s chain of causes (``raise ... from``) and contexts."""
    seen = {id(error)}
    while True:
        cause = error.__cause__
        if cause is None and not error.__suppress_context__:
            cause = error.__context__
        if cause is None or id(cause) in seen:
            return error
        seen.add(id(cause))
        error = cause
