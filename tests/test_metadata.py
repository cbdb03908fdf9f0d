"""metadata.json carries what the MONAI Model Zoo schema requires and agrees with the configs and the data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import monai
import yaml
from monai.bundle import ConfigParser

from scripts import BUNDLE_ROOT
from scripts.data import label_names

METADATA = json.loads((Path(BUNDLE_ROOT) / "metadata.json").read_text())
VERSION = re.compile(r"^\d+\.\d+(\.\d+)?")

REQUIRED = [
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
]


def test_metadata_has_required_fields():
    for field in REQUIRED:
        assert METADATA.get(field), f"metadata.json lacks {field}"
    assert METADATA["version"] in METADATA["changelog"]
    for field in ("monai_version", "pytorch_version", "numpy_version"):
        assert VERSION.match(METADATA[field]), f"{field}: {METADATA[field]!r}"
    for package, version in METADATA["required_packages_version"].items():
        assert VERSION.match(version), f"{package}: {version!r}"
    assert METADATA["label_classes"]


def test_metadata_matches_installed_monai():
    assert METADATA["monai_version"] == monai.__version__.split("+")[0]


def test_network_data_format_describes_input_and_output():
    image = METADATA["network_data_format"]["inputs"]["image"]
    prediction = METADATA["network_data_format"]["outputs"]["pred"]

    assert image["num_channels"] == 1
    assert image["dtype"] == "float32"
    assert len(image["spatial_shape"]) == 3
    assert prediction["num_channels"] == len(prediction["channel_def"])
    assert prediction["format"] == "segmentation"


def test_output_channels_match_the_dataset_labels(dataset_dir):
    prediction = METADATA["network_data_format"]["outputs"]["pred"]

    assert prediction["num_channels"] == len(label_names(dataset_dir))


def test_inference_and_training_networks_agree():
    configs = Path(BUNDLE_ROOT) / "configs"
    train = yaml.safe_load((configs / "train.yaml").read_text())
    inference = yaml.safe_load((configs / "inference.yaml").read_text())

    for key in ("channels", "strides", "num_res_units", "norm", "spatial_dims", "in_channels"):
        assert train["network_def"][key] == inference["network_def"][key], key
    assert train["image_reader"] == inference["image_reader"]
    # Evaluation and inference read patch_size and pixdim from model.json; without it they fall back to the
    # training config's defaults.
    for files in (["inference.yaml"], ["train.yaml", "evaluate.yaml"]):
        parser = ConfigParser()
        parser.read_config([str(configs / name) for name in files])
        parser["ckpt_path"] = str(Path(BUNDLE_ROOT) / "no_such_folder" / "model.pt")
        for key in ("pixdim", "patch_size"):
            assert parser.get_parsed_content(key) == train[key], (files, key)
