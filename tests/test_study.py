"""The loss study as a user runs it: two real losses on a few real cases, a rerun, and runs that fail.

One study (cross_entropy and dice, 1 seed, 1 fold, 1 epoch, 3 cases per split list) runs once per module from the
command line. An interrupted attempt of the dice run is planted in its MLflow store first, to be restarted.
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from scripts import BUNDLE_ROOT
from scripts.study.settings import RunSpec, StudySettings
from scripts.study.store import HEARTBEAT, HOST, KEY, LOSS, NAME, OUTCOME, PID, ROLE, StudyStore
from scripts.study.workflow import report as study_report

pytestmark = pytest.mark.training

EXPERIMENT = "seglosses-study"
TINY = [
    "--seeds",
    "0",
    "--folds",
    "0",
    "--max_epochs",
    "1",
    "--val_interval",
    "1",
    "--max_cases",
    "3",
    "--overrides",
    json.dumps({"patch_size": [24, 32, 24]}),
]


def study(*arguments: str, returncode: int = 0) -> subprocess.CompletedProcess:
    """Run the study's command line from the bundle root, as the README shows it, expecting ``returncode``."""
    result = subprocess.run(
        [sys.executable, "-m", "scripts.study", "run", *arguments],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if result.returncode != returncode:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
        raise AssertionError(f"study exited with {result.returncode}, not {returncode}:\n{output}")
    return result


def client_for(output_dir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")


def study_runs(output_dir: Path, role: str) -> list:
    client = client_for(output_dir)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`{ROLE}` = '{role}'", order_by=["attributes.start_time ASC"]
    )


@pytest.fixture(scope="module")
def finished(dataset_dir, tmp_path_factory):
    """Run the tiny study, after planting an interrupted attempt of the dice run in its MLflow store."""
    output_dir = tmp_path_factory.mktemp("tiny") / "study"
    arguments = [
        "--losses",
        "cross_entropy,dice",
        *TINY,
        "--study_name",
        "tiny",
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
    ]

    settings = StudySettings.create(
        losses="cross_entropy,dice",
        seeds=0,
        folds=0,
        max_epochs=1,
        val_interval=1,
        max_cases=3,
        overrides={"patch_size": [24, 32, 24]},
        dataset_dir=dataset_dir,
        study_name="tiny",
    )
    store = StudyStore(f"sqlite:///{output_dir / 'mlflow.db'}", EXPERIMENT, "tiny")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = store.client.create_run(
        store.experiment_id,
        run_name="dice-fold0-seed0",
        tags={
            NAME: "tiny",
            ROLE: "child",
            KEY: settings.settings_key(RunSpec("dice", 0, 0)),
            LOSS: "dice",
            HOST: store.host,
            PID: dead.stdout.strip(),
            HEARTBEAT: f"{time.time():.0f}",
        },
    )

    first = study(*arguments)
    return {"output_dir": output_dir, "arguments": arguments, "first": first, "stale_id": stale.info.run_id}


def test_child_runs_have_tags_and_params(finished):
    (parent,) = study_runs(finished["output_dir"], "parent")
    children = [run for run in study_runs(finished["output_dir"], "child") if run.info.run_id != finished["stale_id"]]

    assert sorted(run.info.run_name for run in children) == ["cross_entropy-fold0-seed0", "dice-fold0-seed0"]
    for run in children:
        tags, params = run.data.tags, run.data.params
        loss = run.info.run_name.split("-")[0]
        assert run.info.status == "FINISHED"
        assert tags[OUTCOME] == "complete"
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags[NAME] == "tiny"
        assert tags["loss"] == loss
        assert tags[LOSS] == loss
        assert tags["loss_family"] == {"cross_entropy": "pixel", "dice": "region"}[loss]
        assert (tags["fold"], tags["seed"]) == ("0", "0")
        assert len(tags[KEY]) == 16
        assert params["loss"] == loss
        assert params["max_epochs"] == "1"
        assert params["num_training"] == "3"
        assert params["eval.num_cases"] == "3"
        assert params["eval.surface_tolerance_mm"] == "1.0"
        for metric in (
            "val_mean_dice",
            "eval_dice.mean",
            "eval_hd95.Anterior",
            "eval_surface_dice.Posterior",
            "eval_assd.mean",
        ):
            assert metric in run.data.metrics, metric


def test_child_runs_hold_evaluation_and_logs(finished):
    client = client_for(finished["output_dir"])
    for run in study_runs(finished["output_dir"], "child"):
        if run.info.run_id == finished["stale_id"]:
            continue
        top = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
        evaluation = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "evaluation")}
        logs = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "study")}

        assert {"checkpoints", "evaluation", "study", "split.json"} <= top
        assert evaluation == {"evaluation/cases.csv", "evaluation/summary.json"}
        assert {"study/train.log", "study/evaluate.log", "study/train_args.json"} <= logs


