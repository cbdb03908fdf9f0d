"""The loss benchmark on tiny shapes: the tables list the requested losses (timings are not checked)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from scripts import BUNDLE_ROOT
from scripts.benchmark import EXTRA_INPUT_BUILDERS, FLOOR_NAME, losses, random_inputs
from scripts.losses import SegmentationLoss
from scripts.losses.registry import _REGISTRY, LossSpec

TINY = {"shape_2d": (1, 3, 8, 8), "shape_3d": (1, 3, 4, 4, 4), "repeats": 1, "warmup": 0}


class NeedsDistanceMap(SegmentationLoss):
    """A stand-in for a boundary loss: the foreground probability weighted by a distance map."""

    extra_inputs = ("distance_map",)

    def per_sample_loss(self, inputs, distance_map):
        weighted = inputs.probs[:, 1:] * distance_map
        return weighted.flatten(start_dim=1).mean(dim=1)


@pytest.fixture
def distance_map_loss(monkeypatch):
    spec = LossSpec(name="needs_distance_map", loss_class=NeedsDistanceMap, family="boundary", paper="test only")
    monkeypatch.setitem(_REGISTRY, spec.name, spec)
    return spec.name


@pytest.fixture
def restore_threads():
    """Restore PyTorch's thread count, which the benchmark's ``threads`` option sets for the whole process."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table_rows(output: str) -> list[str]:
    return [line.split()[0] for line in output.splitlines() if line and not line.startswith(("-", "=", "Note", "Skip"))]


def test_benchmark_prints_a_row_per_loss_and_shape(capsys):
    losses(names="dice,topk", **TINY)
    output = capsys.readouterr().out

    assert "2D logits 1x3x8x8" in output
    assert "3D logits 1x3x4x4x4" in output
    assert table_rows(output).count("dice") == 2
    assert table_rows(output).count("topk") == 2
    assert output.count(FLOOR_NAME) == 2


def test_benchmark_monai_columns(capsys):
    losses(names=["tversky", "topk"], dims="3d", **TINY)
    lines = capsys.readouterr().out.splitlines()
    tversky = next(line for line in lines if line.startswith("tversky"))
    topk = next(line for line in lines if line.startswith("topk"))

    # The last three columns: MONAI's time, the ratio and the largest value difference, or "-" without MONAI.
    assert tversky.split()[-3:] != ["-", "-", "-"]
    assert float(tversky.split()[-1]) < 1e-5
    assert topk.split()[-3:] == ["-", "-", "-"]


def test_benchmark_markdown_table(capsys):
    losses(names="jaccard", dims="2d", markdown=True, **TINY)
    output = capsys.readouterr().out

    assert "### 2D logits 1x3x8x8" in output
    assert "| loss | family | time (ms) |" in output
    assert "| `jaccard` | region |" in output


def test_benchmark_skips_loss_without_input_builder(capsys, distance_map_loss):
    losses(names=[distance_map_loss, "dice"], dims="2d", **TINY)
    output = capsys.readouterr().out

    assert "Skipped needs_distance_map: no example builder for the extra inputs ['distance_map']" in output
    assert "needs_distance_map" not in table_rows(output)
    assert "dice" in table_rows(output)


def test_benchmark_uses_registered_input_builder(capsys, distance_map_loss, monkeypatch):
    monkeypatch.setitem(
        EXTRA_INPUT_BUILDERS, distance_map_loss, lambda logits, labels: {"distance_map": torch.rand_like(logits[:, 1:])}
    )

    losses(names=distance_map_loss, dims="2d", **TINY)

    assert distance_map_loss in table_rows(capsys.readouterr().out)


def test_benchmark_builds_maps_and_head_outputs(capsys):
    # The boundary loss reads a pipeline map, conditional_boundary the outputs of a network wrapper.
    losses(names="boundary,conditional_boundary", dims="3d", shape_3d=(1, 3, 12, 12, 12), repeats=1, warmup=0)
    rows = table_rows(capsys.readouterr().out)

    assert "boundary" in rows
    assert "conditional_boundary" in rows


def test_benchmark_inputs_have_balls_and_mostly_right_logits():
    logits, labels = random_inputs((2, 3, 16, 16, 16), torch.device("cpu"), seed=0)

    assert set(labels.unique().tolist()) == {0, 1, 2}
    assert (logits.argmax(dim=1, keepdim=True) == labels).float().mean() > 0.9


def test_benchmark_cpu_timer(capsys, restore_threads):
    losses(names="dice", dims="2d", timer="cpu", threads=1, **TINY)
    output = capsys.readouterr().out

    assert "Median cpu time" in output
    assert "dice" in table_rows(output)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dims": "4d"}, "dims must name 2d and/or 3d"),
        ({"timer": "gpu"}, "timer must be one of"),
        ({"timer": "cpu", "device": "cuda"}, "timer='cpu' measures CPU time"),
        ({"shape_3d": (2, 3, 32, 32)}, r"shape_3d must give B, C and 3 spatial sizes.*got \(2, 3, 32, 32\)"),
        ({"shape_2d": (2, 1, 16, 16)}, r"shape_2d must give .*C >= 2.*got \(2, 1, 16, 16\)"),
        ({"shape_3d": (2, 3, 0, 8, 8)}, r"all positive"),
        ({"shape_2d": "2,3,a,8"}, r"shape_2d must give"),
        ({"repeats": "abc"}, r"repeats must be an integer of at least 1, got 'abc'"),
        ({"repeats": 2.5}, r"repeats must be an integer of at least 1, got 2.5"),
        ({"warmup": -1}, r"warmup must be an integer of at least 0, got -1"),
        ({"threads": 0}, r"threads must be an integer of at least 1, got 0"),
        ({"seed": "abc"}, r"seed must be an integer of at least 0, got 'abc'"),
        ({"markdown": 3}, r"markdown must be true or false, got 3"),
        ({"device": "gpu"}, r"device must be cpu or a CUDA device such as cuda:0, got 'gpu'"),
        ({"names": ""}, r"names selects no loss"),
        ({"dims": ""}, r"dims must name 2d and/or 3d, got \[\]"),
    ],
)
def test_benchmark_invalid_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        losses(**{"names": "dice", **TINY, **options})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_benchmark_missing_cuda_device_raises():
    with pytest.raises(ValueError, match=r"device 'cuda:0' is not available.*Use --device=cpu"):
        losses(names="dice", device="cuda:0", **TINY)


def test_benchmark_cpu_timer_with_threads_warns(caplog, restore_threads):
    with caplog.at_level(logging.WARNING, logger="scripts.benchmark"):
        losses(names="dice", dims="2d", timer="cpu", threads=2, **TINY)

    assert "Pass --threads=1" in caplog.text


def test_benchmark_command_line():
    command = [sys.executable, "-m", "scripts.benchmark", "losses", "--names=dice", "--dims=2d", "--shape_2d=1,3,8,8"]
    result = subprocess.run(
        [*command, "--repeats=1", "--warmup=0"], cwd=BUNDLE_ROOT, capture_output=True, text=True, check=True
    )

    assert "2D logits 1x3x8x8" in result.stdout
    assert "dice" in table_rows(result.stdout)


def test_benchmark_command_line_unknown_loss_is_one_line():
    command = [sys.executable, "-m", "scripts.benchmark", "losses", "--names=dcie", "--dims=2d", "--repeats=1"]
    result = subprocess.run(command, cwd=BUNDLE_ROOT, capture_output=True, text=True)

    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: unknown loss 'dcie'")
    assert "Traceback" not in result.stderr
