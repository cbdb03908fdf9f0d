"""The study's settings, grid and shards, its MLflow bookkeeping and its checks of bad input."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import BUNDLE_ROOT
from scripts.study.settings import PRESETS, RunSpec, StudySettings, parse_shard
from scripts.study.store import HEARTBEAT, HOST, KEY, NAME, OUTCOME, PID, ROLE, StudyStore, check_tracking_uri

OVERLAYS = Path(BUNDLE_ROOT) / "configs" / "losses"


@pytest.fixture()
def task_dir(tmp_path) -> Path:
    """A task folder with a dataset.json of 6 cases (no images: the settings never open them)."""
    folder = tmp_path / "task"
    folder.mkdir()
    content = {
        "name": "Tiny",
        "labels": {"0": "background", "1": "a", "2": "b"},
        "training": [{"image": f"images/c{index}.nii.gz", "label": f"labels/c{index}.nii.gz"} for index in range(6)],
    }
    (folder / "dataset.json").write_text(json.dumps(content))
    return folder


def settings(task_dir: Path, **options) -> StudySettings:
    return StudySettings.create(dataset_dir=task_dir, **{"losses": "dice,cross_entropy", **options})


@pytest.mark.parametrize("text, expected", [("0/1", (0, 1)), ("2/4", (2, 4)), (" 1/2 ", (1, 2))])
def test_parse_shard_valid(text, expected):
    assert parse_shard(text) == expected


@pytest.mark.parametrize("text", ["3/2", "2/2", "-1/2", "0/0", "1", "a/b", "1/2/3", ""])
def test_parse_shard_invalid_names_value(text):
    with pytest.raises(ValueError, match="invalid shard"):
        parse_shard(text)


def test_shards_partition_grid(task_dir):
    study = settings(task_dir, seeds="0,1,2", folds="0,1")
    grid = study.grid()
    shards = [study.shard(index, 3) for index in range(3)]

    assert len(grid) == 2 * 3 * 2
    assert sorted(spec for shard in shards for spec in shard) == sorted(grid)
    assert sum(len(shard) for shard in shards) == len(grid)
    assert [len(shard) for shard in shards] == [4, 4, 4]
    assert shards[1] == grid[1::3]


def test_grid_order_ignores_option_order(task_dir):
    first = settings(task_dir, losses="dice,cross_entropy", seeds="1,0").grid()
    second = settings(task_dir, losses="cross_entropy,dice", seeds="0,1").grid()

    assert first == second
    assert first[0] == RunSpec("cross_entropy", 0, 0)


def test_quick_preset_defaults(task_dir, caplog):
    with caplog.at_level("INFO", logger="scripts.study.settings"):
        study = settings(task_dir)

    assert study.seeds == PRESETS["quick"].seeds
    assert study.folds == PRESETS["quick"].folds
    assert study.max_epochs == PRESETS["quick"].max_epochs
    assert study.val_interval == PRESETS["quick"].val_interval
    assert study.reference == "dice"  # the first loss named, since combo is not in the study
    assert "The reference loss is dice, the first of the losses, because combo is not among them." in caplog.text


def test_full_preset_uses_config_epochs(task_dir):
    study = settings(task_dir, preset="full", losses=None)

    assert study.max_epochs == 60
    assert study.val_interval == 5
    assert len(study.grid()) == len(study.losses) * 3 * 5
    assert study.reference == "combo"


def test_settings_key_stable_and_sensitive(task_dir, tmp_path):
    study = settings(task_dir)
    spec = RunSpec("dice", 0, 0)
    key = study.settings_key(spec)

    assert key == settings(task_dir).settings_key(spec)
    assert key == settings(task_dir, study_name="other", experiment_name="other").settings_key(spec)
    assert key != study.settings_key(RunSpec("dice", 1, 0))
    assert key != study.settings_key(RunSpec("dice", 0, 1))
    assert key != settings(task_dir, max_epochs=3).settings_key(spec)
    assert key != settings(task_dir, overrides={"batch_size": 4}).settings_key(spec)
    assert key != settings(task_dir, surface_tolerance=2.0).settings_key(spec)

    overlays = tmp_path / "overlays"
    shutil.copytree(OVERLAYS, overlays)
    assert key == settings(task_dir, overlay_dir=overlays).settings_key(spec)
    (overlays / "dice.yaml").write_text(
        (overlays / "dice.yaml").read_text().replace("squared_pred: true", "squared_pred: false")
    )
    assert key != settings(task_dir, overlay_dir=overlays).settings_key(spec)


def test_settings_key_follows_dataset(task_dir):
    key = settings(task_dir).settings_key(RunSpec("dice", 0, 0))
    content = json.loads((task_dir / "dataset.json").read_text())
    content["training"] = content["training"][:-1]
    (task_dir / "dataset.json").write_text(json.dumps(content))

    assert settings(task_dir).settings_key(RunSpec("dice", 0, 0)) != key


def test_settings_json_round_trip(task_dir):
    study = settings(task_dir, seeds="0,1", overrides={"batch_size": 4})

    assert StudySettings.from_json(study.to_json()) == study


def test_unknown_loss_lists_overlays(task_dir):
    with pytest.raises(
        ValueError, match="unknown loss 'nosuch'.*Losses with an overlay: .*combo, .*cross_entropy, .*dice"
    ):
        settings(task_dir, losses="dice,nosuch")


def test_overlay_of_unregistered_loss_raises(task_dir, tmp_path):
    (tmp_path / "mine.yaml").write_text("loss:\n  _target_: scripts.losses.build_loss\n  name: nosuch\n")

    with pytest.raises(ValueError, match="unknown loss 'nosuch'. Registered losses"):
        settings(task_dir, losses="mine", overlay_dir=tmp_path)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"preset": "huge"}, "unknown preset 'huge'"),
        ({"seeds": "a,b"}, "seeds must be integers"),
        ({"seeds": "0,0"}, "seeds must list distinct integers"),
        ({"folds": 5}, r"folds must lie in \[0, 4\]"),
        ({"max_epochs": 0}, "max_epochs must be an integer >= 1, got 0"),
        ({"reference": "combo"}, "reference loss 'combo' is not among"),
        ({"overrides": {"seed": 3}}, "overrides may not set seed"),
        ({"losses": "dice,dice"}, "named twice"),
        ({"num_folds": "abc"}, "num_folds must be an integer of at least 2, got 'abc'"),
        ({"overrides": {"max_epoch": 3}}, "overrides name settings that configs/train.yaml does not define: max_epoch"),
        ({"overrides": {"patch_size": [40, 50]}}, "overrides: patch_size must list 3 positive integers"),
        ({"overrides": {"learning_rate": "fast"}}, "overrides: learning_rate must be a positive number, got 'fast'"),
        ({"overrides": {"loss#checkpoint": "net.pt"}}, "overrides may not set loss#checkpoint: each run's loss comes"),
        ({"surface_tolerance": 0}, "surface_tolerance must be a positive distance in mm, got 0"),
    ],
)
def test_invalid_options_raise(task_dir, options, message):
    with pytest.raises(ValueError, match=message):
        settings(task_dir, **options)


def test_missing_dataset_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_task not found"):
        StudySettings.create(losses="dice", dataset_dir=tmp_path / "no_task")


# The MLflow bookkeeping: what a rerun does with each kind of recorded run.


@pytest.fixture()
def store(tmp_path) -> StudyStore:
    return StudyStore(f"sqlite:///{tmp_path / 'mlflow.db'}", "study-test", "s1")


def recorded_run(
    store: StudyStore,
    status: str,
    outcome: str | None = None,
    host: str | None = None,
    pid: int | None = None,
    heartbeat: float | None = None,
):
    tags = {
        NAME: "s1",
        ROLE: "child",
        KEY: "k",
        HOST: host or store.host,
        PID: str(pid or os.getpid()),
        HEARTBEAT: f"{heartbeat if heartbeat is not None else time.time():.0f}",
    }
    if outcome:
        tags[OUTCOME] = outcome
    run = store.client.create_run(store.experiment_id, tags=tags)
    if status != "RUNNING":
        store.client.set_terminated(run.info.run_id, status=status)
    return store.client.get_run(run.info.run_id)


def dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_classify_complete_run_is_reused(store):
    run = recorded_run(store, "FINISHED", "complete")
    stale = recorded_run(store, "RUNNING", pid=dead_pid())

    state = store.classify(store.children("k"))

    assert state.state == "complete"
    assert state.run.info.run_id == run.info.run_id
    assert stale.info.run_id not in {item.info.run_id for item in state.stale}


def test_classify_failed_run_kept_unless_retried(store):
    recorded_run(store, "FAILED", "failed")

    assert store.classify(store.children("k")).state == "failed"
    assert store.classify(store.children("k"), retry_failed=True).state == "todo"


def test_classify_dead_process_run_is_stale(store):
    run = recorded_run(store, "RUNNING", pid=dead_pid())

    state = store.classify(store.children("k"))

    assert state.state == "todo"
    assert [item.info.run_id for item in state.stale] == [run.info.run_id]


def test_classify_live_runs_are_left_alone(store):
    recorded_run(store, "RUNNING")  # this process, fresh heartbeat

    assert store.classify(store.children("k")).state == "running"


def test_classify_other_host_depends_on_heartbeat(store):
    recorded_run(store, "RUNNING", host="elsewhere", heartbeat=time.time())
    assert store.classify(store.children("k")).state == "running"

    store.client.set_tag(store.children("k")[0].info.run_id, HEARTBEAT, f"{time.time() - 3600:.0f}")
    state = store.classify(store.children("k"))
    assert state.state == "todo"
    assert len(state.stale) == 1


def test_mark_stale_kills_run(store):
    run = recorded_run(store, "RUNNING", pid=dead_pid())
    store.mark_stale(run)
    updated = store.client.get_run(run.info.run_id)

    assert updated.info.status == "KILLED"
    assert updated.data.tags[OUTCOME] == "interrupted"


def test_parent_created_once(store):
    first = store.parent(create=True)
    second = store.parent(create=True)

    assert first.info.run_id == second.info.run_id
    assert first.data.tags[ROLE] == "parent"


def test_invalid_study_name_raises(tmp_path):
    with pytest.raises(ValueError, match="invalid study name 'a b'"):
        StudyStore(f"sqlite:///{tmp_path / 'mlflow.db'}", "study-test", "a b")


def test_unreachable_tracking_server_names_uri():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # The port is free again: nothing listens on it.
    with pytest.raises(RuntimeError, match=f"http://127.0.0.1:{port} is unreachable.*--tracking_uri"):
        check_tracking_uri(f"http://127.0.0.1:{port}", timeout=2.0)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--losses", "dice,nosuch"], "error: unknown loss 'nosuch'"),
        (["--shard", "3/2"], "error: invalid shard '3/2'"),
        (["--retry_failed", "maybe"], "error: retry_failed must be true or false, got 'maybe'"),
        (["--dataset_dir", "{missing}"], "Check --dataset_dir, or download the task"),
        (["--tracking_uri", "http://127.0.0.1:{port}"], "is unreachable"),
    ],
)
def test_command_line_rejects_bad_input(task_dir, tmp_path, arguments, message):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    arguments = [item.format(missing=tmp_path / "missing", port=port) for item in arguments]
    if "--dataset_dir" not in arguments:
        arguments += ["--dataset_dir", str(task_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "scripts.study", "run", "--output_dir", str(tmp_path / "out"), *arguments],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
