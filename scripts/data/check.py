"""Check a Decathlon task folder before training: every listed case, and the files that dataset.json leaves out.

The check reads each image and label with the libraries behind MONAI's ``NibabelReader`` and ``ITKReader``: NIfTI
with nibabel, NRRD and MetaImage with ITK. It reads headers first and voxel data second, and collects every problem
instead of stopping at the first:

- a listed file that is missing, unreadable (truncated, corrupt) or not an image format the bundle reads;
- an image and label whose spatial shapes or affines differ;
- label values that are not integers, or that dataset.json does not declare in its ``labels`` map;
- NaN or inf intensities, and images without content (no voxels, or every voxel the same);
- an image file without its label, or a label file without its image, in the folders of the listed cases.

``python -m scripts.data check`` prints the report; training runs the same check on the cases of its split (the
config keys ``check_data`` and ``skip_broken_cases``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write_text
from ..options import count
from .datalist import DATASET_JSON, IMAGE_SUFFIXES, case_id_from_path, read_dataset_json

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".nrrd", ".mha", ".mhd")
# The tolerance of scripts.transforms.checks.CheckImageLabelPaird: millimetres for NIfTI, for rounding in headers.
AFFINE_ATOL = 1e-3
# Values named in one message; the rest are counted.
MAX_LISTED_VALUES = 5
# The hint that ends a report with problems.
FIX_HINT = (
    "Fix or replace the files named above, or remove their cases from dataset.json. To run without the broken "
    "cases, set skip_broken_cases to true (--skip_broken_cases true)."
)


@dataclass(frozen=True)
class Problem:
    """One problem of the dataset: the file it is in, what is wrong, and the case of dataset.json it belongs to."""

    path: str
    message: str
    case_id: str | None = None

    def __str__(self) -> str:
        case = f" (case {self.case_id})" if self.case_id else ""
        return f"{self.path}{case}: {self.message}"


@dataclass
class DataCheckReport:
    """The result of :func:`check_dataset`: every problem found, in case order, and how long the check took."""

    dataset_dir: str
    num_cases: int
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def broken_cases(self) -> list[str]:
        """Ids of the listed cases with at least one problem, in report order."""
        return list(dict.fromkeys(problem.case_id for problem in self.problems if problem.case_id))

    def summary(self) -> str:
        if self.ok:
            return f"data check of {self.dataset_dir}: {self.num_cases} cases, no problems ({self.seconds:.1f} s)."
        unpaired = sum(1 for problem in self.problems if problem.case_id is None)
        parts = [count(len(self.problems), "problem"), f"{len(self.broken_cases)} of {self.num_cases} cases broken"]
        if unpaired:
            parts.append(f"{unpaired} outside the listed cases")
        return f"data check of {self.dataset_dir}: {', '.join(parts)} ({self.seconds:.1f} s)."

    def text(self, hint: bool = True) -> str:
        """Return the report as printed: one line per problem, the fix (unless ``hint`` is off), the summary last."""
        lines = [str(problem) for problem in self.problems]
        if self.problems and hint:
            lines.append(FIX_HINT)
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset_dir": self.dataset_dir,
            "num_cases": self.num_cases,
            "broken_cases": self.broken_cases,
            "problems": [asdict(problem) for problem in self.problems],
        }


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    affine: np.ndarray  # 4 x 4, RAS+ world coordinates in millimetres, as nibabel reports them


def check_dataset(
    dataset_dir: str | Path,
    case_ids: Iterable[str] | None = None,
    cache_path: str | Path | None = None,
    num_threads: int | None = None,
) -> DataCheckReport:
    """Check the cases listed in a task folder's ``dataset.json`` and the files around them.

    Args:
        dataset_dir: the Decathlon task folder containing ``dataset.json``.
        case_ids: check only these listed cases (training checks the cases of its split); ``None`` checks all.
            The search for unpaired files always covers the whole image and label folders.
        cache_path: a JSON file that stores the result of each case under the size and modification time of its
            two files. An unchanged case is not read again. ``None`` reads every case.
        num_threads: threads that read cases in parallel; default ``min(8, os.cpu_count())``. Decompression releases
            Python's global interpreter lock, so threads help on large volumes.

    Raises:
        FileNotFoundError, ValueError: when the folder or ``dataset.json`` is missing or not valid JSON, as
            :func:`scripts.data.read_dataset_json` raises; without a readable ``dataset.json`` there are no cases.
    """
    start = time.perf_counter()
    folder = Path(dataset_dir).expanduser().resolve()
    content = read_dataset_json(folder)
    problems: list[Problem] = []

    label_values, label_problems = _declared_labels(folder, content)
    problems += label_problems
    cases, entry_problems = _listed_cases(folder, content)
    problems += entry_problems
    if case_ids is not None:
        selected = set(case_ids)
        cases = [case for case in cases if case["case_id"] in selected]

    cache = _CaseCache(cache_path, label_values)
    threads = num_threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(lambda case: cache.get_or_check(case, label_values), cases))
    cache.save()
    for case_problems in results:
        problems += case_problems

    problems += _unpaired_files(folder, content)
    return DataCheckReport(str(folder), len(cases), problems, time.perf_counter() - start)


def check_case(case: Mapping[str, str], label_values: Sequence[int]) -> list[Problem]:
    """Return the problems of one case ``{"case_id", "image", "label"}`` (absolute paths)."""
    case_id = case["case_id"]
    image_path, label_path = Path(case["image"]), Path(case["label"])
    problems = []
    headers: dict[str, _Header] = {}
    for kind, path in (("image", image_path), ("label", label_path)):
        header, problem = _read_header(path, kind)
        if problem:
            problems.append(Problem(str(path), problem, case_id))
        else:
            headers[kind] = header

    if len(headers) == 2:
        problems += [Problem(str(label_path), message, case_id) for message in _compare_geometry(**headers)]
    if "image" in headers:
        problems += [Problem(str(image_path), message, case_id) for message in _check_image_data(image_path)]
    if "label" in headers:
        problems += [
            Problem(str(label_path), message, case_id) for message in _check_label_data(label_path, label_values)
        ]
    return problems


# Reading.


def _read_header(path: Path, kind: str) -> tuple[_Header | None, str | None]:
    """Return the header of an image file, or a message saying why it cannot be read."""
    if not path.is_file():
        return None, f"{kind} file not found; restore it or remove the case from {DATASET_JSON}"
    if path.stat().st_size == 0:
        return None, f"{kind} file is empty (0 bytes); restore it from the original data"
    if not path.name.endswith(NIFTI_SUFFIXES + ITK_SUFFIXES):
        return None, (
            f"{kind} file is not in a format the bundle reads: use NIfTI (.nii, .nii.gz), NRRD (.nrrd) or "
            "MetaImage (.mha, .mhd)"
        )
    try:
        header = _nifti_header(path) if path.name.endswith(NIFTI_SUFFIXES) else _itk_header(path)
    # nibabel and ITK raise many types for a damaged file (ImageFileError, EOFError, zlib.error, RuntimeError...).
    except Exception as error:  # noqa: BLE001
        return None, f"{kind} file cannot be read as {_format_name(path)} ({_short(error)}); restore it"
    return header, None


def _read_array(path: Path) -> np.ndarray:
    if path.name.endswith(NIFTI_SUFFIXES):
        import nibabel as nib

        return np.asanyarray(nib.load(str(path)).dataobj)
    import itk

    # ITK returns (z, y, x); reverse to nibabel's (x, y, z) so that shapes compare across formats.
    return itk.array_from_image(itk.imread(str(path))).transpose()


def _nifti_header(path: Path) -> _Header:
    import nibabel as nib

    image = nib.load(str(path))
    return _Header(tuple(int(size) for size in image.shape), np.asarray(image.affine, dtype=np.float64))


def _itk_header(path: Path) -> _Header:
    import itk

    image_io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if image_io is None:
        raise ValueError("ITK has no reader that accepts this file")
    image_io.SetFileName(str(path))
    image_io.ReadImageInformation()
    dimensions = image_io.GetNumberOfDimensions()
    shape = tuple(int(image_io.GetDimensions(axis)) for axis in range(dimensions))
    # ITK reports LPS+ coordinates; flip x and y to compare with NIfTI's RAS+ affines.
    affine = np.eye(4)
    spatial = min(dimensions, 3)
    for axis in range(spatial):
        direction = np.asarray(image_io.GetDirection(axis), dtype=np.float64)[:spatial]
        affine[:spatial, axis] = direction * image_io.GetSpacing(axis)
        affine[axis, 3] = image_io.GetOrigin(axis)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    return _Header(shape, affine)


# Checks.


def _compare_geometry(image: _Header, label: _Header) -> list[str]:
    image_shape, label_shape = image.shape[:3], label.shape[:3]
    problems = []
    if len(image.shape) < 3:
        return [f"the image is {len(image.shape)}D (shape {image.shape}); the bundle trains on 3D volumes"]
    extra_label_axes = label.shape[3:]
    if any(size != 1 for size in extra_label_axes):
        problems.append(
            f"label has shape {label.shape}: a label map holds one class value per voxel, not {extra_label_axes} "
            "channels; save it as a single 3D volume"
        )
    if image_shape != label_shape:
        problems.append(
            f"label has spatial shape {label_shape} but its image has {image_shape}; the label must be drawn on "
            "the image's voxel grid (resample it onto the image, or pair the case with its own label)"
        )
        return problems
    difference = float(np.abs(image.affine - label.affine).max())
    if difference > AFFINE_ATOL:
        problems.append(
            f"label affine differs from its image's by up to {difference:.4g} mm (tolerance {AFFINE_ATOL}); the "
            "label must share the image's geometry: copy the image's header into the label or resample the label"
        )
    return problems


def _read_data(path: Path, kind: str) -> tuple[np.ndarray | None, str | None]:
    """Return the voxel data of an image file, or a message saying why there are none."""
    try:
        data = _read_array(path)
    # As in _read_header: a file cut after its header fails here, with the reader's own exception type.
    except Exception as error:  # noqa: BLE001
        return None, f"{kind} data cannot be read: the file is truncated or corrupt ({_short(error)}); restore it"
    if data.size == 0:
        return None, f"{kind} has no voxels (shape {data.shape}); restore it or remove the case"
    return data, None


def _check_image_data(path: Path) -> list[str]:
    data, problem = _read_data(path, "image")
    if problem:
        return [problem]
    problems = []
    if np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.complexfloating):
        finite = np.isfinite(data)
        if not finite.all():
            nan = int(np.isnan(data).sum())
            inf = int(data.size - finite.sum() - nan)
            problems.append(
                f"image has {nan} NaN and {inf} inf voxels of {data.size}; intensity normalisation would turn the "
                "whole volume into NaN. Replace them (e.g. by the minimum intensity) or remove the case"
            )
            data = data[finite]
            if data.size == 0:
                return problems
    low, high = data.min(), data.max()
    if low == high:
        problems.append(f"image is empty: every voxel is {low.item()!r}; restore it or remove the case")
    return problems


def _check_label_data(path: Path, label_values: Sequence[int]) -> list[str]:
    data, problem = _read_data(path, "label")
    if problem:
        return [problem]
    values = _unique_values(data)
    problems = []
    if not np.issubdtype(values.dtype, np.integer):
        integral = np.isfinite(values) & (values == np.round(values))
        if not integral.all():
            bad = values[~integral]
            problems.append(
                f"label has non-integer values {_listed(bad)}; a label map contains class indices. Round or "
                "re-export it with nearest-neighbour interpolation"
            )
        values = values[integral]
    declared = set(label_values)
    undeclared = [value for value in values.tolist() if int(value) not in declared]
    if undeclared:
        problems.append(
            f"label values {_listed(np.asarray(undeclared))} are not declared in {DATASET_JSON} "
            f"(labels {sorted(declared)}); fix the label, or declare the class in the 'labels' map"
        )
    return problems


def _unique_values(data: np.ndarray) -> np.ndarray:
    # Counting is much faster than sorting for the small non-negative integers of label maps.
    if np.issubdtype(data.dtype, np.integer) and data.size and 0 <= data.min() and data.max() < 65536:
        return np.flatnonzero(np.bincount(data.ravel().astype(np.intp)))
    return np.unique(data)


# dataset.json.


def _declared_labels(folder: Path, content: Mapping[str, Any]) -> tuple[list[int], list[Problem]]:
    path = str(folder / DATASET_JSON)
    values, problems = [], []
    for key in content["labels"]:
        try:
            values.append(int(key))
        except ValueError:
            problems.append(Problem(path, f"label value {key!r} in 'labels' is not an integer; use 0, 1, ..., N-1"))
    values.sort()
    if values and values != list(range(len(values))):
        problems.append(Problem(path, f"label values must be 0, 1, ..., N-1 without gaps, got {values}"))
    return values, problems


def _listed_cases(folder: Path, content: Mapping[str, Any]) -> tuple[list[dict[str, str]], list[Problem]]:
    path = str(folder / DATASET_JSON)
    cases, problems, seen = [], [], {}
    for index, entry in enumerate(content["training"]):
        if not isinstance(entry, Mapping) or not all(isinstance(entry.get(key), str) for key in ("image", "label")):
            problems.append(
                Problem(path, f"training entry {index} must be an object with 'image' and 'label' paths: {entry!r}")
            )
            continue
        image = (folder / entry["image"]).resolve()
        case_id = case_id_from_path(image)
        if case_id in seen:
            problems.append(Problem(path, f"case {case_id!r} is listed twice (entries {seen[case_id]} and {index})"))
            continue
        seen[case_id] = index
        cases.append({"case_id": case_id, "image": str(image), "label": str((folder / entry["label"]).resolve())})
    return cases, problems


def _unpaired_files(folder: Path, content: Mapping[str, Any]) -> list[Problem]:
    """Report image files without a label and label files without an image in the folders of the listed cases.

    The image folders are those of the listed images, the label folders those of the listed labels, and files pair
    by name, as in the Decathlon layout. Files that dataset.json lists (as training or test cases) are not reported,
    and neither are hidden files (macOS puts ``._<name>`` copies into the Decathlon archives).
    """
    listed: set[Path] = set()
    image_folders: set[Path] = set()
    label_folders: set[Path] = set()
    for entry in content["training"]:
        if isinstance(entry, Mapping):
            for key, folders in (("image", image_folders), ("label", label_folders)):
                if isinstance(entry.get(key), str):
                    path = (folder / entry[key]).resolve()
                    listed.add(path)
                    folders.add(path.parent)
    for entry in content.get("test") or []:
        image = entry.get("image") if isinstance(entry, Mapping) else entry
        if isinstance(image, str):
            listed.add((folder / image).resolve())
    # A flat layout (images and labels in one folder) gives no way to pair files by name.
    shared = image_folders & label_folders
    image_folders, label_folders = image_folders - shared, label_folders - shared

    if not image_folders or not label_folders:
        return []

    image_names = _image_files(image_folders)
    label_names = _image_files(label_folders)
    problems = []
    for files, partners, partner_folders, kind, partner, fix in (
        (image_names, label_names, label_folders, "image", "label", "add its label and list the case"),
        (label_names, image_names, image_folders, "label", "image", "restore its image and list the case"),
    ):
        for name, paths in sorted(files.items()):
            for path in paths:
                if path in listed or name in partners:
                    continue
                problems.append(
                    Problem(
                        str(path),
                        f"{kind} without its {partner}: no {name} in {_folders(partner_folders)}, and {DATASET_JSON} "
                        f"does not list it; {fix}, or move the file out of the folder",
                    )
                )
    return problems


def _image_files(folders: Iterable[Path]) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for directory in sorted(folders):
        if not directory.is_dir():
            continue
        for path in sorted(directory.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.name.endswith(IMAGE_SUFFIXES):
                files.setdefault(path.name, []).append(path)
    return files


# Cache.


class _CaseCache:
    """Problems per case, keyed by both files' size and modification time and the declared labels."""

    def __init__(self, path: str | Path | None, label_values: Sequence[int]) -> None:
        self.path = Path(path) if path else None
        self.labels = list(label_values)
        self.entries: dict[str, Any] = {}
        self.changed = False
        if self.path is not None and self.path.is_file():
            try:
                content = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                content = {}
            if isinstance(content, dict) and content.get("labels") == self.labels:
                self.entries = content.get("cases", {})

    def get_or_check(self, case: Mapping[str, str], label_values: Sequence[int]) -> list[Problem]:
        key = self._key(case)
        if key is not None and key in self.entries:
            return [Problem(**problem) for problem in self.entries[key]]
        problems = check_case(case, label_values)
        if key is not None:
            self.entries[key] = [asdict(problem) for problem in problems]
            self.changed = True
        return problems

    def save(self) -> None:
        if self.path is None or not self.changed:
            return
        atomic_write_text(self.path, json.dumps({"labels": self.labels, "cases": self.entries}))

    def _key(self, case: Mapping[str, str]) -> str | None:
        if self.path is None:
            return None
        parts = []
        for kind in ("image", "label"):
            try:
                stat = os.stat(case[kind])
            except OSError:
                return None  # a missing file is checked every time
            parts.append(f"{case[kind]}:{stat.st_size}:{stat.st_mtime_ns}")
        return "|".join(parts)


# Formatting.


def _format_name(path: Path) -> str:
    return "NIfTI" if path.name.endswith(NIFTI_SUFFIXES) else f"{path.suffix[1:].upper()} with ITK"


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _listed(values: np.ndarray) -> str:
    first = [_plain_number(value) for value in values[:MAX_LISTED_VALUES].tolist()]
    more = len(values) - len(first)
    return f"{first}" + (f" and {more} more" if more > 0 else "")


def _plain_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _folders(folders: Iterable[Path]) -> str:
    return ", ".join(f"{path}/" for path in sorted(folders))
