"""Distributed training helpers.

One DistributedDataParallel step over 2 CPU processes (gloo) must give the gradients of one process on the
combined batch. The cases: per-voxel and batch-pooled losses, trainable loss parameters, auxiliary heads, and
every registered loss with ``batch`` false and true, with and without ignored voxels. The rank-dependent helpers
are also checked in a single process.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from loss_cases import build, extra_inputs, make_labels, make_logits
from monai.handlers import CheckpointSaver, LrScheduleHandler, StatsHandler, ValidationHandler
from torch import Tensor, nn
from torch.multiprocessing.spawn import ProcessException

import scripts.distributed as distributed
from scripts.engine import LossAdapter
from scripts.losses import SegmentationInputs, SegmentationLoss, build_loss, list_losses
from scripts.losses.distributed import gather_across_ranks, pool_across_ranks, sum_across_ranks
from scripts.losses.pixel.cross_entropy import voxel_cross_entropy
from scripts.tracking import MLflowTracker

WORLD_SIZE = 2
BATCH_SIZE = 4  # 2 samples per process
IGNORE = 255
WORKER_TIMEOUT = 300  # seconds

# Registered losses whose batch=True statistics stay per process under DDP, each with the reason. Every other loss
# must pool the batches of all processes exactly (docs/losses.md, "Distributed training").
NOT_POOLED_ACROSS_RANKS: dict[str, str] = {}
NAMES = [spec.name for spec in list_losses()]
REGISTRY_SHAPE = (BATCH_SIZE, 3, 8, 10, 6)
REGISTRY_CASES = [(name, batch, ignore) for name in NAMES for batch in (False, True) for ignore in (False, True)]


class TinyNetwork(nn.Module):
    """A 3-class 3D convolution; with ``heads=True`` it also returns auxiliary logits in training mode."""

    def __init__(self, heads: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 3, kernel_size=3, padding=1)
        self.auxiliary = nn.Conv3d(1, 3, kernel_size=1) if heads else None

    def forward(self, image: Tensor) -> Tensor | dict[str, Tensor]:
        logits = self.conv(image)
        if self.auxiliary is None or not self.training:
            return logits
        return {"logits": logits, "auxiliary_logits": self.auxiliary(image)}


class ScaledCrossEntropy(SegmentationLoss):
    """Cross-entropy from class-wise voxel means (``voxel_mean``), times a trainable scale."""

    def __init__(self, ignore_index: int | None = None, batch: bool = False) -> None:
        super().__init__(ignore_index=ignore_index, batch=batch)
        self.log_scale = nn.Parameter(torch.tensor(0.3, dtype=torch.float64))

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        class_mean = inputs.voxel_mean(-(inputs.target * inputs.log_probs), batch=self.batch)
        return torch.exp(self.log_scale) * class_mean.sum(dim=1)


class AuxiliaryHeadLoss(SegmentationLoss):
    """Cross-entropy of the main logits plus half the cross-entropy of an auxiliary head, per sample."""

    extra_inputs = ("auxiliary_logits",)

    def per_sample_loss(self, inputs: SegmentationInputs, auxiliary_logits: Tensor) -> Tensor:
        auxiliary = F.cross_entropy(auxiliary_logits, inputs.labels, reduction="none")
        return self.average_voxels(voxel_cross_entropy(inputs), inputs) + 0.5 * auxiliary.flatten(1).mean(dim=1)


class GlobalTopKCrossEntropy(SegmentationLoss):
    """The mean of the largest 10% of voxel cross-entropies of the whole batch, selected across processes."""

    def __init__(self) -> None:
        super().__init__(batch=True)

    def per_sample_loss(self, inputs: SegmentationInputs) -> Tensor:
        voxel_loss = gather_across_ranks(voxel_cross_entropy(inputs).flatten(1)).flatten()
        count = max(1, voxel_loss.numel() // 10)
        return voxel_loss.topk(count).values.mean().reshape(1)


def build_case(name: str) -> tuple[nn.Module, LossAdapter, Tensor, Tensor]:
    """Return the network, loss, images and labels of one case, identical in every process."""
    torch.manual_seed(0)
    network = TinyNetwork(heads=name == "auxiliary_head").double()
    image = torch.randn(BATCH_SIZE, 1, 6, 6, 6, dtype=torch.float64)
    label = torch.randint(0, 3, (BATCH_SIZE, 1, 6, 6, 6))
    # Ignored voxels in the first sample only: the two processes then hold different numbers of valid voxels.
    label[0, :, :3] = IGNORE
    losses = {
        "cross_entropy": lambda: build_loss("cross_entropy"),
        "batch_dice": lambda: build_loss("dice", batch=True, include_background=False),
        "batch_cross_entropy_ignore": lambda: build_loss(
            "cross_entropy", batch=True, ignore_index=IGNORE, class_weights=[0.5, 1.0, 2.0]
        ),
        # Per sample, so that each process's gradient of the scale differs and only DDP's average is right.
        "trainable_parameter": lambda: ScaledCrossEntropy(ignore_index=IGNORE),
        "batch_voxel_mean_ignore": lambda: ScaledCrossEntropy(ignore_index=IGNORE, batch=True),
        "auxiliary_head": lambda: AuxiliaryHeadLoss(),
        "global_top_k": lambda: GlobalTopKCrossEntropy(),
    }
    if name not in ("batch_cross_entropy_ignore", "trainable_parameter", "batch_voxel_mean_ignore"):
        label[label == IGNORE] = 1
    return network, LossAdapter(losses[name]()), image, label


CASES = (
    "cross_entropy",
    "batch_dice",
    "batch_cross_entropy_ignore",
    "batch_voxel_mean_ignore",
    "trainable_parameter",
    "auxiliary_head",
    "global_top_k",
)


def gradients(module: nn.Module) -> dict[str, Tensor]:
    return {name: parameter.grad.detach().clone() for name, parameter in module.named_parameters()}


def single_process_gradients(name: str) -> dict[str, Tensor]:
    network, loss_function, image, label = build_case(name)
    module = distributed.NetworkWithLoss(network, loss_function)
    loss_function(module(image), label).backward()
    return gradients(module)


def registry_gradients(name: str, batch: bool, ignore: bool, share: slice = slice(None)) -> dict[str, Tensor]:
    """Return the gradients of a registered loss on the ``share`` of a batch, inside ``pool_across_ranks``.

    The gradient with respect to the logits replaces the network's parameters here. DDP divides the parameter
    gradients by the number of processes, so the caller divides the logits gradients likewise. ``ignore`` marks a
    slab of the first sample as ignored, so that the processes hold different numbers of valid voxels.
    """
    logits = make_logits(REGISTRY_SHAPE, dtype=torch.float64)
    labels = make_labels(REGISTRY_SHAPE, REGISTRY_SHAPE[1])
    target = labels.clone()
    options: dict = {"batch": batch}
    if ignore:
        target[0, :, :3] = IGNORE
        options["ignore_index"] = IGNORE
    loss = build(name, **options)
    extra = {
        key: value[share] if isinstance(value, Tensor) and value.shape[:1] == (BATCH_SIZE,) else value
        for key, value in extra_inputs(name, logits, labels).items()
    }
    logits = logits[share].detach().requires_grad_()
    with pool_across_ranks():
        loss(logits, target[share], **extra).backward()
    gradients = {"logits": logits.grad}
    for parameter_name, parameter in loss.named_parameters():
        gradients[parameter_name] = torch.zeros_like(parameter) if parameter.grad is None else parameter.grad
    return gradients


def distributed_step(name: str, rank: int, pooled: bool = True) -> dict[str, Tensor]:
    """Return this process's gradients after one DDP step on its half of the case's batch.

    ``pooled=False`` calls the loss directly, outside ``pool_across_ranks``: each process's batch alone.
    """
    network, loss_function, image, label = build_case(name)
    model = distributed.data_parallel(network, loss_function, torch.device("cpu"))
    share = slice(rank * BATCH_SIZE // WORLD_SIZE, (rank + 1) * BATCH_SIZE // WORLD_SIZE)
    loss = loss_function if pooled else loss_function.loss
    loss(model(image[share]), label[share]).backward()
    return gradients(model.module)


def distributed_worker(rank: int, port: int, output_dir: str) -> None:
    """One process of the DDP steps: the gradients of every case saved to ``rank<r>.pt``."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
    )
    torch.set_num_threads(1)
    distributed.init_process_group()
    progress = Path(output_dir) / f"progress{rank}.txt"
    results = {}
    for name in CASES:
        progress.write_text(name)
        results[name] = distributed_step(name, rank)
    results["batch_dice_per_process"] = distributed_step("batch_dice", rank, pooled=False)
    share = slice(rank * BATCH_SIZE // WORLD_SIZE, (rank + 1) * BATCH_SIZE // WORLD_SIZE)
    for case in REGISTRY_CASES:
        progress.write_text(f"registered loss {case[0]}, batch={case[1]}, ignore={case[2]}")
        results[case] = registry_gradients(*case, share=share)
    torch.save(results, Path(output_dir) / f"rank{rank}.pt")
    # The DDP wrappers are freed inside distributed_step, while every process is still in the group.
    distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_gradients(tmp_path_factory) -> list[dict[str, dict[str, Tensor]]]:
    output_dir = tmp_path_factory.mktemp("ddp")
    # Forked processes start at once; spawned ones import MONAI again, about 10 s each on a small machine.
    context = mp.start_processes(
        distributed_worker, args=(free_port(), str(output_dir)), nprocs=WORLD_SIZE, join=False, start_method="fork"
    )
    deadline = time.monotonic() + WORKER_TIMEOUT
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                raise TimeoutError(f"the {WORLD_SIZE} DDP processes did not finish within {WORKER_TIMEOUT} s")
    except (TimeoutError, ProcessException) as error:
        # A collective that only some processes reach hangs or aborts; the last case names the loss.
        last_cases = [(output_dir / f"progress{rank}.txt") for rank in range(WORLD_SIZE)]
        cases = [path.read_text() if path.exists() else "not started" for path in last_cases]
        pytest.fail(f"{error}; last case per rank: {cases}")
    return [torch.load(output_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def assert_same_gradients(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for name, gradient in expected.items():
        torch.testing.assert_close(actual[name], gradient, rtol=1e-9, atol=1e-12, msg=f"gradient of {name}")


@pytest.mark.parametrize("name", CASES)
def test_ddp_step_equals_single_process_on_combined_batch(distributed_gradients, name):
    expected = single_process_gradients(name)

    for rank in range(WORLD_SIZE):
        assert_same_gradients(distributed_gradients[rank][name], expected)


@pytest.mark.parametrize("name", NAMES)
def test_ddp_step_of_registered_loss(distributed_gradients, name):
    for batch in (False, True):
        if batch and name in NOT_POOLED_ACROSS_RANKS:
            continue
        for ignore in (False, True):
            expected = registry_gradients(name, batch, ignore)
            parts = [distributed_gradients[rank][name, batch, ignore] for rank in range(WORLD_SIZE)]
            case = f"{name} with batch={batch}, ignore={ignore}"

            # DDP's average over the processes: each logits gradient and the loss parameters' gradients, over N.
            logits_gradient = torch.cat([part["logits"] for part in parts]) / WORLD_SIZE
            scale = expected["logits"].abs().max().item()
            torch.testing.assert_close(
                logits_gradient, expected["logits"], rtol=0.0, atol=1e-6 * scale, msg=f"logits gradient of {case}"
            )
            for parameter_name, gradient in expected.items():
                if parameter_name == "logits":
                    continue
                average = sum(part[parameter_name] for part in parts) / WORLD_SIZE
                torch.testing.assert_close(
                    average, gradient, rtol=1e-6, atol=1e-9, msg=f"gradient of {parameter_name} of {case}"
                )


def test_ddp_batch_dice_without_pooling_differs(distributed_gradients):
    expected = single_process_gradients("batch_dice")
    actual = distributed_gradients[0]["batch_dice_per_process"]

    assert not torch.allclose(actual["network.conv.weight"], expected["network.conv.weight"], rtol=1e-3)


def test_ddp_trainable_loss_parameter_gets_gradient(distributed_gradients):
    gradient = distributed_gradients[0]["trainable_parameter"]["loss_function.loss.log_scale"]

    assert gradient.abs().item() > 0.0


def test_pooling_helpers_are_identity_without_process_group():
    values = torch.randn(3, 4, requires_grad=True)

    with pool_across_ranks():
        assert sum_across_ranks(values) is values
        assert gather_across_ranks(values) is values


def test_class_sums_unchanged_inside_pooling_context():
    logits = torch.randn(2, 3, 4, 5, 6)
    target = torch.randint(0, 3, (2, 1, 4, 5, 6))
    inputs = SegmentationInputs(logits, target)

    with pool_across_ranks():
        pooled = inputs.class_sums(batch=True)
    plain = inputs.class_sums(batch=True)

    for inside, outside in zip(pooled, plain):
        assert torch.equal(inside, outside)


def test_handlers_for_rank_zero_keeps_all():
    handlers = [StatsHandler(), LrScheduleHandler(lr_scheduler=None)]

    assert distributed.handlers_for_rank([*handlers, None]) == handlers


def test_handlers_for_other_ranks_drop_reporting(monkeypatch, tmp_path):
    validation = ValidationHandler(interval=1)
    schedule = LrScheduleHandler(lr_scheduler=None)
    checkpoint = CheckpointSaver(save_dir=str(tmp_path), save_dict={"model": nn.Linear(1, 1)})
    tracker = MLflowTracker.__new__(MLflowTracker)
    monkeypatch.setattr(distributed, "rank", lambda: 1)

    kept = distributed.handlers_for_rank([validation, schedule, StatsHandler(), checkpoint, tracker])

    assert kept == [validation, schedule]


def test_local_device_without_torchrun_says_how_to_launch(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    with pytest.raises(ValueError, match="LOCAL_RANK.*not set.*torchrun --nproc_per_node=N"):
        distributed.local_device()


def test_local_device_is_cpu_without_cuda(monkeypatch):
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.setenv(name, "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    assert distributed.local_device() == torch.device("cpu")


def test_evaluation_sampler_fewer_cases_than_processes(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)

    with pytest.raises(ValueError, match="2 processes but the evaluation set has only 1 case.*at most 1 processes"):
        distributed.evaluation_sampler([{"image": "case"}])


def test_gather_case_ids_single_process_keeps_order():
    case_ids, order = distributed.gather_case_ids(["b", "a", "c"])

    assert case_ids == ["b", "a", "c"]
    assert order == [0, 1, 2]


def test_data_parallel_rejects_invalid_flag():
    with pytest.raises(ValueError, match="find_unused_parameters must be true or false, got 'maybe'"):
        distributed.data_parallel(TinyNetwork(), nn.Identity(), torch.device("cpu"), find_unused_parameters="maybe")
