"""Training under torchrun: who sees which rows, DistributedDataParallel, reduced metrics.

The job itself (torchrun's environment, the process group, every rank failing together) is
`tradeoff.cache.shard`'s; this module adds what training needs on top of it:

- `rank_batches`: PyTorch's `DistributedSampler` (reshuffled per epoch with `set_epoch`)
  cut into per-rank batches of global_batch / N rows. Rank r's i-th batch holds the rows
  r, r + N, r + 2N, ... of the single-process run's i-th batch, so the N ranks together
  see exactly the one-process batches (when N divides the train split; otherwise the
  sampler repeats up to N - 1 rows per epoch, as PyTorch's does).
- `wrap_ddp`: DistributedDataParallel around the module that computes the loss, so the
  family's objective runs inside DDP's forward and every gradient is averaged across ranks.
- `sum_across`: metrics summed over ranks (losses, correct counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tradeoff.cache.shard import DistContext


@dataclass(frozen=True)
class Placement:
    """This process's place in the job: context (None alone), device and per-rank batch."""

    ctx: DistContext | None
    device: torch.device
    local_batch: int

    @property
    def world_size(self) -> int:
        return 1 if self.ctx is None else self.ctx.world_size

    @property
    def rank(self) -> int:
        return 0 if self.ctx is None else self.ctx.rank

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def per_rank_batch(global_batch: int, world_size: int, num_train: int) -> int:
    """global_batch / world_size, refusing what cannot keep the single-process batches.

    Raises:
        ValueError: more processes than train rows, or a global batch N does not divide.
    """
    if world_size > num_train:
        raise ValueError(f"torchrun world size {world_size} is larger than the train split ({num_train} rows); "
                         f"use --nproc_per_node {num_train} or fewer")
    if global_batch % world_size:
        lower = global_batch - global_batch % world_size
        raise ValueError(f"--batch-size {global_batch} is the global batch and must divide evenly over the "
                         f"{world_size} processes; use --batch-size {max(lower, world_size)} or "
                         f"{lower + world_size}")
    return global_batch // world_size


def rank_batches(num_rows: int, place: Placement, seed: int, epoch: int) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """This rank's batches of one epoch: (row indices, global batch size, positions in it).

    The positions say which of the global batch's random augmentation draws are this
    rank's (`schedules.augment(..., draws=, take=)`).
    """
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(num_rows), num_replicas=place.world_size, rank=place.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(iter(sampler)), dtype=torch.long)
    out = []
    for start in range(0, len(order), place.local_batch):
        idx = order[start:start + place.local_batch]
        draws = len(idx) * place.world_size
        out.append((idx, draws, torch.arange(place.rank, draws, place.world_size)))
    return out


def sum_across(place: Placement, values: list[float]) -> list[float]:
    """`values` summed over every rank (unchanged in a single process)."""
    if place.ctx is None:
        return list(values)
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=place.device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def broadcast_buffers(place: Placement, model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    Without SyncBatchNorm each rank's running statistics follow its own rows; evaluation and
    the checkpoint use rank 0's, as DDP's own `broadcast_buffers` does at each forward.
    """
    if place.ctx is None:
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def use_sync_batchnorm(model: nn.Module) -> int:
    """Turn every BatchNorm of `model` into a SyncBatchNorm IN PLACE; returns how many.

    Unlike `nn.SyncBatchNorm.convert_sync_batchnorm`, which builds new modules, the modules
    keep their identity: families that hold their layers in cached stage lists (SCAN,
    SideNet) keep computing with the converted ones. State_dict keys do not change.

    Raises:
        ValueError: a model that applies BatchNorm functionally (Adjoined / DAN's small
            network shares the large one's BN parameters), which SyncBatchNorm cannot reach.
    """
    from tradeoff.models.adjoined import AdjoinedNet

    if isinstance(model, AdjoinedNet):
        raise ValueError("--sync-bn: an Adjoined network's small path applies the shared BatchNorm functionally "
                         "with its own statistics, which SyncBatchNorm cannot synchronise; train it without --sync-bn")
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
            module.__class__ = nn.SyncBatchNorm
            module.process_group = None
            count += 1
    return count


def wrap_ddp(module: nn.Module, place: Placement) -> nn.Module:
    """DistributedDataParallel around `module` under torchrun; `module` itself alone."""
    if place.ctx is None:
        return module
    import warnings

    from torch.nn.parallel import DistributedDataParallel

    # A 1x1 convolution's gradient may come back with channels-last strides; DDP then copies
    # it into its bucket and says so once per process. A performance note, not a problem.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ids = [place.device.index] if place.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids, output_device=ids[0] if ids else None)
