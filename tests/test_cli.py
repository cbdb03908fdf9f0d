"""The command-line helpers: the root cause of an uncaught exception printed last, and unknown settings rejected."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from monai.bundle import ConfigParser

from scripts import BUNDLE_ROOT
from scripts.cli import (
    check_command_line_settings,
    innermost_cause,
    root_cause,
    show_root_cause_last,
    unknown_option_message,
)
from scripts.options import as_int, check_settings, count


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


MONAI_MAIN = "/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"


def write_configs(tmp_path):
    base = tmp_path / "train.yaml"
    base.write_text("max_epochs: 60\nloss:\n  name: combo\nlearning_rate: 0.002\n")
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("loss_transforms: []\n")
    return str(base), str(overlay)


def test_known_settings_pass(tmp_path):
    base, overlay = write_configs(tmp_path)
    argv = [MONAI_MAIN, "run", "--config_file", f"['{base}', '{overlay}']", "--meta_file", "m.json"]
    argv += ["--max_epochs", "2", "--loss#alpha", "0.3", "--loss_transforms=[]", "--_meta_#version", "1"]

    check_command_line_settings(argv)


def test_mistyped_setting_names_the_closest(tmp_path):
    base, _ = write_configs(tmp_path)
    argv = [MONAI_MAIN, "run", "--config_file", base, "--max_epoch", "3"]

    with pytest.raises(
        ValueError, match=r"unknown setting on the command line: --max_epoch; did you mean --max_epochs\?"
    ) as raised:
        check_command_line_settings(argv)
    # The hint names the first config file of the command line, not always configs/train.yaml.
    assert str(raised.value).endswith(f"the settings a user tunes are at the top of {base}.")


def test_overlay_settings_count_as_known(tmp_path):
    base, overlay = write_configs(tmp_path)
    only_base = [MONAI_MAIN, "run", "--config_file", base, "--loss_transforms", "[]"]
    with_overlay = [MONAI_MAIN, "run", "--config_file", f"['{base}','{overlay}']", "--loss_transforms", "[]"]

    with pytest.raises(ValueError, match="--loss_transforms"):
        check_command_line_settings(only_base)
    check_command_line_settings(with_overlay)


def test_other_command_lines_are_not_checked(tmp_path):
    base, _ = write_configs(tmp_path)

    check_command_line_settings(["-m", "pytest", "--max_epoch", "3"])
    check_command_line_settings([MONAI_MAIN, "verify_net_in_out", "--config_file", base, "--max_epoch", "3"])
    check_command_line_settings([MONAI_MAIN, "run", "--args_file", "args.json", "--max_epoch", "3"])


def check(dataset_dir: str = "", num_folds: int = 5, verbose: bool = False) -> None:
    """A command with three options, as the bundle's command lines define them."""


def flexible(**options) -> None:
    """A command that takes any option."""


COMMANDS = {"check": check, "flexible": flexible}


def test_known_options_pass():
    arguments = ["check", "--dataset_dir", "/data", "--num-folds=3", "--noverbose", "--help", "--", "--trace"]

    assert unknown_option_message(COMMANDS, arguments) is None


def test_mistyped_option_is_named_before_anything_runs():
    message = unknown_option_message(COMMANDS, ["check", "--datset_dir", "/data", "--num_fold", "3"])

    assert message.startswith("'check' has no option --datset_dir (did you mean --dataset_dir?)")
    assert "--num_fold (did you mean --num_folds?)" in message
    assert "Nothing was run" in message


def test_other_command_lines_left_to_fire():
    assert unknown_option_message(COMMANDS, ["flexible", "--anything", "1"]) is None
    assert unknown_option_message(COMMANDS, ["chek", "--datset_dir", "/data"]) is None
    assert unknown_option_message(COMMANDS, []) is None


def test_data_command_rejects_a_mistyped_option(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "scripts.data", "check", "--datset_dir", str(tmp_path)],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: 'check' has no option --datset_dir (did you mean --dataset_dir?)")
    )


def test_count_uses_singular_and_plural():
    assert count(1, "problem") == "1 problem"
    assert count(2, "problem") == "2 problems"
    assert count(1, "loss", "losses") == "1 loss"
    assert count(3, "loss", "losses") == "3 losses"


def train_config(**settings) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(f"{BUNDLE_ROOT}/configs/train.yaml")
    for key, value in settings.items():
        parser[key] = value
    return parser


