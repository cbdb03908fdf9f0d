"""Training and evaluation over several processes started by ``torchrun``, with PyTorch's DistributedDataParallel.

``configs/multi_gpu_train.yaml`` and ``configs/multi_gpu_evaluate.yaml`` call these helpers. ``torchrun`` starts
one process per GPU (or per CPU worker) and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT``. Every process then builds the whole workflow from the same config. The process group uses NCCL
on GPUs and gloo on CPUs, and each process runs on the GPU numbered ``LOCAL_RANK``.

Who does what:

* Every process trains on its share of each epoch (``monai.data.DistributedSampler``) and validates its share of
  the validation cases, each case exactly once. MONAI's metrics gather the per-case values of all processes, so
  every process sees the metrics of the whole validation set.
* Rank 0 alone logs progress, tracks the run in MLflow and saves checkpoints (:func:`handlers_for_rank`).
* ``DistributedDataParallel`` averages the gradients of the network and of the loss's own parameters
  (:func:`data_parallel`). Losses that pool the batch combine their statistics across processes in
  :mod:`scripts.losses.distributed`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.data import DistributedSampler
from monai.handlers import (
    CheckpointSaver,
    MLFlowHandler,
    StatsHandler,
    TensorBoardImageHandler,
    TensorBoardStatsHandler,
)
from monai.utils import CommonKeys
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from .checkpoints import BestModelSaver
from .options import as_bool
from .tracking import MLflowTracker

logger = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

# Handlers that print, track or write files: in a distributed run only rank 0 keeps them.
MAIN_PROCESS_HANDLERS: tuple[type, ...] = (
    StatsHandler,
    CheckpointSaver,
    BestModelSaver,
    MLflowTracker,
    MLFlowHandler,
    TensorBoardStatsHandler,
    TensorBoardImageHandler,
)


def init_process_group(backend: str | None = None) -> None:
    """Join the process group that ``torchrun`` set up, and select this process's GPU.

    The backend is NCCL when CUDA is available and gloo otherwise. Processes other than rank 0 log warnings and
    errors only, so the console shows one copy of the progress. Does nothing when the group already exists.

    Args:
        backend: a ``torch.distributed`` backend name, to override the choice above.

    Raises:
        ValueError: when the process was not started by ``torchrun``.
    """
    if dist.is_initialized():
        return
    device = local_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    # Binding the GPU forms the NCCL communicator at once, so a broken GPU setup fails here and not mid-training.
    # NOTE: the test suite runs gloo on CPUs; this NCCL path is not covered by it.
    dist.init_process_group(backend=backend, device_id=device if device.type == "cuda" else None)
    if dist.get_rank() > 0:
        logging.getLogger().setLevel(logging.WARNING)
    logger.info("Process group of %d processes (%s backend) initialised.", dist.get_world_size(), backend)


def destroy_process_group() -> None:
    """Wait for every process, then leave the process group, if there is one.

    The barrier keeps a process from closing its connections while another one still finishes its last
    collective operation.
    """
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_device() -> torch.device:
    """Return this process's device: the GPU numbered ``LOCAL_RANK`` when CUDA is available, else the CPU.

    Raises:
        ValueError: when ``torchrun`` did not start this process, or when ``LOCAL_RANK`` exceeds the GPU count.
    """
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(
            f"the environment variables {', '.join(missing)} are not set, so this process was not started by "
            "torchrun. The multi_gpu_* overlays need one process per GPU: launch them with torchrun "
            "--nproc_per_node=N -m monai.bundle run --config_file \"['configs/train.yaml',"
            "'configs/multi_gpu_train.yaml']\" ..., or leave the overlay out to run in one process."
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK is {local_rank} but only {torch.cuda.device_count()} GPUs are visible; start at most "
            f"{torch.cuda.device_count()} processes per node (torchrun --nproc_per_node)."
        )
    return torch.device("cuda", local_rank)


def rank() -> int:
    """Return this process's global rank, 0 without a process group."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Return the number of processes, 1 without a process group."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class NetworkWithLoss(nn.Module):
    """The trained network and the loss in one module, so that DDP averages the gradients of both.

    DDP only averages the gradients of the module it wraps. A loss with trainable parameters (the robust T-loss's
    ``nu_tilde``) would otherwise learn a different value on every process. The forward pass runs the network
    alone; the trainer calls the loss afterwards, and DDP's hooks average the loss's gradients during the same
    backward pass.
    """

    def __init__(self, network: nn.Module, loss_function: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.loss_function = loss_function

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.network(*args, **kwargs)


def data_parallel(
    network: nn.Module, loss_function: nn.Module, device: torch.device, find_unused_parameters: bool | str = False
) -> DistributedDataParallel:
    """Wrap the trained network and the loss in ``DistributedDataParallel`` for the trainer.

    Validation and checkpoints keep using the plain network: it is the same module, so its weights are the
    synchronised ones.

    Args:
        network: the module the trainer runs (``train_network``: the network, or a wrapper with auxiliary heads).
        loss_function: the loss module; its trainable parameters are averaged like the network's.
        device: this process's device, from :func:`local_device`.
        find_unused_parameters: set ``True`` when some parameters get no gradient in some steps (a head that is
            switched off by a schedule); DDP then searches the graph in every step, which costs time. The strings
            ``"true"`` and ``"false"`` of a command line are accepted.
    """
    find_unused_parameters = as_bool("find_unused_parameters", find_unused_parameters)
    module = NetworkWithLoss(network, loss_function)
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def handlers_for_rank(handlers: Sequence[Any], main_process_handlers: Sequence[type] = MAIN_PROCESS_HANDLERS) -> list:
    """Return the handlers this process attaches: all of them on rank 0, on other ranks all but the reporting ones.

    Handlers that every process needs (validation, learning-rate schedules, loss schedules, checkpoint loading)
    stay on every rank. ``None`` entries are dropped.

    Args:
        handlers: the handlers of a trainer or an evaluator.
        main_process_handlers: the handler classes that only rank 0 attaches.
    """
    handlers = [handler for handler in handlers if handler is not None]
    if rank() == 0:
        return handlers
    return [handler for handler in handlers if not isinstance(handler, tuple(main_process_handlers))]


class AverageLossAcrossRanks:
    """Replace each iteration's loss output by its mean over the processes.

    Each process computes the loss of its own share of the batch. Attached before the handlers that read the loss,
    this lets rank 0 print and track the loss of the whole batch. It runs on every rank (one small all-reduce per
    iteration) and does nothing without a process group.
    """

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if world_size() == 1:
            return
        output = engine.state.output
        if not isinstance(output, dict) or CommonKeys.LOSS not in output:
            raise ValueError(
                f"AverageLossAcrossRanks expects the trainer's output to be a dict with a {CommonKeys.LOSS!r} "
                f"entry, got {type(output).__name__}; train with decollate: false."
            )
        mean = torch.as_tensor(output[CommonKeys.LOSS]).detach().clone()
        dist.all_reduce(mean)
        output[CommonKeys.LOSS] = mean / world_size()


def evaluation_sampler(dataset: Dataset) -> DistributedSampler:
    """Return a sampler that gives each process its share of the evaluation cases, every case exactly once.

    PyTorch's sampler repeats cases so that every process gets the same number, which would count them twice in
    the metrics; MONAI's sampler with ``even_divisible=False`` does not.

    Raises:
        ValueError: when there are fewer cases than processes, since a process without cases cannot take part in
            the gathering of the metrics.
    """
    num_cases = len(dataset)
    if num_cases < world_size():
        raise ValueError(
            f"torchrun started {world_size()} processes but the evaluation set has only {num_cases} case(s); every "
            f"process needs at least one case. Start at most {num_cases} processes (torchrun --nproc_per_node) "
            "or evaluate on more cases."
        )
    return DistributedSampler(dataset, even_divisible=False, shuffle=False)


def gather_case_ids(case_ids: Sequence[str]) -> tuple[list[str], list[int]]:
    """Gather the case ids of every process, in rank order, as MONAI's metrics gather their per-case values.

    Returns the gathered ids and the permutation that puts rank-order rows back in the order of the dataset. The
    permutation follows the assignment of :func:`evaluation_sampler`, where case ``i`` goes to rank ``i mod N``.
    Apply it to the ids and to the rows of ``engine.state.metric_details`` alike. In one process: the ids and the
    identity.
    """
    if world_size() == 1:
        return list(case_ids), list(range(len(case_ids)))
    per_rank: list[Any] = [None] * world_size()
    dist.all_gather_object(per_rank, list(case_ids))
    offsets = [0]
    for part in per_rank[:-1]:
        offsets.append(offsets[-1] + len(part))
    total = offsets[-1] + len(per_rank[-1])
    order = [offsets[index % world_size()] + index // world_size() for index in range(total)]
    return [case_id for part in per_rank for case_id in part], order


__all__ = [
    "MAIN_PROCESS_HANDLERS",
    "AverageLossAcrossRanks",
    "NetworkWithLoss",
    "data_parallel",
    "destroy_process_group",
    "evaluation_sampler",
    "gather_case_ids",
    "handlers_for_rank",
    "init_process_group",
    "local_device",
    "rank",
    "world_size",
]
