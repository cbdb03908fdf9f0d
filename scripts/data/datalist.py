"""Read a Medical Segmentation Decathlon task folder through its ``dataset.json``.

The folder layout is free: ``dataset.json`` lists image/label pairs relative to the folder, so the original
download (``imagesTr/``, ``labelsTr/``) and copies with other folder names load the same way.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DATASET_JSON = "dataset.json"
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")


def read_dataset_json(dataset_dir: str | Path, option: str = "--dataset_dir") -> dict[str, Any]:
    """Return the parsed ``dataset.json`` of a task folder; ``option`` is the setting that gave the folder.

    Raises:
        FileNotFoundError: when the folder or its ``dataset.json`` does not exist; the message says how to get the
            data.
        ValueError: when ``dataset.json`` is not valid JSON or lacks the ``training`` list or the ``labels`` map.
    """
    folder = Path(dataset_dir).expanduser()
    if folder.is_file():
        raise FileNotFoundError(
            f"{option} must be a folder, but {folder} is a file. Pass the folder that contains it"
            + (
                f": {option} {folder.parent}."
                if folder.name == DATASET_JSON
                else " (the task folder with dataset.json)."
            )
        )
    if not folder.is_dir():
        # A mistyped folder name is a common cause, so name the folders that do exist beside it.
        nearby = ""
        if folder.parent.is_dir():
            siblings = sorted(entry.name for entry in folder.parent.iterdir() if entry.is_dir())
            if siblings:
                listing = ", ".join(siblings[:8]) + (", ..." if len(siblings) > 8 else "")
                nearby = f" {folder.parent} contains: {listing}."
        raise FileNotFoundError(
            f"dataset folder {folder} not found.{nearby} Check {option}, or download the task there with "
            f"`python -m scripts.data download --dataset_dir {folder}`."
        )
    path = folder / DATASET_JSON
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a Decathlon task folder contains dataset.json listing its cases. Pass the task's "
            f"top folder (the one with dataset.json) as {option}."
        )
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); restore it from the original download.") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} must contain a JSON object, got {type(content).__name__}.")
    training = content.get("training")
    if not isinstance(training, list) or not training:
        raise ValueError(f"{path} has no non-empty 'training' list of image/label pairs.")
    labels = content.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{path} has no 'labels' map from label values to class names.")
    return content


def label_names(dataset_dir: str | Path) -> list[str]:
    """Return the class names in label order (index 0 is the background)."""
    path = Path(dataset_dir).expanduser() / DATASET_JSON
    labels = read_dataset_json(dataset_dir)["labels"]
    try:
        values = sorted(int(key) for key in labels)
    except ValueError as error:
        raise ValueError(f"{path}: label values must be integers, got {sorted(labels)}.") from error
    if values != list(range(len(values))):
        raise ValueError(f"{path}: label values must be 0, 1, ..., N-1 without gaps, got {values}.")
    return [str(labels[str(value)]) for value in values]


def load_datalist(
    dataset_dir: str | Path, check_files: bool = True, option: str = "--dataset_dir"
) -> list[dict[str, str]]:
    """Return the training cases as ``{"case_id", "image", "label"}`` dicts with absolute paths.

    Args:
        dataset_dir: the task folder containing ``dataset.json``.
        check_files: raise when a listed image or label file does not exist.
        option: the setting that gave ``dataset_dir``, named in the error messages.

    Raises:
        FileNotFoundError: for a missing folder, ``dataset.json`` or (with ``check_files``) a listed file.
        ValueError: for a malformed entry or a case id listed twice.
    """
    folder = Path(dataset_dir).expanduser().resolve()
    content = read_dataset_json(folder, option)
    cases = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(content["training"]):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("image"), str)
            or not isinstance(entry.get("label"), str)
        ):
            raise ValueError(
                f"{folder / DATASET_JSON}: training entry {index} must be an object with 'image' and 'label' "
                f"paths, got {entry!r}."
            )
        image = (folder / entry["image"]).resolve()
        label = (folder / entry["label"]).resolve()
        case_id = case_id_from_path(image)
        if case_id in seen:
            raise ValueError(
                f"{folder / DATASET_JSON}: case {case_id!r} is listed twice (entries {seen[case_id]} and {index})."
            )
        seen[case_id] = index
        if check_files:
            for kind, path in (("image", image), ("label", label)):
                if not path.is_file():
                    raise FileNotFoundError(
                        f"{kind} file {path} of case {case_id!r} (listed in {folder / DATASET_JSON}) not found. "
                        "Restore the file or remove the case from dataset.json."
                    )
        cases.append({"case_id": case_id, "image": str(image), "label": str(label)})
    return cases


def case_id_from_path(path: str | Path) -> str:
    """Return the case id of an image path: its file name without the image extension."""
    name = Path(path).name
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def inference_datalist(input_dir: str | Path | None = None, datalist: str | Path | None = None) -> list[dict[str, str]]:
    """Return ``[{"image": path}, ...]`` for inference, from a datalist file or else every image in a folder.

    A datalist is a JSON list of ``{"image": path}`` objects or of paths, or a Decathlon ``dataset.json`` (its
    ``test`` list, or the images of ``training`` when there is no test list). Relative paths are relative to the
    datalist's folder. A folder contributes every file ending in .nii.gz, .nii, .nrrd, .mha or .mhd.

    Raises:
        FileNotFoundError: when the datalist, the folder or a listed image does not exist, or the folder has no
            image.
        ValueError: for a malformed datalist.
    """
    if datalist:
        path = Path(datalist).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"datalist {path} not found; pass an existing JSON file or use --input_dir.")
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"datalist {path} is not valid JSON ({error}).") from error
        if isinstance(content, dict):
            content = content.get("test") or content.get("training")
        if not isinstance(content, list) or not content:
            raise ValueError(
                f'datalist {path} must be a non-empty JSON list of {{"image": path}} objects, or a Decathlon '
                "dataset.json with a 'test' or 'training' list."
            )
        images = []
        for index, entry in enumerate(content):
            image = entry.get("image") if isinstance(entry, dict) else entry
            if not isinstance(image, str):
                raise ValueError(f"datalist {path}: entry {index} has no image path: {entry!r}.")
            images.append((path.parent / image).resolve())
    else:
        if input_dir is None:
            raise ValueError("pass --input_dir (a folder of images) or --datalist (a JSON list of images).")
        folder = Path(input_dir).expanduser().resolve()
        if folder.is_file():
            raise FileNotFoundError(
                f"--input_dir must be a folder of images, but {folder} is a file; pass its folder, or pass a JSON "
                "list of images as --datalist."
            )
        if not folder.is_dir():
            raise FileNotFoundError(f"input folder {folder} not found; pass --input_dir with a folder of images.")
        images = sorted(item for item in folder.iterdir() if item.name.endswith(IMAGE_SUFFIXES))
        if not images:
            raise FileNotFoundError(
                f"no image (*.nii.gz, *.nii, *.nrrd, *.mha, *.mhd) found in {folder}; pass the folder of the images."
            )
    for image in images:
        if not image.is_file():
            raise FileNotFoundError(f"image {image} not found; fix the datalist or restore the file.")
    _check_distinct_names(images)
    return [{"image": str(image)} for image in images]


def warn_of_existing_outputs(
    cases: list[dict[str, str]], output_dir: str | Path, postfix: str = "seg", suffix: str = ".nii.gz"
) -> list[Path]:
    """Log a warning naming the segmentations in ``output_dir`` that an inference of ``cases`` will replace.

    The inference config saves ``<case>_<postfix><suffix>`` for each image, over any file of that name.

    Returns:
        the files that will be replaced.
    """
    folder = Path(output_dir).expanduser().resolve()
    outputs = [folder / f"{case_id_from_path(case['image'])}_{postfix}{suffix}" for case in cases]
    existing = [path for path in outputs if path.is_file()]
    if existing:
        names = ", ".join(path.name for path in existing[:5]) + (", ..." if len(existing) > 5 else "")
        logger.warning(
            "%d of the %d segmentations to write already exist in %s and will be replaced (%s). Pass another "
            "--output_dir to keep them.",
            len(existing),
            len(outputs),
            folder,
            names,
        )
    return existing


def _check_distinct_names(images: list[Path]) -> None:
    """Raise ``ValueError`` when two images share a name without suffix, which would write one output file.

    The segmentation of ``case.nii`` and of ``case.nii.gz``, or of two ``case.nii.gz`` in different folders, would
    both be saved as ``case_seg.nii.gz``, and the second would overwrite the first.
    """
    by_name: dict[str, list[Path]] = {}
    for image in images:
        suffix = next((suffix for suffix in IMAGE_SUFFIXES if image.name.endswith(suffix)), image.suffix)
        by_name.setdefault(image.name[: len(image.name) - len(suffix)], []).append(image)
    shared = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if shared:
        name, paths = next(iter(shared.items()))
        raise ValueError(
            f"{len(paths)} images share the name {name!r} ({', '.join(map(str, paths))}), so their segmentations "
            f"would overwrite each other in one file {name}_seg.nii.gz. Rename or remove all but one"
            + (f"; {len(shared) - 1} more names are shared too." if len(shared) > 1 else ".")
        )
