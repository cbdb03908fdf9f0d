"""The bundle's workflows run as a user runs them: training, evaluation, inference, verification and export.

One short real training (4 cases per split list, 2 epochs) runs once per session from a foreign working directory;
the other tests use its checkpoint and MLflow store.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from training_runs import copy_cases

from scripts import BUNDLE_ROOT
from scripts.data import load_datalist
from scripts.evaluation import evaluation_tracking_uri, require_checkpoint, trained_model_description

CONFIGS = Path(BUNDLE_ROOT) / "configs"
META = str(Path(BUNDLE_ROOT) / "metadata.json")
SMOKE = ["--max_epochs", "2", "--val_interval", "1", "--max_cases", "4", "--patch_size", "[24, 32, 24]"]

pytestmark = pytest.mark.training


def run_bundle(*args: str, cwd: Path, command: str = "run", check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", command, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"monai.bundle {command} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        )
    return result


def tracking_uri(output_dir: Path) -> str:
    return f"sqlite:///{output_dir / 'mlflow.db'}"


def runs(output_dir: Path, experiment: str = "seglosses"):
    client = MlflowClient(tracking_uri(output_dir))
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} in {output_dir}"
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


@pytest.fixture(scope="module")
def trained(dataset_dir, tmp_path_factory) -> Path:
    """Train the default config on 4 + 4 real cases for 2 epochs from a working directory outside the bundle."""
    workdir = tmp_path_factory.mktemp("elsewhere")
    output_dir = workdir / "outputs"
    run_bundle(
        "--config_file",
        str(CONFIGS / "train.yaml"),
        "--meta_file",
        META,
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
        "--ckpt_dir",
        str(output_dir / "models"),
        *SMOKE,
        cwd=workdir,
    )
    return output_dir


def test_training_writes_checkpoint_and_split(trained):
    split = json.loads((trained / "split.json").read_text())

    assert (trained / "models" / "model.pt").is_file()
    description = json.loads((trained / "models" / "model.json").read_text())
    _, found = runs(trained)
    assert description["loss"] == "combo"
    assert (description["fold"], description["seed"]) == (0, 0)
    assert description["patch_size"] == [24, 32, 24]
    assert description["pixdim"] == [1.0, 1.0, 1.0]
    assert description["training_run_id"] == found[0].info.run_id
    assert len(split["training"]) == 4
    assert len(split["validation"]) == 4
    assert split["dataset"]["fold"] == 0


def test_training_run_has_params(trained, dataset_dir):
    client, found = runs(trained)
    run = found[0]
    params = run.data.params

    assert run.info.run_name == "combo-fold0-seed0"
    assert run.info.status == "FINISHED"
    expected = {
        "loss": "combo",
        "loss_family": "combination",
        "loss.alpha": "0.5",
        "loss.beta": "0.5",
        "loss.include_background": "False",
        "network": "UNet",
        "network_channels": "[16, 32, 64, 128]",
        "optimizer": "AdamW",
        "learning_rate": "0.002",
        "weight_decay": "1e-05",
        "max_epochs": "2",
        "max_cases": "4",
        "train_network": "UNet",
        "loss_input_keys": "[]",
        "batch_size": "2",
        "patch_size": "[24, 32, 24]",
        "seed": "0",
        "fold": "0",
        "num_training": "4",
        "num_validation": "4",
    }
    for key, value in expected.items():
        assert params.get(key) == value, f"param {key}: {params.get(key)!r} != {value!r}"
    assert params["dataset_dir"] == str(dataset_dir)
    assert "1805.02798" in params["loss_paper"]
    assert int(params["network_parameters"]) > 100_000
    assert params["dataset_name"].startswith("Hippocampus")
    assert len(run.data.tags["mlflow.source.git.commit"]) >= 7
    assert params["git_commit"] == run.data.tags["mlflow.source.git.commit"]
    assert run.data.tags["loss"] == "combo"
    assert run.data.tags["loss_family"] == "combination"


def test_training_run_has_metrics_per_epoch(trained):
    client, found = runs(trained)
    run_id = found[0].info.run_id

    for key in (
        "train_loss",
        "learning_rate",
        "val_mean_dice",
        "val_hd95",
        "val_dice.Anterior",
        "val_dice.Posterior",
        "val_hd95.Anterior",
        "val_hd95.Posterior",
    ):
        history = client.get_metric_history(run_id, key)
        assert [metric.step for metric in history] == [1, 2], f"{key}: steps {[m.step for m in history]}"
        assert all(np.isfinite(metric.value) for metric in history), key
    dice = client.get_metric_history(run_id, "val_mean_dice")
    assert all(0.0 <= metric.value <= 1.0 for metric in dice)


def test_training_run_has_artifacts(trained):
    client, found = runs(trained)
    run_id = found[0].info.run_id

    top = {artifact.path for artifact in client.list_artifacts(run_id)}
    assert {"config.yaml", "split.json", "learning_curves.png", "checkpoints"} <= top
    assert [artifact.path for artifact in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/model.pt"]
    config = client.download_artifacts(run_id, "config.yaml")
    assert "combo" in Path(config).read_text()


def evaluate(trained: Path, dataset_dir: Path, output_dir: Path, *overrides: str, check: bool = True):
    """Evaluate the trained checkpoint with the evaluation overlay, writing to ``output_dir``."""
    return run_bundle(
        "--config_file",
        json.dumps([str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")]),
        "--meta_file",
        META,
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
        "--ckpt_path",
        str(trained / "models" / "model.pt"),
        *SMOKE,
        *overrides,
        cwd=output_dir.parent,
        check=check,
    )


def test_evaluate_writes_case_table_and_mlflow_run(trained, dataset_dir):
    evaluate(trained, dataset_dir, trained)
    with (trained / "evaluation" / "cases.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    summary = json.loads((trained / "evaluation" / "summary.json").read_text())
    split = json.loads((trained / "split.json").read_text())

    assert [row["case_id"] for row in rows] == [case["case_id"] for case in split["validation"]]
    assert set(rows[0]) == {"case_id"} | {
        f"{metric}.{name}"
        for metric in ("dice", "hd95", "surface_dice", "assd", "empty_prediction")
        for name in ("Anterior", "Posterior")
    }
    assert 0.0 <= summary["dice"]["mean"]["mean"] <= 1.0
    assert summary["skipped_cases"] == []
    assert summary["settings"]["surface_tolerance_mm"] == 1.0
    assert summary["settings"]["checkpoint"] == str(trained / "models" / "model.pt")
    client, found = runs(trained)
    evaluation = [run for run in found if run.data.tags.get("evaluation") == "true"]
    assert len(evaluation) == 1
    assert "eval_dice.Anterior" in evaluation[0].data.metrics
    assert evaluation[0].data.params["training_run_id"] == found[0].info.run_id
    assert evaluation[0].info.run_name == "evaluate-combo-fold0"
    assert {artifact.path for artifact in client.list_artifacts(evaluation[0].info.run_id)} == {
        "cases.csv",
        "summary.json",
    }


def test_evaluate_without_checkpoint_says_train_first(dataset_dir, tmp_path):
    result = evaluate(tmp_path, dataset_dir, tmp_path, check=False)

    assert result.returncode != 0
    assert "model.pt not found. Train first" in result.stderr


def test_evaluate_records_skipped_broken_cases(trained, dataset_dir, tmp_path):
    task = copy_cases(dataset_dir, tmp_path / "task", 3)
    case_ids = [case["case_id"] for case in load_datalist(task)]
    image = task / "images" / f"{case_ids[1]}.nii.gz"
    image.write_bytes(image.read_bytes()[:2000])
    output_dir = tmp_path / "outputs"

    result = evaluate(trained, dataset_dir, output_dir, "--eval_dataset_dir", str(task), "--skip_broken_cases", "true")
    summary = json.loads((output_dir / "evaluation" / "summary.json").read_text())
    with (output_dir / "evaluation" / "cases.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    (run,) = runs(output_dir)[1]

    assert summary["skipped_cases"] == [case_ids[1]]
    assert [row["case_id"] for row in rows] == [case_ids[0], case_ids[2]]
    assert run.data.params["num_skipped_cases"] == "1"
    assert json.loads(run.data.params["skipped_cases"]) == [case_ids[1]]
    assert run.data.params["num_cases"] == "2"
    assert f"skip_broken_cases is set: 1 of the 3 listed cases ({case_ids[1]})" in result.stderr + result.stdout
    # The hint to set skip_broken_cases is not repeated once it is set.
    assert "--skip_broken_cases true" not in result.stderr + result.stdout


def test_evaluate_warns_of_training_cases(trained, dataset_dir, tmp_path):
    training = json.loads((trained / "split.json").read_text())["training"][:2]
    task = tmp_path / "task"
    content = json.loads((dataset_dir / "dataset.json").read_text())
    content["training"] = []
    for case in training:
        for key in ("image", "label"):
            (task / f"{key}s").mkdir(parents=True, exist_ok=True)
            (task / f"{key}s" / Path(case[key]).name).symlink_to(case[key])
        name = Path(case["image"]).name
        content["training"].append({"image": f"./images/{name}", "label": f"./labels/{name}"})
    (task / "dataset.json").write_text(json.dumps(content))

    result = evaluate(trained, dataset_dir, tmp_path / "outputs", "--eval_dataset_dir", str(task))

    names = ", ".join(case["case_id"] for case in training)
    assert f"2 of the 2 cases to evaluate have the names of training cases of fold 0 ({names})" in (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("--eval_run_id", "0123abc"), "error: eval_run_id '0123abc' is not the run that trained the checkpoint"),
        # Nothing listens on port 9 of this machine, so the connection is refused at once.
        (
            ("--tracking_uri", "http://127.0.0.1:9"),
            "error: MLflow tracking server http://127.0.0.1:9 cannot be reached",
        ),
    ],
)
def test_evaluate_checks_tracking_before_evaluating(trained, dataset_dir, tmp_path, overrides, message):
    output_dir = tmp_path / "outputs"

    result = evaluate(trained, dataset_dir, output_dir, *overrides, check=False)

    assert result.returncode != 0
    assert last_line(result).startswith(message)
    assert not (output_dir / "evaluation" / "cases.csv").exists()


def test_evaluate_falls_back_to_local_store(trained, dataset_dir, tmp_path):
    output_dir = tmp_path / "outputs"

    result = evaluate(
        trained, dataset_dir, output_dir, "--tracking_uri", "http://127.0.0.1:9", "--tracking_fallback", "true"
    )
    (run,) = runs(output_dir)[1]

    assert f"so this run logs into {tracking_uri(output_dir)}" in result.stdout + result.stderr
    assert run.data.tags["evaluation"] == "true"
    assert "eval_dice.Anterior" in run.data.metrics


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"network": {}, "optimizer": {}, "epoch": 3}, r"is a training state \(the file that resumes a training\)"),
        ({"format": 1, "state_dict": {}}, r"does not contain the segmentation network.s weights \(its keys: format"),
        (None, r"cannot be loaded \(UnpicklingError"),
    ],
)
def test_require_checkpoint_rejects_other_files(tmp_path, content, message):
    path = tmp_path / "checkpoint.pt"
    if content is None:
        path.write_bytes(b"not a checkpoint")
    else:
        torch.save(content, path)

    with pytest.raises(ValueError, match=message):
        require_checkpoint(path)


def test_evaluate_rejects_empty_checkpoint(trained, dataset_dir, tmp_path):
    empty = tmp_path / "models" / "model.pt"
    empty.parent.mkdir()
    empty.touch()
    output_dir = tmp_path / "outputs"

    result = evaluate(tmp_path, dataset_dir, output_dir, check=False)

    assert result.returncode != 0
    assert last_line(result).startswith(f"error: checkpoint {empty} is empty (0 bytes)")


def run_inference(
    trained: Path, input_dir: Path, tmp_path: Path, *overrides: str, check: bool = True
) -> subprocess.CompletedProcess:
    """Run the inference config with the trained model on ``input_dir``, writing to ``tmp_path/predictions``."""
    return run_bundle(
        "--config_file",
        str(CONFIGS / "inference.yaml"),
        "--meta_file",
        META,
        "--input_dir",
        str(input_dir),
        "--output_dir",
        str(tmp_path / "predictions"),
        "--ckpt_path",
        str(trained / "models" / "model.pt"),
        *overrides,
        cwd=tmp_path,
        check=check,
    )


def test_inference_keeps_input_geometry(trained, dataset_dir, tmp_path):
    # A real image re-saved with an oblique, anisotropic, LPS-like affine, so resampling and reorientation must be
    # undone.
    source = nib.load(dataset_dir / "images" / "hippocampus_001.nii.gz")
    affine = np.diag([-1.2, -0.9, 1.1, 1.0])
    affine[:3, :3] = affine[:3, :3] @ np.array(
        [[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]]
    )
    affine[:3, 3] = [10.0, -5.0, 3.0]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj), affine), inputs / "case_a.nii.gz")
    nib.save(source, inputs / "case_b.nii.gz")

    # Without --patch_size, the training's patch size [24, 32, 24] comes from model.json.
    result = run_inference(trained, inputs, tmp_path)

    assert "was trained with" not in result.stdout + result.stderr

    for name, original in (("case_a", nib.load(inputs / "case_a.nii.gz")), ("case_b", source)):
        prediction = nib.load(tmp_path / "predictions" / f"{name}_seg.nii.gz")
        assert prediction.shape == original.shape
        np.testing.assert_allclose(prediction.affine, original.affine, atol=1e-4)
        assert set(np.unique(np.asarray(prediction.dataobj))) <= {0, 1, 2}


def test_inference_warns_of_other_patch_size(trained, dataset_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "case.nii.gz").symlink_to(dataset_dir / "images" / "hippocampus_001.nii.gz")

    result = run_inference(trained, inputs, tmp_path, "--patch_size", "[40, 56, 40]")

    assert "was trained with patch_size [24, 32, 24], but this run uses [40, 56, 40]" in result.stdout + result.stderr


def test_inference_names_segmentations_it_replaces(trained, dataset_dir, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "case.nii.gz").symlink_to(dataset_dir / "images" / "hippocampus_001.nii.gz")
    run_inference(trained, inputs, tmp_path)

    again = run_inference(trained, inputs, tmp_path)

    assert "1 of the 1 segmentations to write already exist" in again.stdout + again.stderr
    assert "(case_seg.nii.gz)" in again.stdout + again.stderr


def test_inference_without_images_names_the_folder(trained, tmp_path):
    result = run_inference(trained, tmp_path / "empty", tmp_path, check=False)

    assert result.returncode != 0
    assert "input folder" in result.stderr and "not found" in result.stderr


def test_inference_names_an_unreadable_image(trained, dataset_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    truncated = images / "hippocampus_001.nii.gz"
    content = (dataset_dir / "images" / "hippocampus_001.nii.gz").read_bytes()
    truncated.write_bytes(content[: len(content) // 2])

    result = run_inference(trained, images, tmp_path, check=False)

    assert result.returncode != 0
    assert last_line(result).startswith(f"error: cannot read {truncated}: ")


def test_inference_names_a_2d_image(trained, dataset_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    source = nib.load(dataset_dir / "images" / "hippocampus_001.nii.gz")
    flat = images / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(source.dataobj)[:, :, 10], source.affine), flat)

    result = run_inference(trained, images, tmp_path, check=False)

    assert result.returncode != 0
    assert last_line(result).startswith(f"error: image {flat} has 2 spatial axes")


def test_verify_net_in_out_and_torchscript_export(trained, tmp_path):
    run_bundle(
        "network_def",
        "--meta_file",
        META,
        "--config_file",
        str(CONFIGS / "inference.yaml"),
        command="verify_net_in_out",
        cwd=Path(BUNDLE_ROOT),
    )
    exported = tmp_path / "model.ts"
    run_bundle(
        "network_def",
        "--filepath",
        str(exported),
        "--ckpt_file",
        str(trained / "models" / "model.pt"),
        "--meta_file",
        META,
        "--config_file",
        str(CONFIGS / "inference.yaml"),
        command="ckpt_export",
        cwd=Path(BUNDLE_ROOT),
    )

    scripted = torch.jit.load(str(exported))
    output = scripted(torch.randn(1, 1, 32, 48, 32))
    assert output.shape == (1, 3, 32, 48, 32)


def test_loss_overlay_and_override(dataset_dir, tmp_path):
    output_dir = tmp_path / "outputs"
    result = run_bundle(
        "--config_file",
        json.dumps([str(CONFIGS / "train.yaml"), str(CONFIGS / "losses" / "dice.yaml")]),
        "--meta_file",
        META,
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
        "--ckpt_dir",
        str(output_dir / "models"),
        "--loss#squared_pred",
        "false",
        "--max_epochs",
        "1",
        "--val_interval",
        "5",
        "--max_cases",
        "2",
        "--patch_size",
        "[24, 32, 24]",
        cwd=tmp_path,
    )
    client, found = runs(output_dir)

    assert found[0].info.run_name == "dice-fold0-seed0"
    assert found[0].data.params["loss"] == "dice"
    assert found[0].data.params["loss.squared_pred"] == "False"
    assert found[0].data.params["loss.include_background"] == "False"
    # One epoch with val_interval 5: the training still validates after its last epoch and keeps its own model.
    run_id = found[0].info.run_id
    assert [metric.step for metric in client.get_metric_history(run_id, "val_mean_dice")] == [1]
    assert json.loads((output_dir / "models" / "model.json").read_text())["training_run_id"] == run_id
    assert [artifact.path for artifact in client.list_artifacts(run_id, "checkpoints")] == ["checkpoints/model.pt"]
    # One iteration per epoch, fewer than the console's 20: the epoch's mean loss is still printed.
    assert "Epoch 1/1: mean train_loss" in result.stdout + result.stderr


def failed_training(dataset_dir: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    """Run the training config with overrides that must stop it, and check that it failed."""
    result = run_bundle(
        "--config_file",
        str(CONFIGS / "train.yaml"),
        "--meta_file",
        META,
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(tmp_path / "outputs"),
        "--ckpt_dir",
        str(tmp_path / "models"),
        *overrides,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0
    return result


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


def test_missing_dataset_dir_fails_with_download_hint(tmp_path):
    result = failed_training(tmp_path / "no_such_task", tmp_path)

    assert "no_such_task not found" in result.stderr
    assert "python -m scripts.data download" in result.stderr
    # The message is also the last line, below MONAI's "Failed to instantiate" wrapper.
    assert last_line(result).startswith("error: dataset folder ")


def test_mistyped_setting_stops_the_run(dataset_dir, tmp_path):
    result = failed_training(dataset_dir, tmp_path, "--max_epoch", "3")

    assert last_line(result).startswith(
        "error: unknown setting on the command line: --max_epoch; did you mean --max_epochs?"
    )
    assert not (tmp_path / "outputs" / "mlflow.db").exists()


def test_invalid_loss_option_is_the_last_line(dataset_dir, tmp_path):
    result = failed_training(dataset_dir, tmp_path, "--loss#alpha", "2", *SMOKE)

    assert "Failed to instantiate component 'scripts.losses.build_loss'" in result.stderr
    assert last_line(result) == "error: alpha must lie in [0, 1], got 2."


def test_evaluation_names_the_loss_that_trained_the_model(tmp_path, caplog):
    # A model trained with the dice overlay, evaluated with the plain configs (whose loss is combo) on fold 1.
    (tmp_path / "model.json").write_text(json.dumps({"loss": "dice", "fold": 0, "training_run_id": "abc"}))

    with caplog.at_level("WARNING", logger="scripts.evaluation"):
        description = trained_model_description(tmp_path / "model.pt", "combo", fold=1)

    assert description["loss"] == "dice"
    assert description["training_run_id"] == "abc"
    assert "trained with the loss 'dice' (MLflow run abc), but the config's loss is 'combo'" in caplog.text
    assert "Pass --fold 0" in caplog.text


def test_eval_run_id_rejects_evaluated_run(tmp_path):
    client = MlflowClient(tracking_uri(tmp_path))
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    client.log_param(run_id, "eval.surface_tolerance_mm", "1.0")

    with pytest.raises(ValueError, match=f"MLflow run {run_id} already contains an evaluation"):
        evaluation_tracking_uri(tracking_uri(tmp_path), run_id, training_run_id=run_id)


def test_eval_run_id_must_exist_in_store(tmp_path):
    with pytest.raises(ValueError, match=r"eval_run_id '0123abc' is not a run of the tracking store sqlite:///"):
        evaluation_tracking_uri(tracking_uri(tmp_path), "0123abc")


def test_evaluation_without_model_description_uses_config(tmp_path):
    description = trained_model_description(tmp_path / "model.pt", "combo", fold=0)

    assert description == {"loss": "combo", "training_run_id": "unknown"}


def test_evaluation_rejects_unreadable_model_description(tmp_path):
    (tmp_path / "model.json").write_text("{not json")

    with pytest.raises(ValueError, match=r"model.json cannot be read as JSON .*delete it or train again"):
        trained_model_description(tmp_path / "model.pt", "combo")
