"""Data-parallel training with ``torch.distributed``: process group from torchrun's environment,
rank-aware helpers and the per-rank shard of a global batch.

    torchrun --nproc_per_node=2 -m mfli.train ../shared/datasets/ml-latest-small --out runs/ml   # mfli.train.main

Every rank builds the same deterministic global batch (same seed, same sampler calls) and trains on
its contiguous shard ``shard_bounds(n, rank, world)``; DistributedDataParallel averages gradients,
so a step minimises the mean over shards of the per-shard loss. In-batch softmax negatives are the
shard's own rows, so a ``world``-rank run equals a single process with
``TrainConfig(batch_shards=world)`` on the same global batch (not the unsharded loss: the softmax
does not decompose over rows). The codebook's observation buffer is all-gathered and its usage
counts summed, so k-means initialisation and dead-code re-seeding see the global batch; rank 0's
codebook is then broadcast so every rank holds bit-identical codewords.

Backend: gloo on CPU, nccl on CUDA. Without torchrun (no ``WORLD_SIZE`` > 1) everything here is a
no-op and training is the plain single-process loop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world``, ``local_rank`` on its host."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """Rank/world/local rank from torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (default 0/1/0)."""
    return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                    int(os.environ.get("LOCAL_RANK", "0")))  # fmt: skip


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init(device: torch.device) -> DistInfo:
    """Join the process group when launched with WORLD_SIZE > 1 (idempotent); return this rank's info.

    On CUDA each rank takes GPU ``LOCAL_RANK``.
    """
    info = env_info()
    if not info.enabled:
        return info
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend_for(device), rank=info.rank, world_size=info.world)
    return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank)


def current() -> DistInfo:
    """Info of the initialised process group, or the single-process default."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of shard ``rank`` when n rows are split into ``world`` contiguous shards
    whose sizes differ by at most one (the first ``n % world`` shards get the extra row)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x (n_r, ...)`` of every rank in rank order (sizes may differ); no gradient."""
    world = dist.get_world_size()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    top = max(sizes_i)
    padded = x.new_zeros((top, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes_i)])


class LossModule(nn.Module):
    """``forward(batch, quantise) = model.loss(batch, quantise)``: DDP syncs gradients of what its
    wrapped module's ``forward`` produced, and MFLIModel's entry point is ``loss``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch, quantise: bool = True):
        return self.model.loss(batch, quantise=quantise)


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """DistributedDataParallel around :class:`LossModule` (``find_unused_parameters``: codebook layers
    that are off and facets without pairs get no gradient in a step). Buffers are not broadcast:
    the codebook buffers are kept in step by :func:`sync_codebook_state` instead."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(LossModule(model), device_ids=ids, find_unused_parameters=True,
                                   broadcast_buffers=False)  # fmt: skip


def gathered_observe(rq: nn.Module):
    """A replacement for ``rq.observe`` that pushes every rank's rows (rank order) into each rank's
    buffer, so the k-means/re-seeding input equals a single process's over the whole global batch."""
    original = rq.observe

    def observe(x: torch.Tensor, item_ids: torch.Tensor | None = None) -> None:
        x = x.detach()
        if item_ids is None:
            item_ids = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        original(all_gather_rows(x), all_gather_rows(item_ids.to(x.device)))

    return observe


@torch.no_grad()
def sync_usage(rq: nn.Module, before: torch.Tensor) -> None:
    """Make ``rq.usage`` ``before`` + the step's counts summed over ranks (each rank counted its own
    shard), so dead-code decisions see the global batch; ``before`` is the usage before the step."""
    delta = rq.usage - before
    dist.all_reduce(delta, op=dist.ReduceOp.SUM)
    rq.usage.copy_(before + delta)


@torch.no_grad()
def sync_codebook_state(rq: nn.Module) -> None:
    """Broadcast rank 0's codewords and active-layer count: k-means and re-seeding then run once in
    effect, whatever float noise separates the ranks' buffers."""
    dist.broadcast(rq.codebooks.data, src=0)
    dist.broadcast(rq.active, src=0)
