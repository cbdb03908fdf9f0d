"""The loss registry: names, families, defaults, errors and the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scripts import BUNDLE_ROOT
from scripts.losses import FAMILIES, SegmentationLoss, build_loss, describe_loss, get_loss_spec, list_losses
from scripts.losses.registry import register_loss


def test_registry_entries_are_complete():
    specs = list_losses()

    assert {"cross_entropy", "dice", "combo"} <= {spec.name for spec in specs}
    for spec in specs:
        assert spec.family in FAMILIES
        assert spec.paper
        assert issubclass(spec.loss_class, SegmentationLoss)
        assert spec.loss_class.registry_name == spec.name
        assert {"include_background", "class_weights", "ignore_index", "reduction"} <= set(spec.defaults)


def test_registry_lists_in_taxonomy_order():
    families = [spec.family for spec in list_losses()]

    assert families == sorted(families, key=FAMILIES.index)
    assert all(spec.family == "region" for spec in list_losses("region"))


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError, match="unknown loss 'dise'. Did you mean 'dice'?.*combo.*cross_entropy.*dice"):
        build_loss("dise")
    with pytest.raises(ValueError, match="unknown loss"):
        get_loss_spec("")


def test_unknown_hyperparameter_names_the_accepted_ones():
    with pytest.raises(ValueError, match="no hyperparameter 'gamma'.*squared_pred"):
        build_loss("dice", gamma=2.0)


def test_unknown_family_raises():
    with pytest.raises(ValueError, match="family must be one of"):
        list_losses("topology")
    with pytest.raises(ValueError, match="family must be one of"):
        register_loss("x", family="topology", paper="-")


def test_name_cannot_be_taken_twice():
    class Other(SegmentationLoss):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_loss("dice", family="region", paper="-")(Other)


def test_build_records_hyperparameters():
    loss = build_loss("combo", alpha=0.3)

    assert loss.hyperparameters["alpha"] == 0.3
    assert loss.hyperparameters["beta"] == 0.5
    assert loss.hyperparameters["include_background"] is True


def test_describe_loss_is_flat_and_complete():
    description = describe_loss(build_loss("dice", squared_pred=False))

    assert description["loss"] == "dice"
    assert description["loss_family"] == "region"
    assert "1606.04797" in description["loss_paper"]
    assert description["loss.squared_pred"] is False
    assert description["loss.smooth_nr"] == 1e-5


def test_command_line_lists_the_table():
    result = subprocess.run(
        [sys.executable, "-m", "scripts.losses", "list"], cwd=BUNDLE_ROOT, capture_output=True, text=True, check=True
    )

    for spec in list_losses():
        assert spec.name in result.stdout
    assert f"{len(list_losses())} losses registered." in result.stdout


def test_command_line_unknown_name_fails():
    result = subprocess.run(
        [sys.executable, "-m", "scripts.losses", "show", "nope"], cwd=BUNDLE_ROOT, capture_output=True, text=True
    )

    assert result.returncode != 0
    assert "unknown loss 'nope'" in result.stderr
