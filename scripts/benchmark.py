"""Speed and memory benchmark of every registered loss: ``python -m scripts.benchmark losses``.

For a 2D and a 3D batch of random logits and labels, the benchmark times a forward and backward pass of every
registered loss (median over ``repeats`` after ``warmup`` passes) and measures the peak memory the pass
allocates. It prints one table per shape. Both are compared with ``torch.nn.functional.cross_entropy`` on the same
tensors, the floor that no segmentation loss can beat by much. Where MONAI has the same loss, the table also
gives MONAI's time, the ratio of the two and the largest absolute difference of the values at matching settings
(``MONAI_COUNTERPARTS`` lists the settings).

Timing: every repeat runs all entries one after another (the floor, each loss, each MONAI loss), so a change of
load on a shared machine hits all of them alike. Compare ratios within one run. CUDA runs are synchronised.
``timer="cpu"`` measures the CPU time of the process instead of the wall-clock time. With ``threads=1`` it
leaves out the time the process waits for a core that other processes hold.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` during the pass minus the memory allocated before it.
On CPU, PyTorch keeps no allocator statistics, so the pass runs once under ``torch.profiler`` with
``profile_memory=True``. Every allocation and free is then an instant event of the Chrome trace whose
"Total Allocated" field counts the bytes allocated since the profiler started, and the peak is the largest such
value. This counts tensor storage (the gradient of the logits included), not Python objects or allocator slack.

Inputs: the labels are one ball per foreground class (so boundary losses see boundaries, not noise), and the
logits are ``3 * one_hot(labels)`` plus standard-normal noise, a prediction that is right on most voxels, as in
the middle of a training.

Losses that need more than logits and target (a distance map, an auxiliary head's output) list those inputs in
``extra_inputs``. The benchmark builds them once per shape, outside the timed pass, with the first of:

1. a builder registered here, ``EXTRA_INPUT_BUILDERS[name] = lambda logits, labels: {...}``;
2. the function ``example_extra_inputs(logits, labels)`` of the loss's own module (the auxiliary-head losses);
3. :func:`scripts.losses.extra_inputs.example_extra_inputs`, which computes the ground-truth distance maps as the
   pipeline's ``DistanceMapd`` does.

The builders receive the logits ``(B, C, *spatial)`` and the index labels ``(B, 1, *spatial)`` and return the
keyword arguments of the loss's forward(). Maps of the prediction (the Hausdorff loss's) are computed inside the
timed pass, as in training. A loss whose extra inputs no builder provides is skipped with the reason printed under
the table. This module imports the losses only when a benchmark runs, so loss modules can import it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .options import as_bool, as_int, count

logger = logging.getLogger(__name__)

# Loss name -> builder(logits, labels) -> keyword arguments of the loss's forward() besides logits and target.
EXTRA_INPUT_BUILDERS: dict[str, Callable[[Tensor, Tensor], dict[str, Any]]] = {}

DEFAULT_SHAPE_2D = (8, 3, 256, 256)
DEFAULT_SHAPE_3D = (2, 3, 64, 64, 64)
DEFAULT_SHAPES = {2: DEFAULT_SHAPE_2D, 3: DEFAULT_SHAPE_3D}
FLOOR_NAME = "F.cross_entropy (floor)"
TIMERS = {"wall": time.perf_counter, "cpu": time.process_time}


@dataclass(frozen=True)
class MonaiCounterpart:
    """The MONAI loss that computes the same value as one of ours, and the settings at which they agree."""

    settings: dict[str, Any]
    build: Callable[[int], Callable[[Tensor, Tensor], Tensor]]
    two_classes: bool = False
    note: str = ""


def monai_counterparts() -> dict[str, MonaiCounterpart]:
    """Return the MONAI 1.6 counterparts of our losses, keyed by registry name."""
    from monai import losses as monai_losses

    def focal(num_classes: int) -> Callable[[Tensor, Tensor], Tensor]:
        loss = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0)
        # MONAI's mean also averages over the classes, whereas ours averages over voxels only.
        return lambda logits, labels: num_classes * loss(logits, labels)

    def wasserstein(num_classes: int) -> Callable[[Tensor, Tensor], Tensor]:
        distances = torch.ones(num_classes, num_classes) - torch.eye(num_classes)
        return monai_losses.GeneralizedWassersteinDiceLoss(dist_matrix=distances)

    def unified_focal(num_classes: int) -> Callable[[Tensor, Tensor], Tensor]:
        loss = monai_losses.AsymmetricUnifiedFocalLoss(to_onehot_y=True, weight=0.5, delta=0.6, gamma=0.5)
        # MONAI's loss takes probabilities, so the softmax is part of its timed pass, as it is of ours.
        return lambda logits, labels: loss(torch.softmax(logits, dim=1), labels)

    return {
        "dice": MonaiCounterpart(
            {}, lambda _: monai_losses.DiceLoss(softmax=True, to_onehot_y=True, squared_pred=True)
        ),
        "jaccard": MonaiCounterpart(
            {},
            # MONAI computes (2 I + s) / (2 U + s), equal to ours with half the smoothing.
            lambda _: monai_losses.DiceLoss(
                softmax=True, to_onehot_y=True, jaccard=True, smooth_nr=2e-5, smooth_dr=2e-5
            ),
        ),
        "tversky": MonaiCounterpart(
            {}, lambda _: monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)
        ),
        "generalized_wasserstein_dice": MonaiCounterpart({}, wasserstein),
        "focal": MonaiCounterpart({"alpha": None}, focal, note="MONAI's value times the number of classes"),
        # The two distance losses compute different maps from ours (see the notes), so their values differ; they are
        # here for the speed comparison. MONAI computes its maps inside every call, ours come from the pipeline.
        "boundary": MonaiCounterpart(
            {},
            lambda _: monai_losses.BoundaryLoss(softmax=True, to_onehot_y=True),
            note="MONAI computes the signed maps inside every call and measures inside distances as EDT - 1, which "
            "differs from ours behind concave corners; ours reads them from the pipeline",
        ),
        "hausdorff": MonaiCounterpart(
            {"include_background": False},
            lambda _: monai_losses.HausdorffDTLoss(softmax=True, to_onehot_y=True, include_background=False),
            note="both without the background class. MONAI's field is EDT(fg) + EDT(bg), one voxel more inside the "
            "object than our distance to the boundary. MONAI also thresholds each channel at 0.5 instead of taking "
            "the argmax, so the values differ",
        ),
        "unified_focal": MonaiCounterpart(
            {"smooth_nr": 1e-7, "smooth_dr": 1e-7},
            unified_focal,
            two_classes=True,
            note="MONAI 1.6.1 supports two classes only: both run on the first two channels with "
            "foreground-versus-background labels",
        ),
    }


@dataclass
class Entry:
    """One timed computation: a loss of ours, the floor, or a MONAI loss."""

    name: str
    compute: Callable[[Tensor], Tensor]
    logits: Tensor
    times: list[float] = field(default_factory=list)


@dataclass
class Row:
    """One line of the table."""

    name: str
    family: str
    entry: Entry
    peak_bytes: int
    monai: Entry | None = None
    # Ours on the tensors MONAI ran on, when those differ from the main ones (two-class MONAI losses).
    monai_ours: Entry | None = None
    difference: float | None = None


def losses(
    names: str | Sequence[str] | None = None,
    shape_2d: Sequence[int] = DEFAULT_SHAPE_2D,
    shape_3d: Sequence[int] = DEFAULT_SHAPE_3D,
    dims: str | Sequence[str] = ("2d", "3d"),
    device: str = "cpu",
    repeats: int = 10,
    warmup: int = 2,
    threads: int | None = None,
    timer: str = "wall",
    markdown: bool = False,
    seed: int = 0,
    keep_freed_memory: bool = True,
) -> None:
    """Time and measure every registered loss and print one table per shape.

    Args:
        names: loss names to run, comma-separated or a list. Default: every registered loss.
        shape_2d: ``B, C, H, W`` of the 2D logits.
        shape_3d: ``B, C, D, H, W`` of the 3D logits.
        dims: which shapes to run, ``2d``, ``3d`` or both.
        device: ``cpu`` or a CUDA device such as ``cuda:0``.
        repeats: timed passes per loss. The table shows their median.
        warmup: untimed passes per loss before the timed ones.
        threads: CPU threads for PyTorch. Default: PyTorch's choice.
        timer: ``wall`` (wall-clock time) or ``cpu`` (CPU time of the process, CPU devices only).
        markdown: print Markdown tables (for ``docs/benchmarks.md``) instead of plain text.
        seed: seed of the random logits and labels.
        keep_freed_memory: apply :func:`scripts.allocator.keep_freed_memory` first, as training does, so that
            the times measure the arithmetic rather than the page faults of fresh allocations. ``False`` keeps the
            C library's defaults.
    """
    from .allocator import keep_freed_memory as keep_memory

    repeats = as_int("repeats", repeats, minimum=1)
    warmup = as_int("warmup", warmup, minimum=0)
    seed = as_int("seed", seed, minimum=0)
    markdown = as_bool("markdown", markdown)
    if threads is not None:
        threads = as_int("threads", threads, minimum=1)
    if timer not in TIMERS:
        raise ValueError(f"timer must be one of {tuple(TIMERS)}, got {timer!r}.")
    device_type = _device_type(device)
    if timer == "cpu" and device_type != "cpu":
        raise ValueError(f"timer='cpu' measures CPU time and cannot time {device}. Use timer='wall'.")
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} is not available: this PyTorch build or machine has no CUDA device. Use --device=cpu."
        )
    if isinstance(dims, str):
        dims = [part.strip() for part in dims.split(",") if part.strip()]
    shapes = {"2d": _check_shape("shape_2d", shape_2d, 2), "3d": _check_shape("shape_3d", shape_3d, 3)}
    unknown = [dim for dim in dims if dim not in shapes]
    if unknown or not dims:
        raise ValueError(f"dims must name 2d and/or 3d, got {unknown or dims!r}.")
    specs = _selected_specs(names)

    allocator = "freed memory kept" if keep_memory(keep_freed_memory) else "default allocator"
    if threads is not None:
        torch.set_num_threads(threads)
    if timer == "cpu" and torch.get_num_threads() > 1:
        logger.warning(
            "timer='cpu' adds up the CPU time of all %d threads, including threads that spin while they wait for "
            "work, so the times depend on the machine's load. Pass --threads=1 for ratios that compare.",
            torch.get_num_threads(),
        )
    print(_header(device, repeats, warmup, timer, markdown, allocator))
    for dim in dims:
        rows, skipped, notes = run_shape(specs, shapes[dim], torch.device(device), repeats, warmup, seed, timer)
        title = f"{dim.upper()} logits {'x'.join(map(str, shapes[dim]))}"
        print(format_table(title, rows, skipped, notes, markdown))


def run_shape(
    specs: list,
    shape: tuple[int, ...],
    device: torch.device,
    repeats: int,
    warmup: int,
    seed: int,
    timer: str = "wall",
) -> tuple[list[Row], list[str], list[str]]:
    """Benchmark the losses of ``specs`` on one shape and return the rows, the skip reasons and the notes."""
    from scripts.losses import build_loss

    if len(shape) < 3:
        raise ValueError(f"a shape must be (B, C, *spatial) with at least one spatial size, got {shape}.")
    logits, labels = random_inputs(shape, device, seed)
    counterparts = monai_counterparts()
    floor = Entry(FLOOR_NAME, lambda x: F.cross_entropy(x, labels[:, 0]), logits)
    rows = [Row(FLOOR_NAME, "-", floor, measure_peak_bytes(floor.compute, logits))]
    skipped: list[str] = []
    notes: list[str] = []

    for spec in specs:
        counterpart = counterparts.get(spec.name)
        settings = {**_build_settings(spec.name), **(counterpart.settings if counterpart else {})}
        try:
            loss = build_loss(spec.name, **settings).to(device)
        except ValueError as error:
            skipped.append(f"{spec.name}: cannot be built with its defaults ({error})")
            continue
        try:
            extra = _example_extra_inputs(spec.name, loss, logits, labels)
        except ValueError as error:
            skipped.append(f"{spec.name}: {error}")
            continue
        entry = Entry(spec.name, _loss_step(loss, labels, extra), logits)
        rows.append(Row(spec.name, spec.family, entry, measure_peak_bytes(entry.compute, logits)))
        if counterpart is not None:
            _attach_monai(rows[-1], loss, counterpart, logits, labels, extra)
            if counterpart.note:
                notes.append(f"{spec.name}: {counterpart.note}.")

    entries = [row.entry for row in rows]
    entries += [extra for row in rows for extra in (row.monai, row.monai_ours) if extra is not None]
    time_entries(entries, repeats, warmup, device, TIMERS[timer])
    return rows, skipped, notes


def _check_shape(name: str, shape: Any, spatial_dims: int) -> tuple[int, ...]:
    """Return ``B, C, *spatial`` as a tuple of ints, or raise ``ValueError`` naming the option and the value."""
    if isinstance(shape, str):
        shape = [part for part in shape.replace("x", ",").split(",") if part.strip()]
    try:
        values = tuple(int(value) for value in shape)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 2 + spatial_dims or min(values) < 1 or values[1] < 2:
        raise ValueError(
            f"{name} must give B, C and {spatial_dims} spatial sizes, all positive and C >= 2 (the floor is a softmax "
            f"cross-entropy), got {shape!r}; for example --{name}={','.join(map(str, DEFAULT_SHAPES[spatial_dims]))}."
        )
    return values


def random_inputs(shape: tuple[int, ...], device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    """Return index labels ``(B, 1, *spatial)`` with one ball per foreground class, and logits that mostly agree.

    Each sample's balls have random centres and radii between 1/8 and 1/4 of the smallest spatial size. The
    logits are ``3 * one_hot(labels)`` plus standard-normal noise.
    """
    generator = torch.Generator().manual_seed(seed)
    batch, channels, spatial = shape[0], shape[1], shape[2:]
    grids = torch.meshgrid(*[torch.arange(size, dtype=torch.float32) for size in spatial], indexing="ij")
    labels = torch.zeros((batch, 1, *spatial), dtype=torch.long)
    smallest = min(spatial)
    for sample in range(batch):
        for label in range(1, max(channels, 2)):
            radius = smallest * (0.125 + 0.125 * torch.rand((), generator=generator).item())
            centre = [radius + (size - 2 * radius) * torch.rand((), generator=generator).item() for size in spatial]
            squared = sum((grid - c) ** 2 for grid, c in zip(grids, centre))
            labels[sample, 0][squared <= radius**2] = label
    if channels == 1:
        logits = 3.0 * (2.0 * labels.float() - 1.0)
    else:
        logits = 3.0 * torch.zeros(shape).scatter_(1, labels, 1.0)
    logits = logits + torch.randn(logits.shape, generator=generator)
    return logits.to(device), labels.to(device)


def _build_settings(name: str) -> dict[str, Any]:
    """Hyperparameters a loss needs to be built in a benchmark (weighted_sum: members; InverseForm: a network)."""
    if name == "weighted_sum":
        # The members of configs/losses/weighted_sum.yaml: cross-entropy plus Dice, nnU-Net's combination.
        return {"losses": {"cross_entropy": {"weight": 1.0}, "dice": {"weight": 1.0}}}
    if name != "inverse_form":
        return {}
    from scripts.losses.boundary.inverse_form import InverseFormNet, save_inverse_form_net

    # A randomly initialised network costs the same as a trained one.
    folder = tempfile.mkdtemp(prefix="seglosses-benchmark-")
    return {"checkpoint": str(save_inverse_form_net(InverseFormNet(), f"{folder}/inverse_form_net.pt"))}


def _example_extra_inputs(name: str, loss: torch.nn.Module, logits: Tensor, labels: Tensor) -> dict[str, Any]:
    """Build the extra inputs of ``loss`` (see the module docstring); raise ``ValueError`` when none is found."""
    if not getattr(loss, "extra_inputs", ()):
        return {}
    if name in EXTRA_INPUT_BUILDERS:
        return EXTRA_INPUT_BUILDERS[name](logits, labels)
    module = sys.modules[type(loss).__module__]
    if hasattr(module, "example_extra_inputs"):
        return module.example_extra_inputs(logits, labels)
    from scripts.losses.extra_inputs import example_extra_inputs

    return example_extra_inputs(loss, logits, labels)


def measure_peak_bytes(compute: Callable[[Tensor], Tensor], logits: Tensor) -> int:
    """Return the peak bytes allocated by one forward and backward pass (see the module docstring)."""
    compute(logits.detach().requires_grad_()).backward()
    if logits.device.type == "cuda":
        # NOTE: this branch and the CUDA timing have not yet been run on a GPU.
        torch.cuda.synchronize(logits.device)
        torch.cuda.reset_peak_memory_stats(logits.device)
        before = torch.cuda.memory_allocated(logits.device)
        compute(logits.detach().requires_grad_()).backward()
        torch.cuda.synchronize(logits.device)
        return torch.cuda.max_memory_allocated(logits.device) - before
    return _cpu_peak_bytes(compute, logits)


def time_entries(
    entries: list[Entry],
    repeats: int,
    warmup: int,
    device: torch.device,
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """Run ``warmup`` untimed and ``repeats`` timed passes of every entry, interleaving the entries."""
    for entry in entries:
        for _ in range(warmup):
            entry.compute(entry.logits.detach().requires_grad_()).backward()
    for _ in range(repeats):
        for entry in entries:
            logits = entry.logits.detach().requires_grad_()
            _synchronize(device)
            start = clock()
            entry.compute(logits).backward()
            _synchronize(device)
            entry.times.append(clock() - start)


TABLE_HEADER = [
    "loss",
    "family",
    "time (ms)",
    "x floor",
    "peak MiB",
    "x floor",
    "MONAI (ms)",
    "ours/MONAI",
    "max abs diff",
]


def format_table(title: str, rows: list[Row], skipped: list[str], notes: list[str], markdown: bool) -> str:
    """Format the rows of one shape as an aligned text table or as Markdown, followed by notes and skips."""
    cells = [TABLE_HEADER] + table_cells(rows)
    lines = _markdown_lines(title, cells) if markdown else _text_lines(title, cells)

    bullet = "- " if markdown else ""
    if markdown and (notes or skipped):
        lines.append("")
    for note in notes:
        lines.append(f"{bullet}Note: {note}")
    for reason in skipped:
        lines.append(f"{bullet}Skipped {reason}.")
    return "\n".join(lines) + "\n"


def table_cells(rows: list[Row]) -> list[list[str]]:
    """Return the cells of every row: times and peak memory, their ratios to the floor, the MONAI columns."""
    floor_time = statistics.median(rows[0].entry.times)
    floor_peak = rows[0].peak_bytes
    table = []
    for row in rows:
        time_ms = statistics.median(row.entry.times) * 1e3
        cells = [
            row.name,
            row.family,
            f"{time_ms:.2f}",
            f"{time_ms / (floor_time * 1e3):.2f}",
            f"{row.peak_bytes / 2**20:.1f}",
            f"{row.peak_bytes / floor_peak:.2f}" if floor_peak > 0 else "-",
            "-",
            "-",
            "-",
        ]
        if row.monai is not None:
            monai_ms = statistics.median(row.monai.times) * 1e3
            ours_ms = statistics.median((row.monai_ours or row.entry).times) * 1e3
            cells[6:] = [f"{monai_ms:.2f}", f"{ours_ms / monai_ms:.2f}", f"{row.difference:.1e}"]
        table.append(cells)
    return table


def _markdown_lines(title: str, cells: list[list[str]]) -> list[str]:
    header, *body = cells
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in body:
        lines.append("| " + " | ".join([f"`{row[0]}`", *row[1:]]) + " |")
    return lines


def _text_lines(title: str, cells: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in cells) for column in range(len(cells[0]))]
    lines = [title, "=" * len(title)]
    for index, row in enumerate(cells):
        # Names left-aligned, numbers right-aligned.
        padded = [
            cell.ljust(width) if column < 2 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths))
        ]
        lines.append("  ".join(padded))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


def _attach_monai(
    row: Row,
    loss: torch.nn.Module,
    counterpart: MonaiCounterpart,
    logits: Tensor,
    labels: Tensor,
    extra: dict[str, Any] | None = None,
):
    """Add the MONAI entry of ``row`` and the largest difference between the two values."""
    extra = extra or {}
    if counterpart.two_classes:
        logits = logits[:, :2].contiguous()
        labels = (labels > 0).long()
        # Ours is timed again on the same two-class tensors, so the ratio compares like with like.
        row.monai_ours = Entry(f"{row.name} (2 classes)", _loss_step(loss, labels, {}), logits)
    monai_loss = counterpart.build(logits.shape[1])
    if isinstance(monai_loss, torch.nn.Module):
        monai_loss = monai_loss.to(logits.device)
    row.monai = Entry(f"MONAI {row.name}", _monai_step(monai_loss, labels), logits)
    with torch.no_grad():
        row.difference = (loss(logits, labels, **extra) - monai_loss(logits, labels)).abs().max().item()


def _loss_step(loss: torch.nn.Module, labels: Tensor, extra: dict[str, Any]) -> Callable[[Tensor], Tensor]:
    return lambda logits: loss(logits, labels, **extra)


def _monai_step(monai_loss: Callable[[Tensor, Tensor], Tensor], labels: Tensor) -> Callable[[Tensor], Tensor]:
    return lambda logits: monai_loss(logits, labels)


def _cpu_peak_bytes(compute: Callable[[Tensor], Tensor], logits: Tensor) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        compute(logits.detach().requires_grad_()).backward()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        profiler.export_chrome_trace(path)
        with open(path) as trace_file:
            events = json.load(trace_file)["traceEvents"]
    allocated = [event["args"]["Total Allocated"] for event in events if event.get("name") == "[memory]"]
    return max([0, *allocated])


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send the process's native stderr to /dev/null for the block.

    The profiler backend (kineto) writes a start and a stop line to file descriptor 2 on every use, which would
    bury the table. Python exceptions are unaffected.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _selected_specs(names: str | Sequence[str] | None) -> list:
    from scripts.losses import get_loss_spec, list_losses

    if names is None:
        return list_losses()
    if isinstance(names, str):
        names = [name.strip() for name in names.split(",") if name.strip()]
    if not names:
        raise ValueError(
            "names selects no loss. Give registered names separated by commas (--names=dice,tversky), or leave it "
            "out to run every loss."
        )
    return [get_loss_spec(name) for name in names]


def _device_type(device: str) -> str:
    """Return ``"cpu"`` or ``"cuda"`` for ``device``; raise ``ValueError`` for any other device string."""
    try:
        device_type = torch.device(device).type
    except (RuntimeError, TypeError):
        device_type = None
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or a CUDA device such as cuda:0, got {device!r}.")
    return device_type


def _processor_name() -> str:
    """Return the CPU model from /proc/cpuinfo (Linux), else what the platform module reports."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _header(device: str, repeats: int, warmup: int, timer: str, markdown: bool, allocator: str) -> str:
    import monai

    processor = _processor_name()
    info = (
        f"torch {torch.__version__}, MONAI {monai.__version__}, device {device} ({processor}), "
        f"{count(torch.get_num_threads(), 'thread')}, {allocator}. Median {timer} time of {repeats} "
        f"forward+backward passes after {warmup} warm-up passes. Floor: torch.nn.functional.cross_entropy on the "
        "same tensors."
    )
    return info + "\n" if markdown else info + "\n" + "-" * min(len(info), 120) + "\n"


if __name__ == "__main__":
    from scripts.cli import run_commands

    run_commands({"losses": losses})
