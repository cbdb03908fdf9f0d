"""Data: reading a Decathlon task folder, the cross-validation split, and downloading the task."""

from .datalist import inference_datalist, label_names, load_datalist, read_dataset_json
from .split import fold_split, prepare_split

__all__ = ["fold_split", "inference_datalist", "label_names", "load_datalist", "prepare_split", "read_dataset_json"]
