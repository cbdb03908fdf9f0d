"""Shared entry point of the bundle's command lines (``python -m scripts.<module> ...``)."""

from __future__ import annotations

import ast
import difflib
import inspect
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fire


def run_commands(commands: dict[str, Any]) -> None:
    """Run a fire command line and turn the bundle's input errors into a one-line message and exit status 1.

    Errors that explain bad input (a missing file, an invalid value, a failed download) are shown without a
    traceback; any other exception is a bug and keeps its traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Fire reports an option it cannot use only after the command has run, which can take hours for a study.
    unknown = unknown_option_message(commands, sys.argv[1:])
    if unknown:
        print(f"error: {unknown}", file=sys.stderr)
        sys.exit(2)
    try:
        fire.Fire(commands)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def unknown_option_message(commands: dict[str, Any], arguments: Sequence[str]) -> str | None:
    """Return an error message for the ``--options`` that the chosen command does not take, or ``None``.

    ``arguments`` is the command line after the program: the command's name, then its arguments. Fire's own
    flags after a lone ``--``, ``--help``, and the ``--noflag`` form of a boolean option are accepted. A command
    that takes ``**kwargs``, or a name that is not a command, is left to Fire.
    """
    if not arguments or arguments[0] not in commands:
        return None
    command = arguments[0]
    try:
        parameters = inspect.signature(commands[command]).parameters
    except (TypeError, ValueError):
        return None
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return None
    rest = list(arguments[1:])
    if "--" in rest:
        rest = rest[: rest.index("--")]
    unknown = []
    for argument in rest:
        if not argument.startswith("--") or argument == "--":
            continue
        option = argument[2:].partition("=")[0].replace("-", "_")
        negated = option[2:] if option.startswith("no") else None
        if option == "help" or option in parameters or negated in parameters:
            continue
        close = difflib.get_close_matches(option, list(parameters), n=3)
        hint = f" (did you mean {', '.join('--' + match for match in close)}?)" if close else ""
        unknown.append(f"--{option}{hint}")
    if not unknown:
        return None
    return (
        f"{command!r} has no option {'; '.join(unknown)}. Nothing was run; add --help after the command to list "
        "its options."
    )


def show_root_cause_last() -> None:
    """Make an uncaught exception end with the message of the exception that started it.

    MONAI's config reader wraps an error raised while it builds a component (an invalid loss option, a missing
    dataset file) in ``RuntimeError: Failed to instantiate component ...``, and Python prints that wrapper last, far
    below the message that describes the problem. After this call an uncaught exception prints its traceback as
    before, followed by one line ``error: <message of the root cause>`` (:func:`root_cause`). The bundle's configs
    call it first in their ``run`` section; calling it again changes nothing.
    """
    previous = sys.excepthook
    if getattr(previous, "shows_root_cause", False):
        return

    def hook(kind, error, traceback) -> None:
        previous(kind, error, traceback)
        root = root_cause(error)
        if root is not error:
            print(f"error: {str(root) or type(root).__name__}", file=sys.stderr)

    hook.shows_root_cause = True
    sys.excepthook = hook


def root_cause(error: BaseException) -> BaseException:
    """Return the innermost exception of ``error``'s chain that the bundle's own code raised, else the innermost one.

    The bundle wraps a library's error in a message with the file, the value and what to do (``raise ... from``), so
    its message says more than the library's ``Connection refused`` or JSON position beneath it.
    """
    chain = cause_chain(error)
    package = str(Path(__file__).resolve().parent)
    for candidate in reversed(chain):
        frame = candidate.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        if frame is not None and str(Path(frame.tb_frame.f_code.co_filename).resolve()).startswith(package):
            return candidate
    return chain[-1]


def innermost_cause(error: BaseException) -> BaseException:
    """Return the exception at the start of ``error``'s chain of causes (``raise ... from``) and contexts."""
    return cause_chain(error)[-1]


def cause_chain(error: BaseException) -> list[BaseException]:
    """Return ``error`` and the exceptions it was raised from, or during, outermost first; a cycle ends the list."""
    chain = [error]
    seen = {id(error)}
    while True:
        cause = chain[-1].__cause__
        if cause is None and not chain[-1].__suppress_context__:
            cause = chain[-1].__context__
        if cause is None or id(cause) in seen:
            return chain
        seen.add(id(cause))
        chain.append(cause)


def check_command_line_settings(argv: Sequence[str] | None = None) -> None:
    """Reject a ``--name`` on a ``monai.bundle run`` command line that none of its config files defines.

    MONAI adds an unknown override to the config and goes on, so a typo such as ``--max_epoch 3`` (for
    ``max_epochs``) would train with the default. Only the part of a name before the first ``#`` is checked:
    ``--loss#alpha`` checks ``loss``, because the loss checks its own options. MONAI's own arguments
    (``--meta_file``, ``--config_file``, ...) are skipped. Other processes (a study, the tests) call the workflow
    without such a command line, and then nothing is checked. Neither is a command line that reads its arguments
    from ``--args_file``.

    Args:
        argv: the command line; default ``sys.argv``.

    Raises:
        ValueError: naming each unknown setting, with the closest known names.
    """
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or Path(argv[0]).parts[-2:] != ("bundle", "__main__.py") or argv[1] != "run":
        return
    options = _command_line_options(argv[2:])
    if "args_file" in options or "config_file" not in options:
        return
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import run

    config_files = _file_list(options["config_file"])
    known: set[str] = set()
    for config_file in config_files:
        known.update(ConfigParser.load_config_file(config_file))
    own_arguments = set(inspect.signature(run).parameters) - {"override"}
    unknown = []
    for name in options:
        setting = name.split("#", 1)[0]
        if name in own_arguments or setting in known or setting.startswith("_meta_"):
            continue
        close = difflib.get_close_matches(setting, sorted(known), n=3)
        hint = f"; did you mean {', '.join('--' + match for match in close)}?" if close else "."
        unknown.append(f"--{name}{hint}")
    if unknown:
        raise ValueError(
            f"unknown setting on the command line: {' '.join(unknown)} No config file defines it "
            f"({', '.join(config_files)}); the settings a user tunes are at the top of {config_files[0]}."
        )


def _command_line_options(arguments: Sequence[str]) -> dict[str, str | None]:
    """Return ``{name: value}`` for the ``--name value`` and ``--name=value`` arguments, in order."""
    options: dict[str, str | None] = {}
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        index += 1
        if not argument.startswith("--"):
            continue
        name, separator, value = argument[2:].partition("=")
        if not separator:
            value = None
            if index < len(arguments) and not arguments[index].startswith("--"):
                value = arguments[index]
                index += 1
        options[name] = value
    return options


def _file_list(value: str | None) -> list[str]:
    """Return the config files of a ``--config_file`` value: one path, or a list written as a Python literal."""
    if value is None:
        return []
    text = value.strip()
    if text.startswith("["):
        try:
            return [str(item) for item in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            pass
    return [text]
