"""The multi-GPU overlays run as a user runs them: torchrun with 2 CPU processes (gloo) on 3 + 3 real cases.

One training of 1 epoch runs once per module. Its checkpoint directory depends on the rank, so the tests can tell
which process wrote the checkpoint. A single-process evaluation of that checkpoint is the reference for the validation
metrics of the distributed run and for the distributed evaluation.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_workflows import CONFIGS, META, run_bundle, runs

from scripts import BUNDLE_ROOT

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
DATA = ["--max_cases", "3", "--patch_size", "[24, 32, 24]"]  # 3 validation cases: 2 on rank 0, 1 on rank 1
TRAIN = [str(CONFIGS / "train.yaml"), str(CONFIGS / "multi_gpu_train.yaml")]
EVALUATE = [str(CONFIGS / "train.yaml"), str(CONFIGS / "evaluate.yaml")]
FOREGROUND = ("Anterior", "Posterior")

pytestmark = pytest.mark.training


def torchrun(*args: str, cwd: Path, log_dir: Path) -> subprocess.CompletedProcess:
    """Run ``torchrun --nproc_per_node=2 -m monai.bundle run ARGS``; each rank's output goes to ``log_dir``."""
    result = subprocess.run(
        [
            TORCHRUN,
            "--standalone",
            "--nproc_per_node=2",
            "--log-dir",
            str(log_dir),
            "--redirects",
            "3",
            "-m",
            "monai.bundle",
            "run",
            *args,
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        logs = "\n".join(f"--- {path}\n{path.read_text()[-4000:]}" for path in sorted(log_dir.rglob("*.log")))
        raise AssertionError(f"torchrun failed ({result.returncode}):\n{result.stderr[-3000:]}\n{logs}")
    return result


def rank_output(log_dir: Path, rank: int) -> str:
    """Return what one rank printed (stdout and stderr), from torchrun's per-rank log files."""
    paths = sorted(log_dir.glob(f"*/attempt_0/{rank}/*.log"))
    assert paths, f"no log files of rank {rank} under {log_dir}"
    return "\n".join(path.read_text() for path in paths)


def evaluation_args(config_files: list[str], trained: Path, dataset_dir: Path, evaluation_dir: Path) -> list[str]:
    """Return the arguments that evaluate the distributed training's checkpoint into ``evaluation_dir``."""
    return [
        "--config_file",
        json.dumps(config_files),
        "--meta_file",
        META,
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(trained),
        "--ckpt_path",
        str(trained / "models-rank0" / "model.pt"),
        "--eval_output_dir",
        str(evaluation_dir),
        *DATA,
    ]


def read_cases(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def trained(dataset_dir, tmp_path_factory) -> Path:
    """Train 1 epoch with 2 processes; the checkpoint goes to models-rank<RANK>."""
    workdir = tmp_path_factory.mktemp("multi_gpu")
    output_dir = workdir / "outputs"
    torchrun(
        "--config_file",
        json.dumps(TRAIN),
        "--meta_file",
        META,
        "--logging_file",
        str(CONFIGS / "logging.conf"),
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
        "--ckpt_dir",
        "$@output_dir + '/models-rank' + os.environ['RANK']",
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
        *DATA,
        cwd=workdir,
        log_dir=workdir / "train_logs",
    )
    return output_dir


@pytest.fixture(scope="module")
def single_process_evaluation(trained, dataset_dir) -> Path:
    """Evaluate the checkpoint in one process; return the folder with cases.csv."""
    evaluation_dir = trained / "evaluation_single"
    run_bundle(*evaluation_args(EVALUATE, trained, dataset_dir, evaluation_dir), cwd=trained)
    return evaluation_dir


def test_multi_gpu_training_logs_one_mlflow_run(trained):
    client, found = runs(trained)
    training = [run for run in found if run.data.tags.get("evaluation") != "true"]

    assert len(training) == 1
    assert training[0].info.status == "FINISHED"
    assert training[0].data.params["world_size"] == "2"
    assert training[0].data.params["num_validation"] == "3"


def test_multi_gpu_training_checkpoint_from_rank_zero_only(trained):
    assert (trained / "models-rank0" / "model.pt").is_file()
    assert not (trained / "models-rank1").exists()


def test_multi_gpu_training_progress_from_rank_zero_only(trained):
    log_dir = trained.parent / "train_logs"
    rank0 = rank_output(log_dir, 0)
    rank1 = rank_output(log_dir, 1)

    for line in ("Epoch[1] Metrics", "MLflow run", "Epoch[1] Complete"):
        assert line in rank0, f"rank 0 did not print {line!r}"
        assert line not in rank1, f"rank 1 printed {line!r}"


def test_multi_gpu_validation_equals_single_process(trained, single_process_evaluation):
    client, found = runs(trained)
    training = next(run for run in found if run.data.tags.get("evaluation") != "true")
    evaluation = next(run for run in found if run.data.tags.get("evaluation") == "true")
    cases = read_cases(single_process_evaluation / "cases.csv")
    dice = [float(row[f"dice.{name}"]) for row in cases for name in FOREGROUND]

    assert len(cases) == 3
    # MeanDice averages every case and class; the CSV rounds to 6 significant digits.
    assert training.data.metrics["val_mean_dice"] == pytest.approx(sum(dice) / len(dice), abs=1e-5)
    for name in FOREGROUND:
        for metric in ("dice", "hd95"):
            expected = evaluation.data.metrics[f"eval_{metric}.{name}"]
            assert training.data.metrics[f"val_{metric}.{name}"] == pytest.approx(expected, rel=1e-5), metric


def test_multi_gpu_evaluation_equals_single_process(trained, single_process_evaluation, dataset_dir):
    evaluation_dir = trained / "evaluation_multi_gpu"
    torchrun(
        *evaluation_args([*EVALUATE, str(CONFIGS / "multi_gpu_evaluate.yaml")], trained, dataset_dir, evaluation_dir),
        cwd=trained,
        log_dir=trained.parent / "evaluate_logs",
    )
    split = json.loads((trained / "split.json").read_text())
    client, found = runs(trained)

    assert read_cases(evaluation_dir / "cases.csv") == read_cases(single_process_evaluation / "cases.csv")
    assert [row["case_id"] for row in read_cases(evaluation_dir / "cases.csv")] == [
        case["case_id"] for case in split["validation"]
    ]
    assert len([run for run in found if run.data.tags.get("evaluation") == "true"]) == 2


def test_multi_gpu_overlay_without_torchrun(dataset_dir, tmp_path):
    result = run_bundle(
        "--config_file",
        json.dumps(TRAIN),
        "--meta_file",
        META,
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(tmp_path / "outputs"),
        cwd=Path(BUNDLE_ROOT),
        check=False,
    )

    assert result.returncode != 0
    assert "LOCAL_RANK" in result.stderr
    assert "launch them with torchrun --nproc_per_node=N" in result.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
