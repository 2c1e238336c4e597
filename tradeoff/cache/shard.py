"""Sharded caching under `torchrun`: split the rows, compute, write shards, merge on rank 0.

`torchrun --nproc_per_node N -m tradeoff cache ...` starts N copies of the command with
WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set. Each copy loads the same
checkpoint and data, computes the logits of its own contiguous block of rows, writes them
atomically to `<out>.shard-<rank>-of-<world>.npz`, and rank 0 merges the shards into one
cache. Blocks start on the single-process run's batch boundaries, so every sample goes
through the network in exactly the batch it would have met in a single-process run: the
merged float32 logits are the same bytes (with the same thread count per process).
Across several machines the output directory must be on a file system they all see.

Nothing here knows about models: the caller passes a function that computes a block.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

from tradeoff.fileio import atomic_open

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# How long a collective may wait for the slowest process (skew between ranks, not run time).
COLLECTIVE_TIMEOUT = _dt.timedelta(hours=4)
_MESSAGE_BYTES = 1024


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a torchrun job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_torchrun(env: Mapping[str, str] | None = None) -> DistContext | None:
    """The torchrun context from the environment, or None for an ordinary single process.

    A world of one (`--nproc_per_node 1`) is an ordinary run.

    Raises:
        ValueError: if only some of torchrun's variables are set, or they are not integers.
    """
    env = os.environ if env is None else env
    present = [name for name in TORCHRUN_ENV if name in env]
    if not present:
        return None
    missing = [name for name in TORCHRUN_ENV if name not in env]
    if missing:
        raise ValueError(
            f"torchrun environment is incomplete: {', '.join(present)} set but {', '.join(missing)} not; "
            "launch with `torchrun --nproc_per_node N -m tradeoff cache ...` or unset these variables"
        )
    try:
        rank, world, local = (int(env[name]) for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError:
        got = {name: env[name] for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        raise ValueError(f"torchrun variables must be integers; got {got}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"torchrun variables are inconsistent: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}")
    if world == 1:
        return None
    return DistContext(rank=rank, world_size=world, local_rank=local)


def rank_rows(num_samples: int, batch_size: int, world_size: int) -> list[tuple[int, int]]:
    """Each rank's contiguous row range [start, stop), cut on batch boundaries.

    Cutting only between whole batches of the single-process run keeps every batch's
    contents identical to it (and so its logits); among those cuts the one nearest an
    equal share of rows is taken. With fewer batches than ranks some ranks get no rows.

    Raises:
        ValueError: if there are more ranks than samples.
    """
    if world_size > num_samples:
        raise ValueError(
            f"torchrun world size {world_size} is larger than the number of samples ({num_samples}); "
            f"use --nproc_per_node {max(1, num_samples)} or fewer"
        )
    num_batches = -(-num_samples // batch_size)
    cuts = [min(num_batches, int(r * num_samples / (world_size * batch_size) + 0.5)) for r in range(world_size)]
    cuts.append(num_batches)
    return [(min(a * batch_size, num_samples), min(b * batch_size, num_samples)) for a, b in zip(cuts, cuts[1:])]


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    """`<out>.shard-<rank>-of-<world>.npz`, beside the output so the rename stays on one disk."""
    out = Path(out)
    return out.with_name(f"{out.name}.shard-{rank}-of-{world_size}.npz")


def write_shard(path: Path, logits: np.ndarray, rows: tuple[int, int], key: str) -> None:
    """One rank's block: logits (K, rows, C) (or an empty (0, 0, 0) block), its rows, the run key."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, logits=logits, rows=np.asarray(rows, np.int64), key=np.array(key))


