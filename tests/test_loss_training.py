"""Every registered loss trains the bundle's network through its overlay on real cases and logs a finite loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from monai.bundle import run

from scripts import BUNDLE_ROOT
from scripts.losses import get_loss_spec, list_losses

CONFIGS = Path(BUNDLE_ROOT) / "configs"
NAMES = [spec.name for spec in list_losses()]


def test_every_registered_loss_has_an_overlay():
    overlays = {path.stem for path in (CONFIGS / "losses").glob("*.yaml")}

    assert set(NAMES) <= overlays, f"losses without an overlay: {sorted(set(NAMES) - overlays)}"
    assert overlays <= set(NAMES), f"overlays of unregistered losses: {sorted(overlays - set(NAMES))}"


@pytest.mark.parametrize("name", NAMES)
def test_overlay_builds_its_loss(name):
    overlay = yaml.safe_load((CONFIGS / "losses" / f"{name}.yaml").read_text())

    assert overlay["loss"]["_target_"] == "scripts.losses.build_loss"
    # An overlay trains its loss directly or inside a combination (then it files the run under loss_name).
    assert overlay.get("loss_name", overlay["loss"]["name"]) == name


@pytest.fixture(scope="module")
def inverse_form_network(dataset_dir, tmp_path_factory) -> str:
    """An InverseForm inverse network trained briefly on real label boundaries, for its overlay."""
    from scripts.inverse_form import train

    folder = tmp_path_factory.mktemp("inverse_form")
    summary = train(
        str(dataset_dir),
        output=str(folder / "inverse_form_net.pt"),
        epochs=1,
        samples_per_epoch=64,
        batch_size=16,
        validation_samples=16,
        max_cases=4,
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
    )
    return summary["checkpoint"]


@pytest.mark.training
@pytest.mark.parametrize("name", NAMES)
def test_loss_trains_one_epoch(name, dataset_dir, tmp_path, request):
    output_dir = tmp_path / "outputs"
    # The InverseForm overlay reads a trained inverse network, which users create once per dataset.
    overrides = {"loss#checkpoint": request.getfixturevalue("inverse_form_network")} if name == "inverse_form" else {}
    run(
        config_file=[str(CONFIGS / "train.yaml"), str(CONFIGS / "losses" / f"{name}.yaml")],
        meta_file=str(Path(BUNDLE_ROOT) / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        ckpt_dir=str(output_dir / "models"),
        max_epochs=1,
        val_interval=1,
        max_cases=2,
        patch_size=[24, 32, 24],
        **overrides,
    )

    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("seglosses")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["loss"] == name
    assert found.data.tags["loss"] == name
    assert found.data.tags["loss_family"] == get_loss_spec(name).family
    assert math.isfinite(found.data.metrics["train_loss"])
    assert "val_mean_dice" in found.data.metrics
    # The network the trainer ran: a wrapper with the loss's heads where the overlay adds them.
    wrapped = {"boundary_aware", "conditional_boundary", "inverse_form"}
    assert (found.data.params["train_network"] != "UNet") == (name in wrapped)
    # The settings of the transforms that compute the loss's extra targets are parameters too.
    overlay = yaml.safe_load((CONFIGS / "losses" / f"{name}.yaml").read_text())
    for transform in overlay.get("loss_transforms", []):
        class_name = transform["_target_"].rsplit(".", 1)[1]
        assert found.data.params[f"loss_transform.{class_name}"].endswith(f".{class_name}")
        for key, value in transform.items():
            logged = found.data.params.get(f"loss_transform.{class_name}.{key}")
            if key in ("_target_", "keys") or str(value).startswith(("@", "$")):
                continue
            assert logged == str(value), f"{class_name}.{key}: logged {logged!r}, config {value!r}"
    # A weighted sum logs each member's unweighted mean beside its weight.
    weights = {key.split(".", 1)[1] for key in found.data.metrics if key.startswith("loss_weight.")}
    members = {key.split(".", 1)[1] for key in found.data.metrics if key.startswith("train_loss.")}
    assert members == weights
    assert all(math.isfinite(found.data.metrics[f"train_loss.{member}"]) for member in members)
