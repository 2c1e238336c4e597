"""Sharded caching: `torchrun --nproc_per_node 2 -m tradeoff cache` against one process.

`scan_resnet18` (100 classes, random weights) on 2,048 random 32x32 images (an `npz:`
dataset; the default half/half val/test split keeps all of them), batch 64, on the CPU,
every process with one thread (OMP_NUM_THREADS=1 and MKL_NUM_THREADS=1, which torch
takes as its intra-op thread count). The real commands run as subprocesses, taking
turns (single, sharded, sharded, single, ...), repeated; medians are compared.

Two ratios, both reported (goal >= 1.6x for each):
  * whole command: wall time of the command from launch to exit, everything included
    (interpreter and torch start-up in every process, checkpoint and data loading, the
    fvcore count, shard writing, merging, the final atomic write);
  * compute phase: the seconds the command itself reports ("cached N rows ... in X s"):
    in one process, `build_cache` (every batch's forward pass and copy-out); under
    torchrun, from the start of computing until every shard is written, agreed on and
    merged by rank 0.
The merged cache's logits are also checked to be byte-identical to the single-process one.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import make_row, median
from tradeoff.checkpoint import save_checkpoint
from tradeoff.models import create_model

GOAL = 1.6
ROOT = Path(__file__).resolve().parents[1]
_CACHED = re.compile(r"cached (\d+) rows(?: on \d+ processes)? in ([0-9.]+) s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, reported compute seconds) of one command run."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: {done.stderr.strip()[-500:]}")
    found = _CACHED.search(done.stdout)
    if found is None:
        raise RuntimeError(f"no 'cached ... in X s' line in the output: {done.stdout[-300:]}")
    return wall, float(found.group(2))


def run(quick: bool = False) -> list[dict]:
    # quick: scan_small on 64 8x8 inputs, one round, to check the rows, not the speed.
    arch, classes, shape = ("scan_small", 10, (1, 8, 8)) if quick else ("scan_resnet18", 100, (3, 32, 32))
    n, batch, repeats = (64, 16, 1) if quick else (2048, 64, 5)
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        save_checkpoint(tmp / "model.pt", create_model(arch, num_classes=classes), arch=arch,
                        arch_kwargs={}, num_classes=classes, data=None)
        rng = np.random.default_rng(0)
        np.savez(tmp / "data.npz", x=rng.standard_normal((n, *shape), dtype=np.float32),
                 y=rng.integers(0, classes, n))
        base = ["-m", "tradeoff", "cache", "--ckpt", "model.pt", "--data", "npz:data.npz", "--batch-size", str(batch)]

        def single(out):
            return _timed([sys.executable, *base, "--out", out], tmp)

        def sharded(out):
            launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
            return _timed([*launcher, *base, "--out", out], tmp)

        times = {single: [], sharded: []}
        identical = None
        for r in range(repeats):
            for fn in ((single, sharded) if r % 2 == 0 else (sharded, single)):
                times[fn].append(fn(f"{fn.__name__}.npz"))
            if identical is None:
                with np.load(tmp / "single.npz") as a, np.load(tmp / "sharded.npz") as b:
                    identical = a["logits"].tobytes() == b["logits"].tobytes()
            for name in ("single.npz", "sharded.npz"):
                (tmp / name).unlink()
    load = os.getloadavg()[0]
    rows = []
    for i, phase in enumerate(("whole command (wall)", "compute phase (reported)")):
        t_one = median(t[i] for t in times[single])
        t_two = median(t[i] for t in times[sharded])
        ratio = t_one / t_two  # = 2-process throughput / 1-process throughput
        rows.append(make_row(
            "shard",
            f"2-process torchrun caching throughput (img/s), {phase}, {arch}",
            n / t_two,
            baseline=n / t_one,
            ratio=ratio,
            goal=f"ratio >= {GOAL} (vs one process; one thread each)",
            passed=None if quick else ratio >= GOAL,
            notes=f"N={n} {'x'.join(map(str, shape[1:]))}, batch {batch}, gloo on CPU, median of {repeats} "
                  f"interleaved runs (seconds: one process {[round(t[i], 1) for t in times[single]]}, two "
                  f"{[round(t[i], 1) for t in times[sharded]]}); merged logits byte-identical to one process: "
                  f"{identical}; 1-min load average {load:.1f} at the end on {os.cpu_count()} CPUs"
                  + (" (quick: timings not meaningful)" if quick else ""),
        ))
    return rows


if __name__ == "__main__":  # pragma: no cover
    for row in run():
        print(row)