def test_interrupted_attempt_is_killed_and_rerun(finished):
    stale = client_for(finished["output_dir"]).get_run(finished["stale_id"])
    dice = [
        run
        for run in study_runs(finished["output_dir"], "child")
        if run.info.run_name == "dice-fold0-seed0" and run.info.run_id != finished["stale_id"]
    ]

    assert stale.info.status == "KILLED"
    assert stale.data.tags[OUTCOME] == "interrupted"
    assert len(dice) == 1
    assert dice[0].data.tags[OUTCOME] == "complete"


def test_progress_lines_count_runs(finished):
    output = finished["first"].stderr

    assert "[1/2] cross_entropy-fold0-seed0: finished in" in output
    assert "[2/2] dice-fold0-seed0: finished in" in output
    assert "ETA" in output


def test_report_and_case_table(finished):
    report_dir = finished["output_dir"] / "report"
    with (report_dir / "results" / "cases.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    text = (report_dir / "results.md").read_text()

    # 2 losses x 3 validation cases x 2 foreground classes, each once.
    assert len(rows) == 12
    assert len({(row["loss"], row["case_id"], row["class"]) for row in rows}) == 12
    assert {row["class"] for row in rows} == {"Anterior", "Posterior"}
    for row in rows:
        assert 0.0 <= float(row["dice"]) <= 1.0
        assert 0.0 <= float(row["surface_dice"]) <= 1.0
        assert float(row["hd95"]) >= 0.0
        assert float(row["assd"]) >= 0.0
        assert row["empty_prediction"] in ("0", "1")
    for heading in (
        "## Setup",
        "## What this budget can and cannot support",
        "### pixel",
        "### region",
        "## Paired tests against `cross_entropy`",
        "## Per class",
    ):
        assert heading in text, heading
    assert "python -m scripts.study run --preset quick --losses cross_entropy,dice" in text
    assert "2 runs: 2 finished, 0 failed" in text
    for name in ("dice_boxplot.png", "hd95_boxplot.png", "validation_curves.png", "summary.csv"):
        assert (report_dir / "results" / name).stat().st_size > 0, name


def test_parent_run_holds_report(finished):
    client = client_for(finished["output_dir"])
    (parent,) = study_runs(finished["output_dir"], "parent")
    report = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report")}
    files = {artifact.path for artifact in client.list_artifacts(parent.info.run_id, "report/results")}

    assert parent.info.status == "FINISHED"
    assert "report/results.md" in report
    assert {
        "report/results/cases.csv",
        "report/results/dice_boxplot.png",
        "report/results/validation_curves.png",
    } <= files


def test_rerun_does_no_work(finished):
    before = {run.info.run_id for run in study_runs(finished["output_dir"], "child")}
    (log,) = (finished["output_dir"] / "runs").glob("dice-fold0-seed0-*/train.log")
    modified = log.stat().st_mtime

    second = study(*finished["arguments"])

    assert {run.info.run_id for run in study_runs(finished["output_dir"], "child")} == before
    assert log.stat().st_mtime == modified
    assert second.stderr.count("skipped: finished earlier with the same settings") == 2
    assert "0 runs finished, 0 failed, 2 had a result already" in second.stdout


def test_report_command_rewrites_report(finished, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.study",
            "report",
            "--study_name",
            "tiny",
            "--output_dir",
            str(finished["output_dir"]),
            "--report_dir",
            str(tmp_path / "again"),
        ],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = (tmp_path / "again" / "results.md").read_text()
    with (tmp_path / "again" / "results" / "cases.csv").open() as stream:
        rows = list(csv.DictReader(stream))

    assert result.returncode == 0, result.stderr[-3000:]
    assert "report rewritten by `python -m scripts.study report --study_name tiny`" in text
    assert "python -m scripts.study run --preset quick --losses cross_entropy,dice" in text
    assert len(rows) == 12


def test_report_reads_without_creating(finished, tmp_path):
    output_dir = finished["output_dir"]
    client = client_for(output_dir)
    experiments = {experiment.name for experiment in client.search_experiments()}

    with pytest.raises(ValueError, match=rf"no experiment named 'typo' at sqlite:///.*it has .*'{EXPERIMENT}'"):
        study_report(study_name="tiny", output_dir=str(output_dir), experiment_name="typo")
    with pytest.raises(FileNotFoundError, match=r"no study database .*elsewhere.*mlflow\.db: pass the --output_dir"):
        study_report(study_name="tiny", output_dir=str(tmp_path / "elsewhere"))

    assert {experiment.name for experiment in client.search_experiments()} == experiments
    assert not (tmp_path / "elsewhere").exists()


def processes_with(text: str) -> list[int]:
    """Return the ids of the processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find the training process")
def test_sigterm_stops_training_and_marks_run(dataset_dir, tmp_path):
    output_dir = tmp_path / "study"

    def started_training_log():
        logs = list((output_dir / "runs").glob("dice-fold0-seed0-*/train.log"))
        return logs[0] if logs and "MLflow run" in logs[0].read_text(errors="replace") else None

    arguments = [
        "--losses",
        "dice",
        "--max_epochs",
        "500",
        "--val_interval",
        "100",
        "--max_cases",
        "2",
        "--overrides",
        json.dumps({"patch_size": [24, 32, 24]}),
        "--study_name",
        "stopped",
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
    ]
    with (tmp_path / "study.log").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "scripts.study", "run", *arguments],
            cwd=BUNDLE_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 600
        while (train_log := started_training_log()) is None:
            assert process.poll() is None, (tmp_path / "study.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the training did not start within 10 minutes"
            time.sleep(1)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=300)
    (child,) = study_runs(output_dir, "child")
    (parent,) = study_runs(output_dir, "parent")

    assert code == 130
    assert "the study was interrupted" in (tmp_path / "study.log").read_text()
    assert child.info.status == "KILLED"
    assert child.data.tags[OUTCOME] == "interrupted"
    assert parent.info.status == "KILLED"
    assert processes_with(str(train_log.parent / "train_args.json")) == []


def test_failing_runs_are_recorded_and_study_finishes(dataset_dir, tmp_path):
    overlays = tmp_path / "overlays"
    overlays.mkdir()
    # Fails in the first training step: one class weight for three classes.
    (overlays / "bad_weights.yaml").write_text(
        "loss:\n  _target_: scripts.losses.build_loss\n  name: dice\n  class_weights: [1.0]\n"
    )
    # Fails while the config is built, before the training creates its MLflow run.
    (overlays / "bad_option.yaml").write_text(
        "loss:\n  _target_: scripts.losses.build_loss\n  name: dice\n  no_such_option: 1\n"
    )
    output_dir = tmp_path / "study"

    result = study(
        "--overlay_dir",
        str(overlays),
        *TINY,
        "--study_name",
        "failing",
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
        returncode=1,
    )
    children = {run.info.run_name: run for run in study_runs(output_dir, "child")}
    (parent,) = study_runs(output_dir, "parent")

    assert set(children) == {"bad_option-fold0-seed0", "bad_weights-fold0-seed0"}
    for run in children.values():
        assert run.info.status == "FAILED"
        assert run.data.tags[OUTCOME] == "failed"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert children["bad_weights-fold0-seed0"].data.tags["error"].startswith("ValueError: class_weights has 1 entries")
    assert "no hyperparameter 'no_such_option'" in children["bad_option-fold0-seed0"].data.tags["error"]
    assert children["bad_option-fold0-seed0"].data.tags["loss"] == "dice"
    assert children["bad_option-fold0-seed0"].data.tags["loss_family"] == "region"
    assert parent.info.status == "FINISHED"
    assert "error: Shard 0/1: 0 runs finished, 2 failed" in result.stderr
    assert "--retry_failed true" in result.stderr
    assert "## Failed runs" in (output_dir / "report" / "results.md").read_text()

    again = study(
        "--overlay_dir",
        str(overlays),
        *TINY,
        "--study_name",
        "failing",
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
    )
    assert again.stderr.count("skipped: failed earlier") == 2
    assert len(study_runs(output_dir, "child")) == 2
