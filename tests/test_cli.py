"""The command-line helpers: the root cause of an uncaught exception is printed last."""

from __future__ import annotations

import sys

from scripts.cli import innermost_cause, show_root_cause_last


def chained_error() -> RuntimeError:
    try:
        try:
            raise ValueError("alpha must lie in [0, 1], got 2.")
        except ValueError as error:
            raise RuntimeError("Failed to instantiate component 'scripts.losses.build_loss'") from error
    except RuntimeError as error:
        return error


def test_innermost_cause_follows_the_chain():
    error = chained_error()

    assert isinstance(innermost_cause(error), ValueError)
    assert str(innermost_cause(error)) == "alpha must lie in [0, 1], got 2."


def test_innermost_cause_of_a_single_error_is_itself():
    error = KeyError("x")

    assert innermost_cause(error) is error


def test_hook_prints_the_root_cause_last(monkeypatch, capsys):
    printed = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, traceback: printed.append(error))
    show_root_cause_last()
    show_root_cause_last()  # a second call must not print the line twice
    error = chained_error()

    sys.excepthook(type(error), error, error.__traceback__)

    assert printed == [error]
    assert capsys.readouterr().err.splitlines() == ["error: alpha must lie in [0, 1], got 2."]


def test_hook_adds_nothing_for_an_unchained_error(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, traceback: None)
    show_root_cause_last()
    error = ValueError("plain")

    sys.excepthook(type(error), error, error.__traceback__)

    assert capsys.readouterr().err == ""


def test_hook_names_a_root_cause_without_message(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", lambda kind, error, traceback: None)
    show_root_cause_last()
    try:
        try:
            raise StopIteration
        except StopIteration as cause:
            raise RuntimeError("wrapper") from cause
    except RuntimeError as caught:
        error = caught

    sys.excepthook(type(error), error, error.__traceback__)

    assert capsys.readouterr().err.splitlines() == ["error: StopIteration"]
