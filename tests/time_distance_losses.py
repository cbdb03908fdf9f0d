"""Time the distance-map losses against the cross-entropy floor and MONAI's boundary and Hausdorff losses.

Run from the bundle root:
``python tests/time_distance_losses.py [--size 64] [--repeats 5] [--threads 1]``. Each step is a
forward and backward pass on ``2 x 3 x size^3`` logits. Ground-truth maps are precomputed, as the pipeline's
``DistanceMapd`` provides them; the Hausdorff ``dt`` variant computes the prediction's map inside the step. The
printed ratios are medians over ``repeats`` steps, relative to ``torch.nn.functional.cross_entropy`` timed in
alternation with each loss, so that a load from other processes affects both alike. Random
logits give a noisy argmax, the slowest case for the prediction's distance transform; the rows marked "near
target" use logits that agree with the labels up to noise, as later in training.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.losses import BoundaryLoss, HausdorffDTLoss

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from loss_cases import blob_labels, perfect_logits  # noqa: E402

from scripts.losses import build_loss  # noqa: E402
from scripts.losses.extra_inputs import example_extra_inputs  # noqa: E402

CASES = {
    "boundary": {},
    "region_wise": {},
    "distance_map_ce": {},
    "boundary_dou": {},
    "generalized_dice": {},
    "hausdorff (dt)": {"variant": "dt"},
    "hausdorff (dt, include_background=False)": {"variant": "dt", "include_background": False},
    "hausdorff (erosion)": {"variant": "erosion"},
    "hausdorff (convolution)": {"variant": "convolution"},
    "weighted_sum (generalized_dice + boundary)": {
        "losses": {"generalized_dice": {"weight": 1.0}, "boundary": {"weight": 0.01, "include_background": False}}
    },
}


def paired_milliseconds(floor_step: Callable[[], None], step: Callable[[], None], repeats: int) -> tuple[float, float]:
    """Return the median times of ``floor_step`` and ``step``, run alternately so that both see the same load."""
    floor_step()
    step()
    floor_times, times = [], []
    for _ in range(repeats):
        for measured, record in ((floor_step, floor_times), (step, times)):
            start = time.perf_counter()
            measured()
            record.append(time.perf_counter() - start)
    return 1000 * statistics.median(floor_times), 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="edge of the cubic patch, in voxels")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per loss")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)

    shape = (2, 3, arguments.size, arguments.size, arguments.size)
    labels = blob_labels(shape, 3)
    random_logits = 2.0 * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    near_target_logits = perfect_logits(labels, 3, margin=2.0) + noise

    def backward_step(loss_fn: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor) -> Callable[[], None]:
        logits = values.clone().requires_grad_()

        def step() -> None:
            logits.grad = None
            loss_fn(logits).backward()

        return step

    floor_step = backward_step(lambda logits: F.cross_entropy(logits, labels[:, 0]), random_logits)

    def report(label: str, loss_fn: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor) -> None:
        floor, milliseconds = paired_milliseconds(floor_step, backward_step(loss_fn, values), arguments.repeats)
        print(f"{label:45s} {milliseconds:8.1f} ms {milliseconds / floor:6.1f}x  (floor {floor:.1f} ms)")

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, logits {tuple(shape)}")
    print("each loss is timed alternately with cross_entropy (the floor) and given as a ratio to it")

    for label, options in CASES.items():
        loss = build_loss(label.split(" ")[0], **options)
        extras = example_extra_inputs(loss, random_logits, labels)
        report(label, lambda logits: loss(logits, labels, **extras), random_logits)

    for label, options in (
        ("hausdorff (dt), near target", {}),
        ("hausdorff (dt, no background), near target", {"include_background": False}),
    ):
        loss = build_loss("hausdorff", **options)
        extras = example_extra_inputs(loss, random_logits, labels)
        report(label, lambda logits: loss(logits, labels, **extras), near_target_logits)

    monai_losses = {
        "MONAI BoundaryLoss": BoundaryLoss(softmax=True, to_onehot_y=True),
        "MONAI HausdorffDTLoss (no background)": HausdorffDTLoss(softmax=True, to_onehot_y=True),
    }
    for label, loss in monai_losses.items():
        report(label, lambda logits: loss(logits, labels), random_logits)


if __name__ == "__main__":
    main()
