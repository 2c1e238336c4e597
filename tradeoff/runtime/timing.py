"""Wall-clock timing of the early-exit runner against the original network, side by side.

`measure_latency` times the early-exit runner and the original network (sections 1..K
and head K only) interleaved, and reports medians.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from tradeoff.runtime.early_exit import EarlyExitModel


@dataclass(frozen=True)
class Latency:
    """Per-sample wall time of the early-exit runner and of the original network.

    Measured side by side: each repeat times one full pass of each over the same
    pre-sliced batches, in alternating order, after `warmup` untimed passes.

    Attributes:
        latency_ms: median over repeats of (pass time / samples), early exit, ms.
        baseline_latency_ms: the same for the deepest exit alone, ms.
        passes_ms: (repeats,) per-sample ms of each early-exit pass.
        baseline_passes_ms: (repeats,) per-sample ms of each baseline pass.
        batch_size: samples per forward call.
        num_samples: samples per pass.
        mkldnn: whether the early-exit passes ran on oneDNN (the faster backend for it).
        baseline_mkldnn: the same for the original network.
    """

    latency_ms: float
    baseline_latency_ms: float
    passes_ms: tuple
    baseline_passes_ms: tuple
    batch_size: int
    num_samples: int
    mkldnn: bool = True
    baseline_mkldnn: bool = True

    @property
    def measured_speedup(self) -> float:
        return self.baseline_latency_ms / self.latency_ms


def make_batches(x, batch_size: int) -> list[torch.Tensor]:
    """Contiguous float32 batches cut once, so slicing is never inside a timed pass."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    x = torch.as_tensor(x)
    return [x[i : i + batch_size].contiguous() for i in range(0, x.shape[0], batch_size)]


@contextlib.contextmanager
def mkldnn_enabled(enabled: bool):
    """Use oneDNN convolutions or not within the block, then restore the setting.

    (`torch.backends.mkldnn.flags` also sets oneDNN's TF32 mode, which warns on CPU builds.)
    """
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def measure_latency(runner: EarlyExitModel, x, *, batch_size: int = 1, repeats: int = 5, warmup: int = 1,
                    tune_backend: bool = True, progress: bool = False) -> Latency:
    """Time `runner` and `runner.deepest` over all of x (N, ...), interleaved.

    Each side runs on its faster CPU convolution backend when `tune_backend`: oneDNN
    (mkldnn) or PyTorch's native kernels, chosen by timing a pass of each after warm-up.
    On small inputs at batch 1 the native kernels can be several times faster (oneDNN's
    transposed convolution costs ~4x the native one on an 8x8 map), and a deployment
    would pick the faster one for each network, so the comparison does too.

    Args:
        runner: the early-exit model.
        x: inputs (N, ...), a tensor or array.
        batch_size: samples per call (1 = the deployment latency case).
        repeats: timed passes of each; the median is reported (robust to noise from
            other processes on the machine).
        warmup: untimed passes of each first (allocator, oneDNN primitive caches).
        tune_backend: choose oneDNN on/off per side (else the process's setting).
        progress: a tqdm bar over the passes, to stderr.

    Returns:
        `Latency`, in milliseconds per sample.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1; got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0; got {warmup}")
    batches = make_batches(x, batch_size)
    n = sum(b.shape[0] for b in batches)
    if n == 0:
        raise ValueError("no samples to time: the data split is empty")
    sides = {"early": runner.forward, "deep": runner.deepest}
    default = torch.backends.mkldnn.enabled
    choices = (True, False) if tune_backend and torch.backends.mkldnn.is_available() else (default,)

    def one_pass(fn, mkldnn: bool) -> float:
        with mkldnn_enabled(mkldnn), torch.inference_mode():
            start = time.perf_counter()
            for batch in batches:
                fn(batch)
            return (time.perf_counter() - start) * 1e3 / n

    for _ in range(warmup):
        for fn in sides.values():
            for flag in choices:
                one_pass(fn, flag)
    backend = {}
    for name, fn in sides.items():
        trial = {flag: min(one_pass(fn, flag) for _ in range(2)) for flag in choices} if len(choices) > 1 else {default: 0}
        backend[name] = min(trial, key=trial.get)
    times = {"early": [], "deep": []}
    rounds = range(repeats)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=f"timing (batch {batch_size})", unit="repeat", file=sys.stderr, leave=False)
    for r in rounds:
        for name in ("early", "deep") if r % 2 == 0 else ("deep", "early"):
            times[name].append(one_pass(sides[name], backend[name]))
    return Latency(
        latency_ms=statistics.median(times["early"]),
        baseline_latency_ms=statistics.median(times["deep"]),
        passes_ms=tuple(times["early"]),
        baseline_passes_ms=tuple(times["deep"]),
        batch_size=batch_size,
        num_samples=n,
        mkldnn=backend["early"],
        baseline_mkldnn=backend["deep"],
    )


def run_early_exit(runner: EarlyExitModel, x, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (N,) and exits (N,) over all of x, as NumPy int64 arrays."""
    preds, exits = [], []
    for batch in make_batches(x, batch_size):
        out = runner(batch)
        preds.append(out.predictions.numpy())
        exits.append(out.exits.numpy())
    return np.concatenate(preds), np.concatenate(exits)
