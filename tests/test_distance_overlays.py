"""The overlays of the distance-map losses, parsed the way the bundle merges them over its training config.

The training config is not part of this test: a stub with its hook keys and their defaults replaces it, and
each overlay replaces whole top-level keys, as ``monai.bundle`` does with ``--config_file "[base, overlay]"``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import MetaTensor

from scripts import BUNDLE_ROOT
from scripts.losses.extra_inputs import example_extra_inputs

OVERLAYS = [
    "boundary",
    "boundary_dou",
    "distance_map_ce",
    "generalized_dice",
    "hausdorff",
    "region_wise",
    "weighted_sum",
]
HOOK_DEFAULTS = {
    "num_classes": 3,
    "patch_size": [12, 10, 8],
    "loss": {"_target_": "scripts.losses.build_loss", "name": "cross_entropy"},
    "loss_transforms": [],
    "loss_input_keys": [],
    "extra_train_handlers": [],
}


def parse_overlay(name: str) -> ConfigParser:
    parser = ConfigParser(dict(HOOK_DEFAULTS))
    overlay = ConfigParser.load_config_file(Path(BUNDLE_ROOT) / "configs" / "losses" / f"{name}.yaml")
    for key, value in overlay.items():
        parser[key] = value
    return parser


def tiny_label() -> MetaTensor:
    label = torch.zeros((1, 12, 10, 8))
    label[0, 2:8, 2:7, 2:6] = 1
    label[0, 8:11, 3:6, 2:6] = 2
    return MetaTensor(label, affine=torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0])))


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_keys_match_the_loss(name):
    parser = parse_overlay(name)

    loss = parser.get_parsed_content("loss")

    assert list(parser.get_parsed_content("loss_input_keys")) == list(loss.extra_inputs)


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlay_transforms_feed_the_loss(name):
    parser = parse_overlay(name)
    loss = parser.get_parsed_content("loss")
    sample = {"label": tiny_label()}
    for transform in parser.get_parsed_content("loss_transforms"):
        sample = transform(sample)
    labels = sample["label"][None]
    logits = torch.randn((1, 3, *labels.shape[2:]))
    extras = {key: sample[key][None] for key in parser.get_parsed_content("loss_input_keys")}

    value = loss(logits, labels, **extras)

    assert torch.isfinite(value)
    assert extras.keys() == example_extra_inputs(loss, logits, labels.as_tensor()).keys()


def test_boundary_overlay_schedule_runs_on_the_loss():
    parser = parse_overlay("boundary")
    loss = parser.get_parsed_content("loss")
    engine = Engine(lambda engine, batch: None)
    for handler in parser.get_parsed_content("extra_train_handlers"):
        handler.attach(engine)

    engine.run([0], max_epochs=3)

    assert loss.current_weights["generalized_dice"] == pytest.approx(0.98)
    assert loss.current_weights["boundary"] == pytest.approx(0.03)


def test_hausdorff_overlay_balances_dice_against_hausdorff():
    parser = parse_overlay("hausdorff")
    loss = parser.get_parsed_content("loss")
    sample = {"label": tiny_label()}
    for transform in parser.get_parsed_content("loss_transforms"):
        sample = transform(sample)
    labels = sample["label"][None]
    logits = torch.randn((1, 3, *labels.shape[2:]), generator=torch.Generator().manual_seed(0))
    engine = Engine(
        lambda engine, batch: loss(logits, labels, boundary_distance_map=sample["boundary_distance_map"][None])
    )
    for handler in parser.get_parsed_content("extra_train_handlers"):
        handler.attach(engine)

    engine.run([0], max_epochs=1)
    members = loss.last_member_losses

    assert parser.get_parsed_content("loss_name") == "hausdorff"
    assert loss.current_weights["hausdorff"] == 1.0
    assert loss.current_weights["dice"] == pytest.approx(float(members["hausdorff"] / members["dice"]), rel=1e-5)
