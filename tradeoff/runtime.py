"""Real early-exit inference: the chosen thresholds run on the model, and we time it.

`EarlyExitModel` walks a model's `stages()` (models/base.py): section k runs only on the
samples still in flight, head k scores them, the confident ones leave and the batch
shrinks, so no sample ever pays for a section deeper than its exit. Where a sample
leaves is decided by the very NumPy functions the search scored with
(`policy.softmax` + `policy.confidence_of`, float64, with the same temperatures and
ensemble rule), applied to the head's logits: a float32 torch softmax could round a
confidence to the other side of a threshold that the search put exactly on it (a
quantile of the val confidences, say). On these small (n, C) arrays NumPy is also
cheaper per call than torch, which matters at batch size 1.

`measure_latency` times the early-exit runner and the original network (sections 1..K
and head K only) side by side, interleaved, and reports medians; `run_command` is what
`tradeoff run` does.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from tradeoff.policy import CONFIDENCE_MEASURES, confidence_of, softmax


class EarlyExitOutput(NamedTuple):
    """What the runner returns for a batch of N samples.

    Attributes:
        predictions: (N,) int64 class each sample was given at its exit.
        exits: (N,) int64 0-based exit each sample left at.
    """

    predictions: torch.Tensor
    exits: torch.Tensor


def model_stages(model: nn.Module) -> list:
    """The model's K (section, head) pairs, or a clear error if it has none."""
    stages_fn = getattr(model, "stages", None)
    if not callable(stages_fn):
        raise ValueError(
            f"model {type(model).__name__} has no stages(); early-exit inference needs its sections and heads - "
            "implement stages() returning K (section, head) pairs (see tradeoff/models/base.py)"
        )
    try:
        stages = list(stages_fn())
    except NotImplementedError as exc:
        raise ValueError(f"model {type(model).__name__}: {exc}; see tradeoff/models/base.py") from None
    if len(stages) < 2:
        raise ValueError(f"model {type(model).__name__} has {len(stages)} stage(s); early exit needs at least 2 exits")
    for k, stage in enumerate(stages):
        if len(stage) != 2 or not all(callable(part) for part in stage):
            raise ValueError(f"model {type(model).__name__}: stages()[{k}] must be a (section, head) pair of modules")
    return stages


class EarlyExitModel(nn.Module):
    """Runs a multi-exit model the way it is deployed: each sample stops at its exit.

    A sample leaves at the first exit k < K whose confidence is >= thresholds[k]; the
    deepest exit answers the rest. Decisions are exactly those of
    `policy.exit_indices(policy.exit_table(logits, ...), thresholds)` on the logits the
    heads produce. The wrapped model is put in eval mode (batch norm uses its running
    statistics, so a sample's logits do not depend on its batch-mates).

    Args:
        model: a module with `stages()` returning K (section, head) pairs.
        thresholds: (K-1,) confidences in [0, 1], shallow -> deep.
        confidence: "maxprob", "margin" or "entropy" (DESIGN.md).
        ensemble: exit k answers with the mean softmax of exits 1..k and measures its
            confidence on that mean.
        temperatures: (K,) positive per-exit calibration temperatures, or None.

    Raises:
        ValueError: a model without stages, thresholds of the wrong length or outside
            [0, 1], an unknown confidence measure, bad temperatures.
    """

    def __init__(self, model: nn.Module, thresholds, *, confidence: str = "maxprob", ensemble: bool = False,
                 temperatures=None):
        super().__init__()
        stages = model_stages(model)
        K = len(stages)
        t = np.asarray(thresholds, dtype=np.float64)
        if t.shape != (K - 1,):
            raise ValueError(
                f"thresholds must hold K-1 = {K - 1} numbers for this {K}-exit model; got shape {t.shape} - "
                "were they searched on another model?"
            )
        if not np.all((t >= 0.0) & (t <= 1.0)):
            raise ValueError(f"thresholds must lie in [0, 1]; got {t.tolist()}")
        if confidence not in CONFIDENCE_MEASURES:
            raise ValueError(f"confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {confidence!r}")
        temps = np.ones(K) if temperatures is None else np.asarray(temperatures, dtype=np.float64)
        if temps.shape != (K,) or not np.all(np.isfinite(temps)) or np.any(temps <= 0):
            raise ValueError(f"temperatures must be {K} positive numbers, one per exit; got {np.ravel(temps).tolist()}")
        self.model = model.eval()
        self.num_exits = K
        self.confidence = confidence
        self.ensemble = bool(ensemble)
        # Plain lists: the modules are already registered under `self.model`.
        self._sections = [stage[0] for stage in stages]
        self._heads = [stage[1] for stage in stages]
        # NumPy float64 scalars, exactly what exit_table divides by and compares with.
        self._thresholds = list(t) + [None]
        self._temps = list(temps)

    @property
    def thresholds(self) -> np.ndarray:
        return np.array(self._thresholds[:-1], dtype=np.float64)

    def train(self, mode: bool = True):
        """Stays in eval mode: early exit is an inference-time rule."""
        if mode:
            raise ValueError("EarlyExitModel is for inference only; train the wrapped model itself")
        return super().train(False)

    def _probs(self, k: int, logits: torch.Tensor, running):
        """(n, C) float64 probabilities exit k answers with, and the new ensemble sum."""
        probs = softmax(logits.numpy(), self._temps[k])
        if self.ensemble:
            running = probs if running is None else running + probs
            probs = running / (k + 1)
        return probs, running

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> EarlyExitOutput:
        """Early-exit predictions for a batch x (N, ...).

        Returns:
            EarlyExitOutput(predictions (N,) int64, exits (N,) int64).
        """
        if x.shape[0] == 1:
            return self._forward_one(x)
        n = x.shape[0]
        predictions = np.empty(n, dtype=np.int64)
        exits = np.empty(n, dtype=np.int64)
        alive = np.arange(n)  # original row of each sample still in flight
        running = None
        last = self.num_exits - 1
        for k in range(self.num_exits):
            x = self._sections[k](x)
            probs, running = self._probs(k, self._heads[k](x), running)
            answer = probs.argmax(axis=-1)
            if k == last:
                predictions[alive] = answer
                exits[alive] = k
                break
            leave = confidence_of(probs, self.confidence) >= self._thresholds[k]
            if leave.any():
                gone = alive[leave]
                predictions[gone] = answer[leave]
                exits[gone] = k
                stay = np.flatnonzero(~leave)
                if stay.size == 0:
                    break
                alive = alive[stay]
                x = x.index_select(0, torch.from_numpy(stay))
                if running is not None:
                    running = running[stay]
        return EarlyExitOutput(torch.from_numpy(predictions), torch.from_numpy(exits))

    def _forward_one(self, x: torch.Tensor) -> EarlyExitOutput:
        """Batch size 1: no masks, no index bookkeeping; stop at the first confident exit."""
        running = None
        last = self.num_exits - 1
        for k in range(self.num_exits):
            x = self._sections[k](x)
            probs, running = self._probs(k, self._heads[k](x), running)
            if k == last or confidence_of(probs, self.confidence)[0] >= self._thresholds[k]:
                return EarlyExitOutput(torch.tensor([int(probs[0].argmax())]), torch.tensor([k]))
        raise AssertionError("unreachable: the deepest exit always answers")  # pragma: no cover

    @torch.inference_mode()
    def deepest(self, x: torch.Tensor) -> torch.Tensor:
        """The original single-exit network: sections 1..K and head K only.

        Returns:
            (N,) int64 predictions of the deepest exit (argmax of its logits).
        """
        for section in self._sections:
            x = section(x)
        return self._heads[-1](x).argmax(dim=-1)


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
    """

    latency_ms: float
    baseline_latency_ms: float
    passes_ms: tuple
    baseline_passes_ms: tuple
    batch_size: int
    num_samples: int

    @property
    def measured_speedup(self) -> float:
        return self.baseline_latency_ms / self.latency_ms


def make_batches(x, batch_size: int) -> list[torch.Tensor]:
    """Contiguous float32 batches cut once, so slicing is never inside a timed pass."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1; got {batch_size}")
    x = torch.as_tensor(x)
    return [x[i : i + batch_size].contiguous() for i in range(0, x.shape[0], batch_size)]


