"""Batch pooling across the processes of a distributed run, with gradients.

Under ``DistributedDataParallel`` (DDP) every process computes the loss on its own share of the batch, and DDP
averages the parameter gradients over the processes. For a loss that is a mean of per-sample terms this equals the
gradient on the combined batch. A loss that pools the batch first is not a mean of per-process values: batch Dice
sums, a global voxel mean, a global top-k selection or a batch-wide Lovász sort need the statistics of the whole
batch in every process.

Inside :func:`pool_across_ranks` the helpers below combine a tensor over the processes:
:func:`sum_across_ranks` adds it and :func:`gather_across_ranks` concatenates it along dimension 0. Both carry
gradients. With ``N`` processes every process then computes the same loss ``L`` of the pooled statistics, and
the backward pass of the sum (or gather) hands each process ``N`` times the gradient of ``L`` with respect to its
own share. DDP divides by ``N``, so the parameter gradient equals that of one process on the combined batch.

Outside the context, with no process group, or with a single process, both helpers return their input
unchanged, so single-process training runs the same code as before. The training engine
(:class:`scripts.engine.LossAdapter`) opens the context around every loss call. Every process must then call the
loss the same number of times with the same options, as DDP already requires: each helper is a collective
operation that waits for all processes.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

_POOLING = contextvars.ContextVar("pool_across_ranks", default=False)


@contextlib.contextmanager
def pool_across_ranks() -> Iterator[None]:
    """Let :func:`sum_across_ranks` and :func:`gather_across_ranks` combine tensors over the processes."""
    token = _POOLING.set(True)
    try:
        yield
    finally:
        _POOLING.reset(token)


def pooling_across_ranks() -> bool:
    """Return ``True`` inside :func:`pool_across_ranks` when a process group of two or more processes exists."""
    return _POOLING.get() and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def sum_across_ranks(tensor: Tensor) -> Tensor:
    """Return the sum of ``tensor`` over the processes, with gradients; ``tensor`` itself when not pooling.

    Every process must pass a tensor of the same shape and dtype.
    """
    if not pooling_across_ranks():
        return tensor
    return _SumAcrossRanks.apply(tensor)


def gather_across_ranks(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` over the processes along dimension 0, in rank order, with gradients.

    Returns ``tensor`` itself when not pooling. Every process must pass a tensor of the same shape and dtype,
    for example the per-voxel errors of equal-sized patches.
    """
    if not pooling_across_ranks():
        return tensor
    return _GatherAcrossRanks.apply(tensor)


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward pass sums the gradients of the identical outputs of every process."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        total = tensor.detach().clone().contiguous()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        # Each process's share enters every process's output, so its gradient is the sum of all output gradients.
        grad = grad_output.detach().clone().contiguous()
        dist.all_reduce(grad)
        return grad


class _GatherAcrossRanks(torch.autograd.Function):
    """All-gather along dimension 0 whose backward pass returns each process the summed gradient of its slice."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        tensor = tensor.detach().contiguous()
        world_size = dist.get_world_size()
        pieces = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(pieces, tensor)
        ctx.rank = dist.get_rank()
        ctx.length = tensor.shape[0]
        return torch.cat(pieces, dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        # An all-reduce of the whole gradient, then this process's slice: a reduce-scatter that gloo also runs.
        grad = grad_output.detach().clone().contiguous()
        dist.all_reduce(grad)
        start = ctx.rank * ctx.length
        return grad[start : start + ctx.length]


__all__ = ["gather_across_ranks", "pool_across_ranks", "pooling_across_ranks", "sum_across_ranks"]
