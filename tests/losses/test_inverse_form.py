"""InverseForm loss and its inverse network: tiling, checkpoints, hand-derived BCE, gradients and the training run."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from loss_cases import INVERSE_FORM_TEST_CHECKPOINT, blob_labels, make_logits

from scripts import BUNDLE_ROOT
from scripts.losses import build_loss, describe_loss
from scripts.losses.boundary.inverse_form import (
    InverseFormNet,
    cut_tiles,
    example_extra_inputs,
    load_inverse_form_net,
    save_inverse_form_net,
)


def build(**options):
    return build_loss("inverse_form", checkpoint=INVERSE_FORM_TEST_CHECKPOINT, **options)


def zero_output_checkpoint(path: Path) -> str:
    """An inverse network whose last layer is zero: it regresses the identity for every pair of tiles."""
    net = InverseFormNet()
    torch.nn.init.zeros_(net.regressor[-1].weight)
    torch.nn.init.zeros_(net.regressor[-1].bias)
    return str(save_inverse_form_net(net, path / "identity.pt"))


def test_cut_tiles_pads_and_orders():
    volume = torch.arange(2 * 20 * 16 * 9, dtype=torch.float32).view(2, 1, 20, 16, 9)

    tiles = cut_tiles(volume, 8)

    # 20 x 16 x 9 pads to 24 x 16 x 16: 3 x 2 x 2 = 12 tiles per sample.
    assert tiles.shape == (2, 12, 8, 8, 8)
    torch.testing.assert_close(tiles[0, 0], volume[0, 0, :8, :8, :8])
    # Tile 1 is the second along the last axis: one real slice (index 8), then 7 padded ones.
    torch.testing.assert_close(tiles[1, 1, :, :, 0], volume[1, 0, :8, :8, 8])
    assert tiles[1, 1, :, :, 1:].abs().sum() == 0
    assert tiles[0, -1, 4:].abs().sum() == 0, "the padded far edge is zero"


def test_cut_tiles_2d_is_one_slice_volume():
    tiles = cut_tiles(torch.ones(1, 1, 10, 17), 8)

    assert tiles.shape == (1, 6, 8, 8, 8)
    assert tiles[0, 0, 0].sum() == 64
    assert tiles[0, 0, 1:].sum() == 0


def test_cut_tiles_2d_four_tiles_of_four():
    # An 8 x 8 map gives 4 tiles of 4 x 4, shape (1, 4, 4, 4) like one cube, and they must still become cubes.
    tiles = cut_tiles(torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8), 4)

    assert tiles.shape == (1, 4, 4, 4, 4)
    assert tiles[0, 1, 0, 0, 0] == 4
    assert tiles[0, :, 1:].abs().sum() == 0


def test_checkpoint_round_trip_weights_only(tmp_path):
    net = InverseFormNet(tile_size=8, channels=(4, 8, 8), hidden=16)
    path = save_inverse_form_net(net, tmp_path / "net.pt", {"note": "test"})

    loaded = load_inverse_form_net(path)
    checkpoint = torch.load(path, weights_only=True)

    assert checkpoint["config"] == {"tile_size": 8, "channels": [4, 8, 8], "hidden": 16}
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    for name, value in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)


def test_missing_checkpoint_names_file_and_command(tmp_path):
    missing = tmp_path / "nothing.pt"

    with pytest.raises(ValueError, match=r"nothing\.pt does not exist.*python -m scripts\.inverse_form train"):
        build_loss("inverse_form", checkpoint=str(missing))


def test_foreign_checkpoint_raises(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")

    with pytest.raises(ValueError, match="not an InverseForm inverse-network checkpoint"):
        build_loss("inverse_form", checkpoint=str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="cannot read the InverseForm checkpoint"):
        build_loss("inverse_form", checkpoint=str(tmp_path / "broken.pt"))


def test_relative_checkpoint_starts_at_bundle_root():
    from scripts import BUNDLE_ROOT

    with pytest.raises(ValueError, match=str(Path(BUNDLE_ROOT) / "models" / "missing.pt")):
        build_loss("inverse_form", checkpoint="models/missing.pt")


def test_balanced_bce_hand_value():
    # 1 x 4 image with boundary 1 1 0 0 among 4 voxels: w+ = n-/n = 0.5, w- = n+/n = 0.5.
    # Head logits 2 0 -1 1: BCE = softplus(-2), softplus(0), softplus(-1), softplus(1) for targets 1 1 0 0.
    logits = torch.zeros(1, 2, 1, 4)
    labels = torch.tensor([0, 1, 1, 1]).view(1, 1, 1, 4)
    head = torch.tensor([2.0, 0.0, -1.0, 1.0]).view(1, 1, 1, 4)
    boundary = torch.tensor([1.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4)
    loss = build(cross_entropy_weight=0.0, inverse_form_weight=0.0, boundary_weight=1.0)

    value = loss(logits, labels, boundary_logits=head, boundary=boundary)

    softplus = [math.log1p(math.exp(x)) for x in (-2.0, 0.0, -1.0, 1.0)]
    # 0.5 * (0.126928 + 0.693147 + 0.313262 + 1.313262) / 4 = 0.305825.
    assert value.item() == pytest.approx(0.5 * sum(softplus) / 4, rel=1e-6)


def test_balanced_bce_weighs_rare_boundary():
    # One boundary voxel among 4: it weighs 3/4, each background voxel 1/4.
    logits = torch.zeros(1, 2, 1, 4)
    labels = torch.zeros(1, 1, 1, 4, dtype=torch.long)
    head = torch.zeros(1, 1, 1, 4)
    boundary = torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4)
    loss = build(cross_entropy_weight=0.0, inverse_form_weight=0.0, boundary_weight=1.0)

    value = loss(logits, labels, boundary_logits=head, boundary=boundary)

    # (3/4 ln 2 + 3 * 1/4 ln 2) / 4 = 0.375 ln 2.
    assert value.item() == pytest.approx(0.375 * math.log(2.0), rel=1e-6)


def test_inverse_form_term_zero_for_identity_network(tmp_path):
    shape = (2, 3, 12, 10, 9)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)
    loss = build_loss(
        "inverse_form", checkpoint=zero_output_checkpoint(tmp_path), cross_entropy_weight=0.0, boundary_weight=0.0
    )

    assert loss(logits, labels, **extras).item() == 0.0


def test_inverse_form_term_is_mean_tile_norm():
    shape = (1, 3, 20, 10, 9)
    labels = torch.zeros(1, 1, 20, 10, 9, dtype=torch.long)
    labels[..., 5:19, 2:8, 2:7] = 1
    labels[..., 8:12, 3:6, 3:5] = 2
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)
    loss = build(cross_entropy_weight=0.0, boundary_weight=0.0, inverse_form_weight=1.0)

    value = loss(logits, labels, **extras)

    net = load_inverse_form_net(INVERSE_FORM_TEST_CHECKPOINT)
    predicted = cut_tiles(torch.sigmoid(extras["boundary_logits"].detach()), 16)[0]
    reference = cut_tiles(extras["boundary"], 16)[0]
    selected = reference.flatten(1).amax(1) > 0
    with torch.no_grad():
        norms = net(predicted[selected, None], reference[selected, None]).norm(dim=1)
    # 20 x 10 x 9 pads to 32 x 16 x 16: two tiles along the first axis; both hold boundary voxels here.
    assert int(selected.sum()) == 2
    assert value.item() == pytest.approx(norms.mean().item(), rel=1e-5)


def test_inverse_form_2d_term_is_mean_tile_norm():
    # In 2D the loss cuts square tiles and makes cubes of the selected ones only. The value must equal the mean
    # norm over the cubes of every tile with boundary.
    shape = (2, 3, 40, 36)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)
    loss = build(cross_entropy_weight=0.0, boundary_weight=0.0, inverse_form_weight=1.0)

    value = loss(logits, labels, **extras)

    net = load_inverse_form_net(INVERSE_FORM_TEST_CHECKPOINT)
    expected = []
    for sample in range(shape[0]):
        predicted = cut_tiles(torch.sigmoid(extras["boundary_logits"].detach()), 16)[sample]
        reference = cut_tiles(extras["boundary"], 16)[sample]
        selected = reference.flatten(1).amax(1) > 0
        with torch.no_grad():
            expected.append(net(predicted[selected, None], reference[selected, None]).norm(dim=1).mean())
    assert value.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)


def test_inverse_form_gradient_reaches_head_not_net():
    shape = (2, 3, 12, 10, 9)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape).requires_grad_()
    extras = example_extra_inputs(logits, labels)
    loss = build()

    loss(logits, labels, **extras).backward()

    assert extras["boundary_logits"].grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.inverse_net.parameters())
    loss.train()
    assert not loss.inverse_net.training, "the frozen network stays in eval mode"


def test_inverse_form_tiles_without_boundary_are_skipped():
    labels = torch.zeros(1, 1, 16, 16, 16, dtype=torch.long)
    logits = make_logits((1, 2, 16, 16, 16))
    head = torch.randn(1, 1, 16, 16, 16, requires_grad=True)
    boundary = torch.zeros(1, 1, 16, 16, 16)
    loss = build(cross_entropy_weight=0.0, boundary_weight=0.0)

    value = loss(logits, labels, boundary_logits=head, boundary=boundary)
    value.backward()

    assert value.item() == 0.0
    assert torch.equal(head.grad, torch.zeros_like(head))


def test_inverse_form_weights_combine_terms():
    shape = (2, 3, 12, 10, 9)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)

    total = build()(logits, labels, **extras)
    cross_entropy = build_loss("cross_entropy")(logits, labels)
    bce = build(cross_entropy_weight=0.0, inverse_form_weight=0.0, boundary_weight=1.0)(logits, labels, **extras)
    distance = build(cross_entropy_weight=0.0, boundary_weight=0.0, inverse_form_weight=1.0)(logits, labels, **extras)

    assert total.item() == pytest.approx(cross_entropy.item() + 0.3 * bce.item() + 0.3 * distance.item(), rel=1e-5)


def test_inverse_form_ignored_voxels_are_zero_in_tiles():
    shape = (1, 3, 12, 10, 9)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)
    ignored = labels.clone()
    ignored[..., -3:] = 255
    changed = {**extras, "boundary_logits": extras["boundary_logits"].detach().clone()}
    changed["boundary_logits"][..., -3:] = 50.0

    loss = build(ignore_index=255)

    torch.testing.assert_close(loss(logits, ignored, **extras), loss(logits, ignored, **changed))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"boundary_weight": -0.3}, "boundary_weight must be a non-negative number, got -0.3"),
        ({"inverse_form_weight": float("nan")}, "inverse_form_weight"),
    ],
)
def test_inverse_form_invalid_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        build(**options)


def test_inverse_form_bad_inputs_raise():
    shape = (1, 3, 8, 8, 8)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    extras = example_extra_inputs(logits, labels)
    loss = build()

    with pytest.raises(ValueError, match=r"boundary_logits has shape \(1, 3, 8, 8, 8\).*BoundaryHeadNetwork"):
        loss(logits, labels, boundary_logits=logits, boundary=extras["boundary"])
    with pytest.raises(ValueError, match="boundary contains 2, outside 0 to 1"):
        loss(logits, labels, boundary_logits=extras["boundary_logits"], boundary=2 * extras["boundary"])
    with pytest.raises(ValueError, match="needs the extra input 'boundary'.*LabelBoundaryd"):
        loss(logits, labels, boundary_logits=extras["boundary_logits"])


def test_inverse_net_rejects_bad_tile_size():
    with pytest.raises(ValueError, match="tile_size must be a positive multiple of 8, got 12"):
        InverseFormNet(tile_size=12)


def test_training_command_writes_checkpoint_and_mlflow_run(dataset_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from scripts.inverse_form import train

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    output = tmp_path / "models" / "inverse_form_net.pt"

    summary = train(
        dataset_dir=str(dataset_dir),
        output=str(output),
        epochs=2,
        samples_per_epoch=256,
        batch_size=32,
        validation_samples=64,
        max_cases=4,
        tracking_uri=tracking_uri,
        run_name="test",
    )

    assert output.is_file()
    assert summary["val_loss"] < summary["initial_val_loss"], summary
    net = load_inverse_form_net(output)
    assert net.tile_size == 16
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2"
    assert [metric.step for metric in client.get_metric_history(run.info.run_id, "train_loss")] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 3
    assert [artifact.path for artifact in client.list_artifacts(run.info.run_id)] == ["inverse_form_net.pt"]
    assert client.get_experiment(run.info.experiment_id).name == "seglosses-inverse-form"
    # A training run that uses the network records which one it was.
    described = describe_loss(build_loss("inverse_form", checkpoint=str(output)))
    assert described["loss.inverse_net.mlflow_run_id"] == run.info.run_id
    assert described["loss.inverse_net.sha256"] == hashlib.sha256(output.read_bytes()).hexdigest()
    # The trained network feeds the loss directly.
    shape = (1, 3, 16, 16, 16)
    labels = blob_labels(shape, 3)
    logits = make_logits(shape)
    value = build_loss("inverse_form", checkpoint=str(output))(logits, labels, **example_extra_inputs(logits, labels))
    assert torch.isfinite(value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "epochs must be a positive integer, got 0"),
        ({"batch_size": 64, "samples_per_epoch": 32}, r"samples_per_epoch \(32\) must be at least batch_size \(64\)"),
        ({"learning_rate": -1.0}, "learning_rate must be a positive number, got -1.0"),
        ({"max_cases": 1}, "max_cases must be an integer of at least 2"),
        ({"tile_size": 12}, "tile_size must be a positive multiple of 8"),
        ({"validation_fraction": 1.0}, r"validation_fraction must lie in \[0, 1\)"),
        ({"seed": "abc"}, "seed must be an integer, got 'abc'"),
    ],
)
def test_training_command_invalid_options_raise(tmp_path, options, message):
    from scripts.inverse_form import train

    # The options are checked before the dataset is read, so an empty folder serves as dataset_dir.
    arguments = {
        "dataset_dir": str(tmp_path),
        "output": str(tmp_path / "net.pt"),
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        **options,
    }
    with pytest.raises(ValueError, match=message):
        train(**arguments)
    assert not (tmp_path / "net.pt").exists()


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("no_such_task", r"dataset folder .*no_such_task not found"),
        (".", r"dataset\.json not found"),
        ("dataset.json", r"--dataset_dir must be a folder, but .*dataset\.json is a file"),
    ],
)
def test_training_command_bad_dataset_dir(tmp_path, folder, message):
    from scripts.inverse_form import train

    (tmp_path / "dataset.json").unlink(missing_ok=True)
    if folder == "dataset.json":
        (tmp_path / "dataset.json").write_text("{}")
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"

    with pytest.raises(FileNotFoundError, match=message):
        train(dataset_dir=str(tmp_path / folder), output=str(tmp_path / "net.pt"), tracking_uri=tracking)


def test_training_command_checks_tracking_server_first(tmp_path):
    from scripts.inverse_form import train

    # Nothing listens on port 9 of this machine; the dataset folder is not read before the check.
    with pytest.raises(RuntimeError, match="MLflow tracking server http://127.0.0.1:9 cannot be reached"):
        train(dataset_dir=str(tmp_path), output=str(tmp_path / "net.pt"), tracking_uri="http://127.0.0.1:9")


def test_training_command_unknown_option_runs_nothing(tmp_path):
    command = [sys.executable, "-m", "scripts.inverse_form", "train", "--dataset_dir", str(tmp_path), "--epochss=3"]
    result = subprocess.run(command, cwd=BUNDLE_ROOT, capture_output=True, text=True, timeout=120)

    assert result.returncode == 2
    assert "error: 'train' has no option --epochss (did you mean --epochs?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_label_boundaries_of_one_fold(dataset_dir):
    from scripts.data import fold_split, load_datalist
    from scripts.inverse_form import load_label_boundaries

    split = fold_split(load_datalist(dataset_dir), fold=1, num_folds=5, seed=0)

    boundaries, names = load_label_boundaries(dataset_dir, fold=1, num_folds=5, split_seed=0)

    assert len(boundaries) == len(names) == len(split["training"])
    assert set(names) == {case["label"] for case in split["training"]}
    assert not set(names) & {case["label"] for case in split["validation"]}
