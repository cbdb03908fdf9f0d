"""Shared fixtures: the dataset folder and a small slice of its real cases."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

DATASET_ENV = "SEGLOSSES_DATASET_DIR"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--dataset-dir",
        default=os.environ.get(DATASET_ENV),
        help=f"a Medical Segmentation Decathlon task folder with dataset.json (default: ${DATASET_ENV}).",
    )


@pytest.fixture(autouse=True)
def _single_thread_and_seed():
    # Tiny tensors run faster on one thread, and two test processes on a small machine do not fight.
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def dataset_dir(pytestconfig: pytest.Config) -> Path:
    value = pytestconfig.getoption("--dataset-dir")
    if not value:
        pytest.skip(f"no dataset: pass --dataset-dir or set {DATASET_ENV} to a Decathlon task folder")
    path = Path(value).resolve()
    if not (path / "dataset.json").is_file():
        raise FileNotFoundError(f"--dataset-dir {path} has no dataset.json; pass a Decathlon task folder.")
    return path
