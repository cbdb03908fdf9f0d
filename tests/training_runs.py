"""Helpers for tests that run the bundle's training as a user does and read what it wrote and logged."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from mlflow.tracking import MlflowClient

from scripts import BUNDLE_ROOT

CONFIGS = Path(BUNDLE_ROOT) / "configs"
META = str(Path(BUNDLE_ROOT) / "metadata.json")
# Small real trainings: 2 cases per split list (one batch per epoch) and small patches.
SMALL = ["--max_cases", "2", "--patch_size", "[24, 32, 24]"]


def train_command(dataset_dir: Path, output_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
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
        *SMALL,
        *overrides,
    ]


def run_training(
    dataset_dir: Path, output_dir: Path, *overrides: str, check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run one training to its end in a subprocess; with ``check``, fail the test with its output on an error."""
    result = subprocess.run(
        train_command(dataset_dir, output_dir, *overrides),
        cwd=output_dir.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"
        )
    return result


def start_training(dataset_dir: Path, output_dir: Path, log_path: Path, *overrides: str) -> subprocess.Popen:
    """Start a training in a subprocess that writes its output to ``log_path``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        return subprocess.Popen(
            train_command(dataset_dir, output_dir, *overrides),
            cwd=output_dir.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_for(condition: Callable[[], bool], process: subprocess.Popen | None, what: str, timeout: float = 600) -> None:
    """Poll ``condition`` until it holds; fail when ``process`` exits first or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the training exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def sqlite_uri(output_dir: Path) -> str:
    return f"sqlite:///{output_dir / 'mlflow.db'}"


def training_runs(tracking_uri: str, experiment: str = "seglosses") -> tuple[MlflowClient, list]:
    """Return the client and the runs of an experiment, oldest first."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r} at {tracking_uri}"
    return client, client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def has_logged_step(tracking_uri: str, key: str, step: int) -> bool:
    """Return whether the first run of the experiment logged ``key`` at ``step``; ``False`` before the run exists."""
    try:
        client, runs = training_runs(tracking_uri)
    except Exception:  # noqa: BLE001 - the store or the experiment may not exist yet
        return False
    return bool(runs) and any(metric.step == step for metric in client.get_metric_history(runs[0].info.run_id, key))


def metric_history(client: MlflowClient, run_id: str, keys: Sequence[str] | None = None) -> dict[str, list]:
    """Return ``{key: [(step, value), ...]}`` sorted by step, every logged value included (so duplicates show)."""
    keys = keys if keys is not None else sorted(client.get_run(run_id).data.metrics)
    return {
        key: sorted((metric.step, metric.value) for metric in client.get_metric_history(run_id, key)) for key in keys
    }


def copy_cases(dataset_dir: Path, target: Path, count: int) -> Path:
    """Copy the first ``count`` real cases into ``target`` (``images/``, ``labels/``) with a dataset.json for them."""
    content = json.loads((dataset_dir / "dataset.json").read_text())
    (target / "images").mkdir(parents=True)
    (target / "labels").mkdir(parents=True)
    entries = []
    for entry in content["training"][:count]:
        for key, folder in (("image", "images"), ("label", "labels")):
            source = dataset_dir / entry[key]
            shutil.copy(source, target / folder / source.name)
        name = Path(entry["image"]).name
        entries.append({"image": f"./images/{name}", "label": f"./labels/{name}"})
    content["training"] = entries
    content["numTraining"] = len(entries)
    (target / "dataset.json").write_text(json.dumps(content, indent=1))
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return target
