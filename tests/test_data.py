"""Reading Decathlon task folders, the fold split, and the preprocessing of real cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from scripts import BUNDLE_ROOT
from scripts.data import (
    fold_split,
    inference_datalist,
    label_names,
    load_datalist,
    prepare_split,
    warn_of_existing_outputs,
)
from scripts.data.datalist import case_id_from_path

NUM_CASES = 208


def copy_task(dataset_dir: Path, target: Path, cases: int = 3, layout: tuple[str, str] = ("imagesTr", "labelsTr")):
    """Copy the first ``cases`` real cases into ``target`` with the given folder layout and a new dataset.json."""
    content = json.loads((dataset_dir / "dataset.json").read_text())
    images, labels = target / layout[0], target / layout[1]
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    entries = []
    for entry in content["training"][:cases]:
        image, label = dataset_dir / entry["image"], dataset_dir / entry["label"]
        shutil.copy(image, images / image.name)
        shutil.copy(label, labels / label.name)
        entries.append({"image": f"./{layout[0]}/{image.name}", "label": f"./{layout[1]}/{label.name}"})
    content["training"] = entries
    content["numTraining"] = len(entries)
    (target / "dataset.json").write_text(json.dumps(content, indent=1))
    return target


def test_datalist_reads_every_real_case(dataset_dir):
    cases = load_datalist(dataset_dir)

    assert len(cases) == NUM_CASES
    assert cases[0]["case_id"] == "hippocampus_001"
    assert all(Path(case["image"]).is_file() and Path(case["label"]).is_file() for case in cases)
    assert len({case["case_id"] for case in cases}) == NUM_CASES


def test_label_names_in_label_order(dataset_dir):
    assert label_names(dataset_dir) == ["background", "Anterior", "Posterior"]


def test_decathlon_layout_loads_the_same(dataset_dir, tmp_path):
    task = copy_task(dataset_dir, tmp_path / "Task04_Hippocampus")

    cases = load_datalist(task)

    assert [case["case_id"] for case in cases] == ["hippocampus_001", "hippocampus_003", "hippocampus_004"]
    assert all("/imagesTr/" in case["image"] and "/labelsTr/" in case["label"] for case in cases)


def test_missing_dataset_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m scripts.data download.*--dataset_dir"):
        load_datalist(tmp_path / "nowhere")


def test_missing_dataset_folder_names_the_folders_beside_it(tmp_path):
    (tmp_path / "msd_hippocampus").mkdir()
    with pytest.raises(FileNotFoundError, match=r"contains: msd_hippocampus\. Check --dataset_dir"):
        load_datalist(tmp_path / "msd_hipocampus")


def test_dataset_json_given_as_folder_names_its_folder(tmp_path):
    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(
        FileNotFoundError, match=rf"but {tmp_path}/dataset\.json is a file.*: --dataset_dir {tmp_path}\.$"
    ):
        load_datalist(tmp_path / "dataset.json")


def test_missing_dataset_json_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset\.json not found"):
        load_datalist(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must contain a JSON object"),
        ('{"labels": {"0": "background"}}', "no non-empty 'training' list"),
        ('{"training": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}', "no 'labels' map"),
        ('{"labels": {"0": "bg"}, "training": [{"image": "a.nii.gz"}]}', "entry 0 must be an object"),
    ],
)
def test_malformed_dataset_json_names_the_problem(tmp_path, content, message):
    (tmp_path / "dataset.json").write_text(content)

    with pytest.raises(ValueError, match=message):
        load_datalist(tmp_path)


def test_listed_image_that_does_not_exist_names_it(dataset_dir, tmp_path):
    task = copy_task(dataset_dir, tmp_path / "task")
    (task / "imagesTr" / "hippocampus_003.nii.gz").unlink()

    with pytest.raises(FileNotFoundError, match=r"image file .*hippocampus_003\.nii\.gz of case 'hippocampus_003'"):
        load_datalist(task)


def test_case_listed_twice_raises(dataset_dir, tmp_path):
    task = copy_task(dataset_dir, tmp_path / "task")
    content = json.loads((task / "dataset.json").read_text())
    content["training"].append(content["training"][0])
    (task / "dataset.json").write_text(json.dumps(content))

    with pytest.raises(ValueError, match="'hippocampus_001' is listed twice"):
        load_datalist(task)


def test_label_values_must_be_contiguous(dataset_dir, tmp_path):
    task = copy_task(dataset_dir, tmp_path / "task")
    content = json.loads((task / "dataset.json").read_text())
    content["labels"] = {"0": "background", "2": "Posterior"}
    (task / "dataset.json").write_text(json.dumps(content))

    with pytest.raises(ValueError, match=r"without gaps, got \[0, 2\]"):
        label_names(task)


def test_case_id_strips_image_extensions():
    assert case_id_from_path("/data/imagesTr/hippocampus_001.nii.gz") == "hippocampus_001"
    assert case_id_from_path("scan.nrrd") == "scan"
    assert case_id_from_path("scan.mha") == "scan"


def test_split_is_deterministic_and_partitions_cases():
    cases = [{"case_id": f"case_{index:03d}"} for index in range(23)]
    folds = [fold_split(cases, fold, num_folds=5, seed=0) for fold in range(5)]

    validation_ids = [case["case_id"] for fold in folds for case in fold["validation"]]
    assert sorted(validation_ids) == sorted(case["case_id"] for case in cases)
    assert [len(fold["validation"]) for fold in folds] == [5, 5, 5, 4, 4]
    for fold in folds:
        assert not {case["case_id"] for case in fold["validation"]} & {case["case_id"] for case in fold["training"]}
    assert fold_split(list(reversed(cases)), 2, seed=0) == fold_split(cases, 2, seed=0)
    assert fold_split(cases, 2, seed=1) != fold_split(cases, 2, seed=0)


def test_split_of_real_data_is_stable(dataset_dir):
    # The split depends only on SHA-256 of "seed:case_id": these ids must not change across machines or versions.
    split = fold_split(load_datalist(dataset_dir), fold=0, num_folds=5, seed=0)

    assert len(split["validation"]) == 42
    assert len(split["training"]) == 166
    assert [case["case_id"] for case in split["validation"][:3]] == EXPECTED_FOLD_0_START


EXPECTED_FOLD_0_START = ["hippocampus_019", "hippocampus_094", "hippocampus_327"]


@pytest.mark.parametrize(
    ("fold", "num_folds", "message"),
    [
        (5, 5, "fold must lie"),
        (-1, 5, "fold must"),
        (0, 1, "num_folds must be an integer of at least 2, got 1"),
        (2.5, 5, "fold must be an integer, got 2.5"),
        ("abc", 5, "fold must be an integer, got 'abc'"),
    ],
)
def test_split_rejects_bad_folds(fold, num_folds, message):
    cases = [{"case_id": f"case_{index}"} for index in range(10)]
    with pytest.raises(ValueError, match=message):
        fold_split(cases, fold, num_folds=num_folds)


def test_split_rejects_text_seed():
    cases = [{"case_id": f"case_{index}"} for index in range(10)]
    with pytest.raises(ValueError, match="seed must be an integer, got 'abc'"):
        fold_split(cases, 0, seed="abc")


def test_prepare_split_writes_split_json(dataset_dir, tmp_path):
    split = prepare_split(dataset_dir, fold=1, output_dir=tmp_path, max_cases=5)
    written = json.loads((tmp_path / "split.json").read_text())

    assert written == json.loads(json.dumps(split))
    assert len(written["training"]) == 5
    assert written["dataset"]["fold"] == 1
    assert written["dataset"]["num_validation"] == 5


@pytest.mark.parametrize("max_cases", [0, "null", 2.5, True])
def test_prepare_split_rejects_bad_max_cases(dataset_dir, tmp_path, max_cases):
    # "null" is what a command-line --max_cases null arrives as; the message points to None instead.
    with pytest.raises(ValueError, match=f"max_cases .*got {max_cases!r}.*--max_cases None"):
        prepare_split(dataset_dir, fold=0, output_dir=tmp_path, max_cases=max_cases, check_data=False)


def test_inference_datalist_from_folder_and_file(dataset_dir, tmp_path):
    task = copy_task(dataset_dir, tmp_path / "task", cases=2)
    (tmp_path / "list.json").write_text(json.dumps([{"image": "task/imagesTr/hippocampus_001.nii.gz"}]))

    from_folder = inference_datalist(input_dir=task / "imagesTr")
    from_file = inference_datalist(datalist=tmp_path / "list.json")
    from_dataset_json = inference_datalist(datalist=task / "dataset.json")

    assert [Path(item["image"]).name for item in from_folder] == ["hippocampus_001.nii.gz", "hippocampus_003.nii.gz"]
    assert from_file == from_folder[:1]
    assert from_dataset_json == from_folder


def test_inference_datalist_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="input folder .* not found"):
        inference_datalist(input_dir=tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no image"):
        inference_datalist(input_dir=tmp_path)
    (tmp_path / "list.json").write_text(json.dumps([{"image": "missing.nii.gz"}]))
    with pytest.raises(FileNotFoundError, match="missing.nii.gz not found"):
        inference_datalist(datalist=tmp_path / "list.json")
    with pytest.raises(FileNotFoundError, match="--input_dir must be a folder of images, but .*list.json is a file"):
        inference_datalist(input_dir=tmp_path / "list.json")


def test_inference_datalist_rejects_shared_output_names(tmp_path):
    (tmp_path / "case_1.nii").write_bytes(b"")
    (tmp_path / "case_1.nii.gz").write_bytes(b"")
    (tmp_path / "case_2.nii.gz").write_bytes(b"")

    with pytest.raises(ValueError, match=r"2 images share the name 'case_1' .*case_1_seg.nii.gz. Rename or remove"):
        inference_datalist(input_dir=tmp_path)


def preprocessing(dataset_dir: Path, reader: str = "NibabelReader"):
    parser = ConfigParser()
    parser.read_config(f"{BUNDLE_ROOT}/configs/train.yaml")
    parser["dataset_dir"] = str(dataset_dir)
    parser["image_reader"] = reader
    from monai.transforms import Compose

    return Compose(parser.get_parsed_content("preprocessing"))


def test_preprocessing_of_real_cases(dataset_dir):
    transform = preprocessing(dataset_dir)
    cases = load_datalist(dataset_dir)[:3]

    for case in cases:
        data = transform(dict(case))
        raw = nib.load(case["label"])
        image, label = data["image"], data["label"]
        assert image.shape[0] == 1 and label.shape[0] == 1
        assert tuple(image.shape[1:]) == raw.shape
        assert image.dtype == torch.float32
        assert abs(float(image.mean())) < 1e-3
        assert abs(float(image.std()) - 1.0) < 1e-2
        assert set(torch.unique(label).tolist()) == {0.0, 1.0, 2.0}
        np.testing.assert_array_equal(label[0].numpy(), np.asarray(raw.dataobj))


def test_itk_reader_gives_the_same_volumes(dataset_dir):
    case = load_datalist(dataset_dir)[0]

    nibabel_data = preprocessing(dataset_dir, "NibabelReader")(dict(case))
    itk_data = preprocessing(dataset_dir, "ITKReader")(dict(case))

    torch.testing.assert_close(itk_data["image"].as_tensor(), nibabel_data["image"].as_tensor(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(itk_data["label"].as_tensor(), nibabel_data["label"].as_tensor())


def test_image_label_shape_mismatch_names_both_files(dataset_dir, tmp_path):
    task = copy_task(dataset_dir, tmp_path / "task", cases=2)
    # Swap in the label of another case, which has another shape.
    shutil.copy(task / "labelsTr" / "hippocampus_003.nii.gz", task / "labelsTr" / "hippocampus_001.nii.gz")
    case = load_datalist(task)[0]

    with pytest.raises(RuntimeError) as raised:
        preprocessing(task)(dict(case))

    # MONAI wraps a transform's error in "applying transform ..."; the cause carries the message.
    cause = raised.value.__cause__
    assert isinstance(cause, ValueError)
    assert "hippocampus_001.nii.gz has spatial shape (35, 51, 35)" in str(cause)
    assert "has (34, 52, 35)" in str(cause)


def test_existing_segmentations_are_named_before_inference(tmp_path, caplog):
    cases = [{"image": str(tmp_path / "in" / name)} for name in ("a.nii.gz", "b.nrrd", "c.nii")]
    output = tmp_path / "out"
    output.mkdir()
    (output / "a_seg.nii.gz").write_bytes(b"old")
    (output / "b_seg.nii.gz").write_bytes(b"old")

    with caplog.at_level("WARNING", logger="scripts.data.datalist"):
        replaced = warn_of_existing_outputs(cases, output)

    assert [path.name for path in replaced] == ["a_seg.nii.gz", "b_seg.nii.gz"]
    assert "2 of the 3 segmentations to write already exist" in caplog.text
    assert warn_of_existing_outputs(cases, tmp_path / "empty") == []
