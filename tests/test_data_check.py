"""The dataset check on copies of real cases, broken in the ways real data breaks, and its use before training."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from training_runs import copy_cases, run_training, sqlite_uri, training_runs

from scripts import BUNDLE_ROOT
from scripts.data import check as check_module
from scripts.data import check_dataset, evaluation_cases, fold_split, load_datalist, prepare_split
from scripts.files import atomic_write_text

NUM_CASES = 208


def case_name(task: Path, index: int) -> str:
    return Path(json.loads((task / "dataset.json").read_text())["training"][index]["image"]).name


def write_like(path: Path, data: np.ndarray, source: nib.Nifti1Image, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, source.affine if affine is None else affine), path)


def break_cases(dataset_dir: Path, task: Path) -> dict[str, Path]:
    """Break real copied cases, one way each, and return the file that each breakage is in."""
    names = [case_name(task, index) for index in range(13)]
    images, labels = task / "images", task / "labels"
    broken: dict[str, Path] = {}

    target = images / names[0]
    content = target.read_bytes()
    target.write_bytes(content[: len(content) // 2])
    broken["truncated_image"] = target

    shape = nib.load(labels / names[1]).shape
    other = next(
        path for path in sorted((dataset_dir / "labels").glob("*.nii.gz")) if nib.load(path).shape[:3] != shape[:3]
    )
    shutil.copy(other, labels / names[1])
    broken["label_of_another_size"] = labels / names[1]

    label = nib.load(labels / names[2])
    data = np.asarray(label.dataobj).copy()
    data[data == 2] = 7
    write_like(labels / names[2], data, label)
    broken["label_value_7"] = labels / names[2]

    (images / names[3]).unlink()
    broken["dropped_image"] = images / names[3]

    image = nib.load(images / names[4])
    data = np.asarray(image.dataobj).astype(np.float32)
    data[0, 0, 0], data[1, 0, 0] = np.nan, np.inf
    write_like(images / names[4], data, image)
    broken["nan_and_inf_image"] = images / names[4]

    image = nib.load(images / names[5])
    write_like(images / names[5], np.zeros(image.shape, np.uint8), image)
    broken["empty_image"] = images / names[5]

    label = nib.load(labels / names[6])
    data = np.asarray(label.dataobj).astype(np.float32)
    data[data == 1] = 0.5
    write_like(labels / names[6], data, label)
    broken["non_integer_label"] = labels / names[6]

    label = nib.load(labels / names[7])
    affine = label.affine.copy()
    affine[0, 3] += 2.0
    write_like(labels / names[7], np.asarray(label.dataobj), label, affine)
    broken["shifted_label_affine"] = labels / names[7]

    (images / names[8]).write_text("not an image\n")
    broken["text_file_as_image"] = images / names[8]

    content = (labels / names[9]).read_bytes()
    (labels / names[9]).write_bytes(content[:100])
    broken["label_cut_in_header"] = labels / names[9]

    # Two cases leave dataset.json: one loses its image, the other its label.
    (images / names[10]).unlink()
    broken["label_without_image"] = labels / names[10]
    (labels / names[11]).unlink()
    broken["image_without_label"] = images / names[11]
    dataset = json.loads((task / "dataset.json").read_text())
    dataset["training"] = [entry for entry in dataset["training"] if Path(entry["image"]).name not in names[10:12]]
    (task / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return broken


EXPECTED = {
    "truncated_image": "image data cannot be read: the file is truncated or corrupt",
    "label_of_another_size": "label has spatial shape",
    "label_value_7": "label values [7] are not declared in dataset.json (labels [0, 1, 2])",
    "dropped_image": "image file not found; restore it or remove the case from dataset.json",
    "nan_and_inf_image": "image has 1 NaN and 1 inf voxels",
    "empty_image": "image is empty: every voxel is 0",
    "non_integer_label": "label has non-integer values [0.5]",
    "shifted_label_affine": "label affine differs from its image's by up to 2 mm",
    "text_file_as_image": "image file cannot be read as NIfTI",
    "label_cut_in_header": "label file cannot be read as NIfTI",
    "label_without_image": "label without its image",
    "image_without_label": "image without its label",
}


@pytest.fixture(scope="module")
def broken_task(dataset_dir, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    task = copy_cases(dataset_dir, tmp_path_factory.mktemp("broken") / "task", 14)
    return task, break_cases(dataset_dir, task)


@pytest.fixture(scope="module")
def broken_report(broken_task):
    return check_dataset(broken_task[0])


def test_check_of_all_real_cases_finds_nothing(dataset_dir):
    report = check_dataset(dataset_dir)

    assert report.ok, report.text()
    assert report.num_cases == NUM_CASES
    # The check runs before every training: 208 small cases take about 1 s on 2 busy CPU cores.
    assert report.seconds < 30


@pytest.mark.parametrize("breakage", sorted(EXPECTED))
def test_check_reports_breakage_with_its_file(broken_task, broken_report, breakage):
    _, broken = broken_task
    lines = [str(problem) for problem in broken_report.problems if problem.path == str(broken[breakage])]

    assert len(lines) == 1, f"{breakage}: {lines}\n{broken_report.text()}"
    assert EXPECTED[breakage] in lines[0]


def test_check_reports_every_problem_in_one_pass(broken_task, broken_report):
    task, broken = broken_task
    listed_broken = {
        key: path for key, path in broken.items() if key not in ("label_without_image", "image_without_label")
    }

    assert len(broken_report.problems) == len(broken)
    assert sorted(broken_report.broken_cases) == sorted(path.name[: -len(".nii.gz")] for path in listed_broken.values())
    intact = [case_name(task, index) for index in (10, 11)]  # the listed cases after the ten broken ones
    assert all(name not in broken_report.text() for name in intact)
    assert broken_report.summary().startswith(f"data check of {task}: 12 problems, 10 of 12 cases broken")


def run_check_command(task: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scripts.data", "check", "--dataset_dir", str(task)],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_check_command_prints_report_and_fails(broken_task):
    task, broken = broken_task
    result = run_check_command(task)
    lines = result.stdout.strip().splitlines()

    assert result.returncode == 1
    for breakage, path in broken.items():
        assert str(path) in result.stdout, breakage
    assert "set skip_broken_cases to true" in result.stdout
    assert lines[-1].startswith(f"data check of {task}: 12 problems")


def test_check_command_passes_intact_copy(dataset_dir, tmp_path):
    task = copy_cases(dataset_dir, tmp_path / "task", 3)

    result = run_check_command(task)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith(f"data check of {task}: 3 cases, no problems")


def test_check_reads_nrrd_and_metaimage(dataset_dir, tmp_path):
    itk = pytest.importorskip("itk")
    task = copy_cases(dataset_dir, tmp_path / "task", 3)
    dataset = json.loads((task / "dataset.json").read_text())
    names = [Path(entry["image"]).name for entry in dataset["training"]]
    for index, name in enumerate(names):
        stem = name[: -len(".nii.gz")]
        itk.imwrite(itk.imread(str(task / "images" / name)), str(task / "images" / f"{stem}.nrrd"))
        # Case 1 gets the label of case 2, which is drawn on another grid.
        label_source = names[2] if index == 1 else name
        itk.imwrite(itk.imread(str(task / "labels" / label_source)), str(task / "labels" / f"{stem}.mha"))
        (task / "images" / name).unlink()
        (task / "labels" / name).unlink()
        dataset["training"][index] = {"image": f"./images/{stem}.nrrd", "label": f"./labels/{stem}.mha"}
    (task / "dataset.json").write_text(json.dumps(dataset))
    truncated = task / "images" / f"{names[2][: -len('.nii.gz')]}.nrrd"
    truncated.write_bytes(truncated.read_bytes()[:300])

    report = check_dataset(task)
    messages = {Path(problem.path).name: problem.message for problem in report.problems}

    assert len(report.problems) == 2, report.text()
    assert "label has spatial shape" in messages[f"{names[1][: -len('.nii.gz')]}.mha"]
    assert "cannot be read as NRRD with ITK" in messages[truncated.name]


def test_check_cache_rereads_only_changed_cases(dataset_dir, tmp_path, monkeypatch):
    task = copy_cases(dataset_dir, tmp_path / "task", 4)
    cache = tmp_path / "cache.json"
    checked: list[str] = []
    original = check_module.check_case

    def counting_check_case(case, label_values):
        checked.append(case["case_id"])
        return original(case, label_values)

    monkeypatch.setattr(check_module, "check_case", counting_check_case)
    first = check_dataset(task, cache_path=cache)
    checked.clear()
    second = check_dataset(task, cache_path=cache)
    rechecked_unchanged = list(checked)
    name = case_name(task, 1)
    label = nib.load(task / "labels" / name)
    data = np.asarray(label.dataobj).copy()
    data[data == 1] = 7
    write_like(task / "labels" / name, data, label)
    checked.clear()
    third = check_dataset(task, cache_path=cache)

    assert first.ok and second.ok
    assert rechecked_unchanged == []
    assert checked == [name[: -len(".nii.gz")]]
    assert third.broken_cases == [name[: -len(".nii.gz")]]


def test_prepare_split_refuses_broken_dataset(broken_task, tmp_path):
    task, broken = broken_task

    with pytest.raises(ValueError, match="the dataset check found problems") as raised:
        prepare_split(task, fold=0, output_dir=tmp_path, check_data=True)
    message = str(raised.value)

    assert str(broken["label_value_7"]) in message
    assert "skip_broken_cases" in message
    assert not (tmp_path / "split.json").exists()


def test_prepare_split_reads_false_from_command_line(broken_task, tmp_path):
    # A command line gives "--skip_broken_cases false" as the string "false", which must not count as true.
    task, _ = broken_task

    with pytest.raises(ValueError, match="the dataset check found problems"):
        prepare_split(task, fold=0, output_dir=tmp_path, check_data="true", skip_broken_cases="false")
    with pytest.raises(ValueError, match="skip_broken_cases must be true or false, got 'no'"):
        prepare_split(task, fold=0, output_dir=tmp_path, check_data=True, skip_broken_cases="no")


def test_prepare_split_skips_broken_cases_keeping_folds(broken_task, tmp_path):
    task, _ = broken_task
    report = check_dataset(task)
    expected = fold_split(load_datalist(task, check_files=False), fold=0)

    split = prepare_split(task, fold=0, output_dir=tmp_path, check_data=True, skip_broken_cases=True)
    written = json.loads((tmp_path / "split.json").read_text())

    broken = set(report.broken_cases)
    for key in ("training", "validation"):
        assert [case["case_id"] for case in split[key]] == [
            case["case_id"] for case in expected[key] if case["case_id"] not in broken
        ]
    assert sorted(case["case_id"] for case in split["skipped"]) == sorted(broken)
    assert written["dataset"]["num_skipped"] == len(broken)
    assert len(written["data_problems"]) == len(report.problems)


def test_skipping_every_validation_case_fails_without_skip_hint(dataset_dir, tmp_path):
    task = copy_cases(dataset_dir, tmp_path / "task", 6)
    for case in fold_split(load_datalist(task), fold=0)["validation"]:
        image = Path(case["image"])
        image.write_bytes(image.read_bytes()[:2000])

    with pytest.raises(ValueError, match="every case of the validation list is broken") as raised:
        prepare_split(task, fold=0, output_dir=tmp_path, check_data=True, skip_broken_cases=True)

    assert "Fix or replace the files named below" in str(raised.value)
    assert "--skip_broken_cases true" not in str(raised.value)


@pytest.mark.training
def test_training_refuses_broken_dataset(broken_task, tmp_path):
    task, broken = broken_task
    output_dir = tmp_path / "outputs"

    result = run_training(task, output_dir, "--max_cases", "20", "--max_epochs", "1", check=False)

    assert result.returncode != 0
    assert "the dataset check found problems, so training does not start" in result.stderr
    assert str(broken["truncated_image"]) in result.stderr
    assert "--skip_broken_cases true" in result.stderr
    assert not (output_dir / "models" / "checkpoint.pt").exists()


@pytest.mark.training
def test_training_skips_broken_cases_and_logs_them(dataset_dir, tmp_path):
    task = copy_cases(dataset_dir, tmp_path / "task", 7)
    training_ids = [case["case_id"] for case in fold_split(load_datalist(task), fold=0)["training"]]
    broken_ids = training_ids[:2]
    image = task / "images" / f"{broken_ids[0]}.nii.gz"
    image.write_bytes(image.read_bytes()[:2000])
    label = nib.load(task / "labels" / f"{broken_ids[1]}.nii.gz")
    data = np.asarray(label.dataobj).copy()
    data[data == 1] = 7
    write_like(task / "labels" / f"{broken_ids[1]}.nii.gz", data, label)
    output_dir = tmp_path / "outputs"

    result = run_training(
        task,
        output_dir,
        "--skip_broken_cases",
        "true",
        "--max_cases",
        "20",
        "--max_epochs",
        "1",
        "--val_interval",
        "1",
    )
    client, runs = training_runs(sqlite_uri(output_dir))
    run = runs[0]
    problems = json.loads(Path(client.download_artifacts(run.info.run_id, "data_problems.json")).read_text())
    split = json.loads((output_dir / "split.json").read_text())

    assert f"training without 2 broken cases ({', '.join(broken_ids)})" in result.stdout
    assert run.info.status == "FINISHED"
    assert run.data.params["num_skipped_cases"] == "2"
    assert json.loads(run.data.params["skipped_cases"]) == broken_ids
    assert [case["case_id"] for case in problems["skipped"]] == broken_ids
    assert any(str(image) in line for line in problems["problems"])
    assert split["dataset"]["num_training"] == len(training_ids) - 2


def _write_many(path: str, text: str) -> None:
    for _ in range(300):
        atomic_write_text(path, text)


def test_concurrent_writers_keep_a_whole_file(tmp_path):
    # Under torchrun every rank writes the check cache and the split to the same path at the same time.
    import multiprocessing

    path = tmp_path / "data_check_cache.json"
    texts = [json.dumps({"writer": index, "padding": "x" * 20_000}) for index in range(2)]
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(path), text)) for text in texts]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=120)

    assert [writer.exitcode for writer in writers] == [0, 0]
    assert path.read_text() in texts
    assert [item.name for item in tmp_path.iterdir()] == ["data_check_cache.json"]


def test_evaluation_checks_only_the_cases_it_evaluates(broken_task, tmp_path):
    task, broken = broken_task
    cases = load_datalist(task, check_files=False)
    broken_ids = {case["case_id"] for case in cases if Path(case["image"]) in broken.values()}
    broken_ids |= {case["case_id"] for case in cases if Path(case["label"]) in broken.values()}
    intact = [case for case in cases if case["case_id"] not in broken_ids]
    truncated = [case for case in cases if Path(case["image"]) == broken["truncated_image"]]

    assert evaluation_cases(task, intact, output_dir=tmp_path) == intact
    with pytest.raises(ValueError, match="problems in the cases to evaluate") as raised:
        evaluation_cases(task, intact + truncated, output_dir=tmp_path)
    assert str(broken["truncated_image"]) in str(raised.value)
    assert evaluation_cases(task, intact + truncated, skip_broken_cases="true") == intact
    assert evaluation_cases(task, truncated, check_data="false") == truncated
