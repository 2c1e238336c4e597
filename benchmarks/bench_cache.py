"""Caching throughput: `build_cache` against a bare `model(x)` loop over the same batches.

`scan_resnet18` (100 classes, random weights, eval mode) at 32x32 on the CPU, random
inputs. Both sides run under `torch.inference_mode()` over the same batches, so the ratio
is the price of caching itself: copying every exit's logits into the preallocated
(K, N, C) array, the per-batch NaN/inf check, validation and the (disabled) progress bar.
The two take turns (A B B A ...), repeated, and medians are compared, because other work
shares the machine. Goal: caching throughput >= 95% of the bare loop's.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from benchmarks import interleaved_medians, make_row, median
from tradeoff.cache.build import build_cache
from tradeoff.data import Dataset
from tradeoff.flops import exit_costs
from tradeoff.models import create_model

GOAL = 0.95


def _random_dataset(n: int, num_classes: int, input_shape: tuple, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    return Dataset(
        name="random",
        spec="random",
        x=rng.standard_normal((n, *input_shape), dtype=np.float32),
        y=rng.integers(0, num_classes, n),
        split=np.where(np.arange(n) % 2 == 0, "val", "test"),
        num_classes=num_classes,
        input_shape=tuple(input_shape),
        fingerprint=f"random-{n}-{seed}",
    )


def run(quick: bool = False) -> list[dict]:
    # quick: the embedded scan_small on a few 8x8 inputs, to check the rows, not the speed.
    arch, classes, shape = ("scan_small", 10, (1, 8, 8)) if quick else ("scan_resnet18", 100, (3, 32, 32))
    n, batch, repeats = (8, 4, 1) if quick else (128, 64, 9)
    torch.manual_seed(0)
    model = create_model(arch, num_classes=classes).eval()
    dataset = _random_dataset(n, classes, shape)
    costs = exit_costs(model, dataset.input_shape)
    x = dataset.x

    def bare() -> None:
        with torch.inference_mode():
            for a in range(0, n, batch):
                model(torch.from_numpy(x[a : a + batch]))

    def cached() -> None:
        build_cache(model, dataset, costs, batch_size=batch, progress=False)

    times = interleaved_medians({"bare": bare, "cache": cached}, repeats=repeats, warmup=1)
    t_bare, t_cache = median(times["bare"]), median(times["cache"])
    ratio = t_bare / t_cache  # = cache throughput / bare throughput
    return [make_row(
        "cache",
        f"build_cache throughput (img/s), {arch} {'x'.join(map(str, shape[1:]))} CPU",
        n / t_cache,
        baseline=n / t_bare,
        ratio=ratio,
        goal=f"ratio >= {GOAL} (vs bare model(x) loop, same batches)",
        passed=None if quick else ratio >= GOAL,
        notes=f"N={n}, batch {batch}, {torch.get_num_threads()} threads, median of {repeats} interleaved runs, "
              f"1-min load average {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} CPUs"
              + (" (quick: timings not meaningful)" if quick else ""),
    )]


if __name__ == "__main__":  # pragma: no cover
    for row in run():
        print(row)