def read_shard(path: Path, rows: tuple[int, int], key: str) -> np.ndarray:
    """A shard's logits, after checking it belongs to this run and covers `rows`.

    Raises:
        ValueError: a missing, unreadable or stale shard (from another run).
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            got_key, got_rows, logits = str(archive["key"][()]), tuple(archive["rows"].tolist()), archive["logits"]
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise ValueError(
            f"shard {path} is missing or unreadable ({exc}); with several machines the output directory must be "
            "on a file system every process sees - rerun the torchrun command"
        ) from None
    if got_key != key or got_rows != tuple(rows) or logits.ndim != 3 or logits.shape[1] not in (0, rows[1] - rows[0]):
        raise ValueError(f"shard {path} belongs to another run (rows {got_rows}, expected {tuple(rows)}); rerun")
    return logits


def remove_shards(out: str | os.PathLike, world_size: int) -> None:
    for rank in range(world_size):
        with contextlib.suppress(FileNotFoundError):
            shard_path(out, rank, world_size).unlink()


@contextlib.contextmanager
def process_group(ctx: DistContext, device: str) -> Iterator[str]:
    """Join the torchrun job (gloo on CPU, NCCL on GPUs); yields this rank's device.

    Raises:
        ValueError: a device naming one GPU (each process takes cuda:LOCAL_RANK itself).
    """
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        if device != "cuda":
            raise ValueError(
                f"--device {device!r} under torchrun: give plain --device cuda; each process uses cuda:LOCAL_RANK"
            )
        if not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
        device = f"cuda:{ctx.local_rank}"
        torch.cuda.set_device(ctx.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size, timeout=COLLECTIVE_TIMEOUT)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def agree(ctx: DistContext, error: BaseException | None, device: str = "cpu") -> None:
    """A collective that doubles as a barrier: if any rank failed, every rank raises.

    The failing rank re-raises its own error; the others raise RuntimeError quoting the
    first failure, so each process ends with one line and a non-zero exit.
    """
    import torch
    import torch.distributed as dist

    message = b""
    if error is not None:
        message = (" ".join(str(error).split()) or type(error).__name__).encode()[: _MESSAGE_BYTES - 1]
    buffer = torch.zeros(_MESSAGE_BYTES, dtype=torch.uint8)
    if error is not None:
        buffer[0] = 1
        buffer[1 : 1 + len(message)] = torch.frombuffer(bytearray(message), dtype=torch.uint8)
    buffer = buffer.to(device)
    gathered = [torch.zeros_like(buffer) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, buffer)
    if error is not None:
        raise error
    for rank, row in enumerate(gathered):
        row = row.cpu()
        if row[0]:
            text = bytes(row[1:].numpy()).rstrip(b"\0").decode(errors="replace")
            raise RuntimeError(f"process {rank} of {ctx.world_size} failed: {text}")


@contextlib.contextmanager
def step(ctx: DistContext | None, device: str = "cpu") -> Iterator[None]:
    """Run a block on every rank and leave it together: if any rank failed, all raise.

    Every rank passes the same sequence of steps, so collectives always match, even when
    only one rank met bad data. Without a torchrun context this is a no-op.
    """
    if ctx is None:
        yield
        return
    try:
        yield
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        agree(ctx, exc, device)
        raise  # pragma: no cover - agree re-raises exc
    agree(ctx, None, device)


def barrier(ctx: DistContext, device: str = "cpu") -> None:
    """Wait for every rank, ignoring a broken job (used on the way out after an error)."""
    import torch
    import torch.distributed as dist

    with contextlib.suppress(RuntimeError, ValueError):
        dist.all_reduce(torch.zeros(1, device=device))


def run_sharded(
    ctx: DistContext,
    compute: Callable[[int, int], np.ndarray],
    rows: list[tuple[int, int]],
    out: str | os.PathLike,
    key: str,
    device: str = "cpu",
) -> np.ndarray | None:
    """Compute this rank's block, write its shard, wait for all; rank 0 returns the merge.

    Args:
        compute: (start, stop) -> (K, stop - start, C) logits of those rows.
        rows: every rank's [start, stop), from `rank_rows`.
        key: identifies this run (checkpoint, data, dtype); a shard with another key is refused.

    Returns:
        On rank 0 the merged (K, N, C) logits, identical in row order to one process's;
        None elsewhere. The shards are removed once merged (or on failure).
    """
    start, stop = rows[ctx.rank]
    path = shard_path(out, ctx.rank, ctx.world_size)
    try:
        with step(ctx, device):
            block = compute(start, stop) if stop > start else np.zeros((0, 0, 0), np.float32)
            write_shard(path, block, (start, stop), key)
            del block
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        raise
    if not ctx.is_main:
        return None
    try:
        return _merge(out, rows, key)
    finally:
        remove_shards(out, ctx.world_size)


def _merge(out, rows: list[tuple[int, int]], key: str) -> np.ndarray:
    """Fill one (K, N, C) array shard by shard, so peak memory is the result plus one shard."""
    world = len(rows)
    merged = None
    for rank, (start, stop) in enumerate(rows):
        if stop == start:
            continue
        block = read_shard(shard_path(out, rank, world), (start, stop), key)
        if merged is None:
            K, _, C = block.shape
            merged = np.empty((K, rows[-1][1], C), dtype=block.dtype)
        if block.shape[0] != merged.shape[0] or block.shape[2] != merged.shape[2] or block.dtype != merged.dtype:
            raise ValueError(f"shard of rank {rank} has shape {block.shape} {block.dtype}, unlike the others; rerun")
        merged[:, start:stop] = block
    if merged is None:  # pragma: no cover - rank_rows never leaves every rank empty
        raise ValueError("no shard holds any rows")
    return merged
