"""Data: reading a Decathlon task folder, checking its cases, the cross-validation split, and downloading the task."""

from .check import DataCheckReport, check_dataset
from .datalist import inference_datalist, label_names, load_datalist, read_dataset_json, warn_of_existing_outputs
from .split import evaluation_cases, fold_split, prepare_split

__all__ = [
    "DataCheckReport",
    "check_dataset",
    "evaluation_cases",
    "fold_split",
    "inference_datalist",
    "label_names",
    "load_datalist",
    "prepare_split",
    "read_dataset_json",
    "warn_of_existing_outputs",
]