def measure_latency(runner: EarlyExitModel, x, *, batch_size: int = 1, repeats: int = 5, warmup: int = 1,
                    progress: bool = False) -> Latency:
    """Time `runner` and `runner.deepest` over all of x (N, ...), interleaved.

    Args:
        runner: the early-exit model.
        x: inputs (N, ...), a tensor or array.
        batch_size: samples per call (1 = the deployment latency case).
        repeats: timed passes of each; the median is reported (robust to noise from
            other processes on the machine).
        warmup: untimed passes of each first (allocator, oneDNN primitive caches).
        progress: a tqdm bar over the passes, to stderr.

    Returns:
        `Latency`, in milliseconds per sample.
    """
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1; got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0; got {warmup}")
    batches = make_batches(x, batch_size)
    n = sum(b.shape[0] for b in batches)
    if n == 0:
        raise ValueError("no samples to time: the data split is empty")
    early, deep = runner.forward, runner.deepest

    def one_pass(fn) -> float:
        start = time.perf_counter()
        for batch in batches:
            fn(batch)
        return (time.perf_counter() - start) * 1e3 / n

    for _ in range(warmup):
        one_pass(early)
        one_pass(deep)
    early_ms, deep_ms = [], []
    rounds = range(repeats)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc=f"timing (batch {batch_size})", unit="repeat", file=sys.stderr, leave=False)
    for r in rounds:
        if r % 2 == 0:
            early_ms.append(one_pass(early))
            deep_ms.append(one_pass(deep))
        else:
            deep_ms.append(one_pass(deep))
            early_ms.append(one_pass(early))
    return Latency(
        latency_ms=statistics.median(early_ms),
        baseline_latency_ms=statistics.median(deep_ms),
        passes_ms=tuple(early_ms),
        baseline_passes_ms=tuple(deep_ms),
        batch_size=batch_size,
        num_samples=n,
    )


def run_early_exit(runner: EarlyExitModel, x, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Predictions (N,) and exits (N,) over all of x, as NumPy int64 arrays."""
    preds, exits = [], []
    for batch in make_batches(x, batch_size):
        out = runner(batch)
        preds.append(out.predictions.numpy())
        exits.append(out.exits.numpy())
    return np.concatenate(preds), np.concatenate(exits)