def test_training_settings_defaults_pass():
    assert train_config().get_parsed_content("settings_check") is None


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("seed", "abc", "seed must be an integer of at least 0, got 'abc'"),
        ("max_epochs", "3", "max_epochs must be an integer of at least 1, got '3'"),
        ("fold", 2.5, "fold must be an integer of at least 0, got 2.5"),
        ("learning_rate", "abc", "learning_rate must be a positive number, got 'abc'"),
        ("learning_rate", float("nan"), "learning_rate must be a positive number, got nan"),
        ("amp", "maybe", "amp must be true or false, got 'maybe'"),
        ("patch_size", [40, 56], "patch_size must list 3 positive integers, one per axis, each a multiple of 8"),
        ("patch_size", [40, 50, 40], "got [40, 50, 40]"),
        ("patch_size", "[40, 56, 40]", "patch_size must list 3 positive integers"),
        ("pixdim", [1.0, 0.0, 1.0], "pixdim must list 3 positive voxel sizes in mm, one per axis, got [1.0, 0.0, 1.0]"),
        ("pixdim", [1.0, 1.0], "pixdim must list 3 positive voxel sizes"),
    ],
)
def test_training_settings_wrong_kind_named(setting, value, message):
    # MONAI wraps the error of a config expression in a RuntimeError; the run prints the innermost cause last.
    with pytest.raises(RuntimeError) as caught:
        train_config(**{setting: value}).get_parsed_content("settings_check")

    cause = innermost_cause(caught.value)
    assert isinstance(cause, ValueError)
    assert message in str(cause)


def test_amp_text_flag_is_read_as_bool():
    parser = train_config(amp="false")

    assert parser.get_parsed_content("trainer#amp") is False
    assert parser.get_parsed_content("evaluator#amp") is False


def test_amp_only_on_cuda():
    parser = train_config(amp=True, device="$torch.device('cpu')")

    assert parser.get_parsed_content("trainer#amp") is False


def test_check_settings_accepts_valid_values():
    check_settings(
        integers={"seed": (3, 0)},
        positive_numbers={"learning_rate": 1e-3},
        flags={"amp": "true"},
        voxel_counts={"patch_size": ((16, 24, 8), 8)},
        voxel_sizes={"pixdim": [0.5, 1, 2.5]},
    )


def test_inference_settings_checked():
    parser = ConfigParser()
    parser.read_config(f"{BUNDLE_ROOT}/configs/inference.yaml")
    assert parser.get_parsed_content("settings_check") is None
    parser["patch_size"] = [41, 56, 40]

    with pytest.raises(RuntimeError) as caught:
        parser.get_parsed_content("settings_check")

    assert "patch_size must list 3 positive integers, one per axis, each a multiple of 8, got [41, 56, 40]" in str(
        innermost_cause(caught.value)
    )


@pytest.mark.parametrize(("value", "expected"), [(3, 3), ("4", 4), (" -2 ", -2), ("+5", 5)])
def test_as_int_reads_whole_numbers(value, expected):
    assert as_int("x", value) == expected


@pytest.mark.parametrize("value", ["+-3", "--3", "3.0", "", "abc", 2.5, True, None])
def test_as_int_rejects_other_values(value):
    with pytest.raises(ValueError, match=f"x must be an integer, got {re.escape(repr(value))}"):
        as_int("x", value)


def test_as_int_minimum_and_text():
    with pytest.raises(ValueError, match="x must be an integer of at least 1, got 0"):
        as_int("x", 0, minimum=1)
    with pytest.raises(ValueError, match="x must be an integer, got '3'"):
        as_int("x", "3", allow_text=False)


def test_root_cause_prefers_the_bundle_message(tmp_path):
    # The bundle's ValueError names the file and the fix; the JSON error beneath it gives only a position.
    from scripts.data import read_dataset_json

    (tmp_path / "dataset.json").write_text("{bad")
    try:
        try:
            read_dataset_json(tmp_path)
        except ValueError as error:
            raise RuntimeError("Failed to instantiate component 'split'") from error
    except RuntimeError as error:
        wrapped = error

    assert "dataset.json is not valid JSON" in str(root_cause(wrapped))
    assert "dataset.json" not in str(innermost_cause(wrapped))


def test_root_cause_without_bundle_frames_is_innermost():
    error = chained_error()

    assert root_cause(error) is innermost_cause(error)
