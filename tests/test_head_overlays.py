"""The overlays of the auxiliary-head boundary losses, parsed as MONAI bundle configs and run for one step.

A small base config replaces ``configs/train.yaml``. It defines the hook keys (``loss``, ``loss_transforms``,
``loss_input_keys``, ``train_network``) and the references the overlays use (``@network``, ``@num_classes``). Each
overlay replaces the hook keys; the test applies its transforms to a real label, runs the training network and
calls the loss with the network's extra outputs and the batch keys, as the bundle's loss adapter does.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from loss_cases import INVERSE_FORM_TEST_CHECKPOINT
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from real_data import first_label_path

from scripts import BUNDLE_ROOT
from scripts.losses.boundary.inverse_form import resolve_checkpoint

OVERLAYS = Path(BUNDLE_ROOT) / "configs" / "losses"
PATCH = (24, 32, 24)

BASE_CONFIG = {
    "imports": ["$import torch", "$import scripts"],
    "bundle_root": "$scripts.BUNDLE_ROOT",
    "num_classes": 3,
    "patch_size": list(PATCH),
    "network": {
        "_target_": "UNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": "@num_classes",
        "channels": [8, 16, 32],
        "strides": [2, 2],
        "num_res_units": 2,
        "norm": "instance",
    },
    "loss": {"_target_": "scripts.losses.build_loss", "name": "cross_entropy"},
    "loss_transforms": [],
    "loss_input_keys": [],
    "train_network": "@network",
}


def parse(name: str, tmp_path: Path, **overrides) -> ConfigParser:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE_CONFIG))
    parser = ConfigParser()
    parser.read_config([str(base), str(OVERLAYS / f"{name}.yaml")])
    for key, value in overrides.items():
        parser[key] = value
    return parser


def real_label_patches(dataset_dir: Path) -> list[MetaTensor]:
    """Two foreground-centred patches of a real label, as channel-first MetaTensors."""
    image = nib.load(str(first_label_path(dataset_dir)))
    labels = np.asarray(image.dataobj).astype(np.float32)
    centre = np.argwhere(labels > 0).mean(axis=0).round().astype(int)
    patches = []
    for shift in (0, 3):
        start = [max(0, min(c - p // 2 + shift, s - p)) for c, p, s in zip(centre, PATCH, labels.shape)]
        region = tuple(slice(first, first + size) for first, size in zip(start, PATCH))
        patches.append(MetaTensor(torch.from_numpy(labels[region].copy())[None], affine=torch.as_tensor(image.affine)))
    return patches


def one_step(parser: ConfigParser, dataset_dir: Path) -> tuple[torch.Tensor, dict]:
    loss = parser.get_parsed_content("loss")
    transforms = parser.get_parsed_content("loss_transforms")
    keys = parser.get_parsed_content("loss_input_keys")
    network = parser.get_parsed_content("train_network").train()

    samples = []
    for label in real_label_patches(dataset_dir):
        data = {"label": label}
        for transform in transforms:
            data = transform(data)
        samples.append(data)
    label = torch.stack([sample["label"].as_tensor() for sample in samples])
    batch_inputs = {key: torch.stack([torch.as_tensor(sample[key]) for sample in samples]) for key in keys}

    output = network(torch.randn(2, 1, *PATCH))
    if isinstance(output, dict):
        logits = output["logits"]
        available = {**{key: value for key, value in output.items() if key != "logits"}, **batch_inputs}
    else:
        logits, available = output, batch_inputs
    assert set(loss.extra_inputs) <= set(available), f"{loss.extra_inputs} not in {sorted(available)}"
    value = loss(logits, label, **{name: available[name] for name in loss.extra_inputs})
    value.backward()
    return value, {"network": network, "output": output}


def test_boundary_aware_overlay_runs(dataset_dir, tmp_path):
    value, state = one_step(parse("boundary_aware", tmp_path), dataset_dir)

    assert torch.isfinite(value)
    assert state["output"]["distance_bin_logits"].shape == (2, 18, *PATCH)
    assert all(p.grad is not None for p in state["network"].distance_bin_head.parameters())


def test_active_boundary_overlay_runs(dataset_dir, tmp_path):
    value, _ = one_step(parse("active_boundary", tmp_path), dataset_dir)

    assert torch.isfinite(value)


def test_conditional_boundary_overlay_runs(dataset_dir, tmp_path):
    value, state = one_step(parse("conditional_boundary", tmp_path), dataset_dir)

    assert torch.isfinite(value)
    assert state["output"]["features"].shape == (2, 3, *PATCH)


def test_inverse_form_overlay_runs(dataset_dir, tmp_path):
    parser = parse("inverse_form", tmp_path, **{"loss#checkpoint": INVERSE_FORM_TEST_CHECKPOINT})

    value, state = one_step(parser, dataset_dir)

    assert torch.isfinite(value)
    assert all(p.grad is not None for p in state["network"].boundary_head.parameters())


def test_inverse_form_overlay_without_network_names_command(tmp_path):
    if resolve_checkpoint("models/inverse_form_net.pt").is_file():
        pytest.skip("a trained inverse network exists in this checkout")
    parser = parse("inverse_form", tmp_path)

    # MONAI wraps the loss's ValueError in a RuntimeError; the traceback shows both.
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content("loss")

    cause = raised.value.__cause__
    assert isinstance(cause, ValueError)
    assert "inverse_form_net.pt does not exist" in str(cause)
    assert "python -m scripts.inverse_form train" in str(cause)


def test_overlays_replace_only_hook_keys():
    hook_keys = {"loss", "loss_transforms", "loss_input_keys", "train_network"}
    for name in ("boundary_aware", "active_boundary", "conditional_boundary", "inverse_form"):
        overlay = yaml.safe_load((OVERLAYS / f"{name}.yaml").read_text())

        assert set(overlay) <= hook_keys, f"{name}: {sorted(set(overlay) - hook_keys)}"
        assert overlay["loss"]["name"] == name
