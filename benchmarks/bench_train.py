"""Data-parallel training: `torchrun --nproc_per_node 2 -m tradeoff train` against one process.

`scan_small` (the embedded default, SCAN self-distillation with the feature hint) on the
embedded digits train split (1,078 images, 8x8), global batch 128 (64 per process under
torchrun), Adam, 2 epochs, on the CPU with gloo; every process with one thread
(OMP_NUM_THREADS=1, MKL_NUM_THREADS=1). The real commands run as subprocesses, taking turns
(single, two, two, single, ...), repeated; medians are compared.

Two ratios, both reported (goal >= 1.6x for the training loop):
  * training loop: images trained per second from the seconds the command reports
    ("... in X s": every epoch's steps, the validation pass and the checkpoint writes);
  * whole command: wall time from launch to exit (interpreter, torch and process-group
    start-up, data loading included), which a run this short is dominated by.
The machine is shared with other work while this runs; the notes give the load average.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import make_row, median
from benchmarks.bench_shard import _env, _free_port

GOAL = 1.6
_SAVED = re.compile(r"in ([0-9.]+) s")


def _timed(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, reported training-loop seconds) of one command run."""
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed: {done.stderr.strip()[-500:]}")
    found = [line for line in done.stdout.splitlines() if line.startswith("saved ")]
    if not found or not _SAVED.search(found[-1]):
        raise RuntimeError(f"no 'saved ... in X s' line in the output: {done.stdout[-300:]}")
    return wall, float(_SAVED.search(found[-1]).group(1))


def run(quick: bool = False) -> list[dict]:
    # quick: one epoch, one round, to check the rows, not the speed.
    epochs, repeats, batch, n_train = (1, 1, 128, 1078) if quick else (2, 3, 128, 1078)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        base = ["-m", "tradeoff", "train", "--arch", "scan_small", "--data", "digits", "--epochs", str(epochs),
                "--batch-size", str(batch), "--threads", "1", "--no-progress"]

        def single(out):
            return _timed([sys.executable, *base, "--out", out], tmp)

        def two(out):
            launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
            return _timed([*launcher, *base, "--out", out], tmp)

        times = {single: [], two: []}
        for r in range(repeats):
            for fn in ((single, two) if r % 2 == 0 else (two, single)):
                times[fn].append(fn(f"{fn.__name__}.pt"))
    load = os.getloadavg()[0]
    images = epochs * n_train
    rows = []
    for i, phase in ((1, "training loop (reported)"), (0, "whole command (wall)")):
        t_one = median(t[i] for t in times[single])
        t_two = median(t[i] for t in times[two])
        ratio = t_one / t_two  # = 2-process throughput / 1-process throughput
        rows.append(make_row(
            "train",
            f"2-process torchrun training throughput (img/s), {phase}, scan_small",
            images / t_two,
            baseline=images / t_one,
            ratio=ratio,
            goal=f"ratio >= {GOAL} (vs one process; one thread each)" if i == 1 else "reported only",
            passed=None if quick or i == 0 else ratio >= GOAL,
            notes=f"digits train split {n_train} x 8x8, {epochs} epochs, global batch {batch}, gloo on CPU, median "
                  f"of {repeats} interleaved runs (seconds: one process {[round(t[i], 1) for t in times[single]]}, "
                  f"two {[round(t[i], 1) for t in times[two]]}); machine shared with other work: 1-min load "
                  f"average {load:.1f} at the end on {os.cpu_count()} CPUs"
                  + (" (quick: timings not meaningful)" if quick else ""),
        ))
    return rows


if __name__ == "__main__":  # pragma: no cover
    for row in run():
        print(row)
