"""Real early-exit inference: the chosen thresholds run on the model, and we time it.

`EarlyExitModel` walks a model's `stages()` (models/base.py): section k runs only on the
samples still in flight, head k scores them, the confident ones leave and the batch
shrinks, so no sample ever pays for a section deeper than its exit. Where a sample
leaves is decided by the very NumPy function the cache's exit table is built with
(`policy.exit_outputs`: float64 softmax, the same temperatures and ensemble rule,
`confidence_of`), applied to the head's logits: a float32 torch softmax could round a
confidence to the other side of a threshold that the search put exactly on it (a
quantile of the val confidences, say). On these small (n, C) arrays NumPy is also
cheaper per call than torch, which matters at batch size 1.

`measure_latency` times the early-exit runner and the original network (sections 1..K
and head K only) side by side, interleaved, and reports medians; `run_command` is what
`tradeoff run` does.

`compiled=True` runs every section and head as a frozen TorchScript graph
(`compile_stages`): batch norms folded into the convolutions, no Python module calls.
At batch 1 a small network is bound by per-operator dispatch, not arithmetic, and this
roughly halves the cost per operator; the original network (`deepest`) gets the very
same treatment, so the comparison stays fair. Decisions are still the exact rule on the
logits the graphs produce, but folding a batch norm changes logits in the last float32
bits, so a confidence within ~1e-6 of a threshold may fall on the other side than in the
(eager) cache: `tradeoff run --cache` reports that agreement. The eager path (the
default) is the one whose logits are those of `model(x)` bit for bit.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from tradeoff.errors import first_line
from tradeoff.policy.confidence import exit_outputs
from tradeoff.policy.rule import ExitRule
from tradeoff.runtime.structured import select_rows


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
        rule: the `ExitRule` (thresholds, confidence measure, ensemble, temperatures),
            e.g. `read_rule(path).rule` or `SearchResult.rule`.
        compiled: run sections and heads as frozen TorchScript graphs (`compile_stages`),
            traced on the first batch of each new sample shape; the original network
            (`deepest`) runs compiled too. Logits then differ from the eager ones in the
            last bits (batch norm folded into the convolutions; see the module docstring).

    Raises:
        TypeError: `rule` is not an ExitRule.
        ValueError: a model without stages, or a rule made for another number of exits.
    """

    def __init__(self, model: nn.Module, rule: ExitRule, *, compiled: bool = False):
        super().__init__()
        if not isinstance(rule, ExitRule):
            raise TypeError(
                f"rule must be a tradeoff ExitRule (e.g. ExitRule(thresholds, confidence=...)); got {type(rule).__name__}"
            )
        stages = model_stages(model)
        K = len(stages)
        if rule.num_exits != K:
            raise ValueError(
                f"thresholds must hold K-1 = {K - 1} numbers for this {K}-exit model; got {rule.num_exits - 1} - "
                "were they searched on another model?"
            )
        t = rule.threshold_array()
        temps = rule.temperature_array()
        confidence, ensemble = rule.confidence, rule.ensemble
        self.rule = rule
        self.model = model.eval()
        self.num_exits = K
        self.confidence = confidence
        self.ensemble = bool(ensemble)
        # Plain lists: the modules are already registered under `self.model`.
        self._sections = [stage[0] for stage in stages]
        self._heads = [stage[1] for stage in stages]
        self.compiled = bool(compiled)
        self._eager = (self._sections, self._heads)
        self._compiled_for = None  # (sample shape, dtype, device) the graphs were traced on
        # NumPy float64 scalars, exactly what exit_table divides by and compares with.
        self._thresholds = list(t) + [None]
        self._temps = temps
        self._temps_float = [float(T) for T in temps]

    @property
    def thresholds(self) -> np.ndarray:
        """(K-1,) float64 thresholds."""
        return np.array(self._thresholds[:-1], dtype=np.float64)

    @property
    def temperatures(self) -> np.ndarray:
        """(K,) float64 per-exit temperatures (ones when uncalibrated)."""
        return self._temps.copy()

    def train(self, mode: bool = True):
        """Stays in eval mode: early exit is an inference-time rule."""
        if mode:
            raise ValueError("EarlyExitModel is for inference only; train the wrapped model itself")
        return super().train(False)

    @property
    def active_stages(self) -> list:
        """The K (section, head) callables forward runs now (the compiled graphs once traced)."""
        return list(zip(self._sections, self._heads))

    def _use_compiled(self, x: torch.Tensor) -> None:
        """Point the runner at graphs traced for x's sample shape (tracing them if new)."""
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key != self._compiled_for:
            compiled = compile_stages(list(zip(*self._eager)), x[:1])
            self._sections = [stage[0] for stage in compiled]
            self._heads = [stage[1] for stage in compiled]
            self._compiled_for = key

    def _decide(self, k: int, history: list) -> tuple[np.ndarray, np.ndarray]:
        """Confidence (n,) and answer (n,) of exit k for the samples in flight.

        `policy.exit_outputs` is the one definition the cache's `exit_table` uses too.
        `history` holds the (n, C) logits of exits 1..k of these samples (only the last
        is needed without `ensemble`, since then exit k answers on its own softmax).
        """
        if not self.ensemble:
            conf, pred = exit_outputs(history[-1][None], confidence=self.confidence, temperatures=self._temps[k : k + 1])
        else:
            conf, pred = exit_outputs(np.stack(history), confidence=self.confidence, ensemble=True,
                                      temperatures=self._temps[: k + 1])
        return conf[-1], pred[-1]

    def forward(self, x: torch.Tensor) -> EarlyExitOutput:
        """Early-exit predictions for a batch x (N, ...), under `torch.inference_mode()`.

        (Entering inference mode costs microseconds per call, so a caller already in it,
        such as a serving loop or `measure_latency`, is not made to pay it again.)

        Returns:
            EarlyExitOutput(predictions (N,) int64, exits (N,) int64).
        """
        if not torch.is_inference_mode_enabled():
            with torch.inference_mode():
                return self.forward(x)
        if self.compiled:
            self._use_compiled(x)
        if x.shape[0] == 1:
            return self._forward_one(x)
        n = x.shape[0]
        predictions = np.empty(n, dtype=np.int64)
        exits = np.empty(n, dtype=np.int64)
        alive = np.arange(n)  # original row of each sample still in flight
        history = []  # (n, C) logits of exits 1..k of the samples in flight
        last = self.num_exits - 1
        for k in range(self.num_exits):
            x = self._sections[k](x)
            history.append(self._heads[k](x).cpu().numpy())
            if not self.ensemble:
                history = history[-1:]
            conf, answer = self._decide(k, history)
            if k == last:
                predictions[alive] = answer
                exits[alive] = k
                break
            leave = conf >= self._thresholds[k]
            if leave.any():
                gone = alive[leave]
                predictions[gone] = answer[leave]
                exits[gone] = k
                stay = np.flatnonzero(~leave)
                if stay.size == 0:
                    break
                alive = alive[stay]
                x = select_rows(x, torch.from_numpy(stay))  # a list/dict of tensors too (MSDNet)
                history = [h[stay] for h in history]
        return EarlyExitOutput(torch.from_numpy(predictions), torch.from_numpy(exits))

    def _forward_one(self, x: torch.Tensor) -> EarlyExitOutput:
        """Batch size 1: no masks, no index bookkeeping; stop at the first confident exit.

        Each exit is first decided on Python floats (`_quick_decision`, a few
        microseconds); only when the confidence lies within `QUICK_MARGIN` of the
        threshold, or the top two classes are that close, does the exact NumPy rule
        decide - so the outcome is always the exact rule's.
        """
        history = []  # (1, C) logits tensors of the exits run so far, for the exact rule
        running = [] if self.ensemble else None  # approximate ensemble sum, Python floats
        use_quick = True  # False once an ensemble's running sum is lost to NaN/inf logits
        last = self.num_exits - 1
        for k in range(self.num_exits):
            x = self._sections[k](x)
            logits = self._heads[k](x)
            history.append(logits)
            threshold = self._thresholds[k]
            quick = None
            if use_quick:
                quick, running = _quick_decision(logits.tolist()[0], self._temps_float[k], self.confidence, threshold,
                                                 running, k)
                use_quick = running is not None or not self.ensemble
            if quick is None:
                conf, answer = self._decide(k, [h.cpu().numpy() for h in history])
                leave, answer = k == last or bool(conf[0] >= threshold), int(answer[0])
            else:
                leave, answer = quick
                leave = leave or k == last
            if leave:  # torch.full: a third of torch.tensor([v])'s cost
                return EarlyExitOutput(torch.full((1,), answer, dtype=torch.int64), torch.full((1,), k, dtype=torch.int64))
        raise AssertionError("unreachable: the deepest exit always answers")  # pragma: no cover

    def deepest(self, x: torch.Tensor) -> torch.Tensor:
        """The original single-exit network: sections 1..K and head K only (inference mode).

        Returns:
            (N,) int64 predictions of the deepest exit (argmax of its logits).
        """
        if not torch.is_inference_mode_enabled():
            with torch.inference_mode():
                return self.deepest(x)
        if self.compiled:
            self._use_compiled(x)
        for section in self._sections:
            x = section(x)
        return self._heads[-1](x).argmax(dim=-1)


def compile_stages(stages: list, example: torch.Tensor) -> list:
    """Each (section, head) as a frozen TorchScript graph, traced on `example`.

    `torch.jit.freeze` inlines the weights as constants and folds each batch norm into
    the convolution before it (`fold_transposed_batch_norms` does it first for transposed
    convolutions, which freeze leaves alone); calling the graph skips Python's per-module
    `__call__`.
    Both matter at batch 1, where an 8x8 network's time is per-operator overhead. The
    graphs accept any batch size (the networks here have no shape-dependent Python).
    TorchScript is deprecated in recent torch releases; its warnings are silenced here.

    Args:
        stages: K (section, head) modules in eval mode.
        example: (1, ...) one input sample; only its shape, dtype and device matter.

    Returns:
        K (section, head) pairs of frozen `torch.jit.ScriptModule`s.

    Raises:
        ValueError: a section or head TorchScript cannot trace (say which).
    """
    compiled = []
    # Tracing needs ordinary tensors: not inside inference mode, no autograd.
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = example.clone()
        for k, (section, head) in enumerate(stages):
            pair = []
            for part, name in ((section, "section"), (head, "head")):
                try:
                    folded = fold_transposed_batch_norms(part)
                    graph = torch.jit.freeze(torch.jit.trace(folded, x, check_trace=False))
                except Exception as exc:  # TorchScript raises many kinds; report which part failed
                    raise ValueError(
                        f"cannot compile {name} {k + 1} ({type(part).__name__}) with TorchScript: "
                        f"{first_line(exc)}; run without compiled=True"
                    ) from None
                pair.append(graph)
                if name == "section":
                    x = part(x)
            compiled.append(tuple(pair))
    return compiled


def fold_transposed_batch_norms(module: nn.Module) -> nn.Module:
    """An eval-mode copy of `module` with each `ConvTranspose2d -> BatchNorm2d` of a
    `Sequential` merged into one transposed convolution (the BN replaced by Identity).

    y = (convT(x) - mean) / sqrt(var + eps) * gamma + beta is a transposed convolution
    with weights scaled per output channel (dim 1 of its (in, out, kh, kw) weight) and
    a shifted bias. The original module is left untouched.
    """
    import copy

    folded = copy.deepcopy(module).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for first, second in zip(names, names[1:]):
            conv, bn = seq._modules[first], seq._modules[second]
            if not (isinstance(conv, nn.ConvTranspose2d) and isinstance(bn, nn.BatchNorm2d) and conv.groups == 1
                    and bn.running_mean is not None and bn.num_features == conv.out_channels):
                continue
            with torch.no_grad():
                scale = torch.rsqrt(bn.running_var + bn.eps)
                if bn.weight is not None:
                    scale = scale * bn.weight
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                shift = (bias - bn.running_mean) * scale + (bn.bias if bn.bias is not None else 0.0)
                conv.weight.mul_(scale.reshape(1, -1, 1, 1))
                conv.bias = nn.Parameter(shift)
            seq._modules[second] = nn.Identity()
    return folded


# How close (absolute) a Python-float confidence may come to its threshold, or the top
# two probabilities to each other, before the exact NumPy rule is asked instead. Both
# sides compute the same float64 quantities (same divisions and subtractions; exp and
# the sum differ only by rounding, a few ulps per class), so their difference is below
# ~C * 1e-16: 1e-9 leaves a wide berth for any C up to millions.
QUICK_MARGIN = 1e-9


def _quick_decision(row: list, temperature: float, measure: str, threshold, running: list | None, k: int):
    """Decide one sample at exit k on Python floats, unless it is too close to call.

    Args:
        row: the C logits of exit k.
        temperature: exit k's temperature.
        measure: confidence measure.
        threshold: exit k's threshold (None for the deepest exit).
        running: with ensemble, the running sum of the probabilities of exits 1..k-1
            (an empty list at k = 0); None without ensemble.
        k: exit index (the ensemble mean divides by k + 1).

    Returns:
        ((leave, answer) or None, running): None when the exact rule must decide; the
        ensemble sum including exit k (None without ensemble, or for NaN/inf logits).
        `leave` is False for the deepest exit (the caller knows it always answers).
    """
    total = sum(row)
    if total != total or total in (math.inf, -math.inf):  # NaN / inf: leave it to the exact rule
        return None, None
    if temperature != 1.0:
        row = [v / temperature for v in row]
    top = max(row)
    weights = [math.exp(v - top) for v in row]
    norm = sum(weights)
    probs = [w / norm for w in weights]
    if running is not None:
        running = [a + b for a, b in zip(running, probs)] if running else probs
        probs = [a / (k + 1) for a in running]
    ranked = sorted(probs)
    first, second = ranked[-1], ranked[-2]
    if first - second <= QUICK_MARGIN:
        return None, running
    answer = probs.index(first)
    if threshold is None:
        return (False, answer), running
    if measure == "maxprob":
        conf = first
    elif measure == "margin":
        conf = min(max(first - second, 0.0), 1.0)
    else:
        plogp = sum(p * math.log(p) for p in probs if p > 0.0)
        conf = min(max(1.0 + plogp / math.log(len(probs)), 0.0), 1.0)
    if abs(conf - threshold) <= QUICK_MARGIN:
        return None, running
    return (conf >= threshold, answer), running


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


@dataclass(frozen=True)
class RuntimeReport:
    """One real early-exit run over a data split: what it got, where samples left, how fast.

    Attributes:
        accuracy: fraction of samples answered correctly by the early-exit runner.
        exit_fractions: (K,) fraction of samples leaving at each exit; sums to 1.
        exits: (N,) int64 exit of each sample; predictions: (N,) int64 its answer.
        flops: (K,) cumulative cost of leaving at exit k (fvcore count, `exit_costs`).
        baseline_flops: the original single-exit network's cost (fvcore count).
        latency: the side-by-side timing (`Latency`), or None when not timed.
    """

    accuracy: float
    exit_fractions: np.ndarray
    exits: np.ndarray
    predictions: np.ndarray
    flops: np.ndarray
    baseline_flops: float
    latency: Latency | None

    @property
    def mean_flops(self) -> float:
        """Mean cost per sample of the exits actually taken (fvcore count)."""
        return float(self.exit_fractions @ self.flops)

    @property
    def predicted_speedup(self) -> float:
        """What the FLOPs promise: baseline_flops / mean cost of the exits taken."""
        return self.baseline_flops / self.mean_flops

    @property
    def measured_speedup(self) -> float | None:
        return None if self.latency is None else self.latency.measured_speedup

    @property
    def realised_fraction(self) -> float | None:
        """measured / predicted speed-up: how much of the FLOPs promise survives in seconds."""
        return None if self.latency is None else self.measured_speedup / self.predicted_speedup


def evaluate_runtime(runner: EarlyExitModel, x, y, *, flops, baseline_flops: float, batch_size: int = 1,
                     repeats: int = 5, warmup: int = 1, tune_backend: bool = True,
                     progress: bool = False) -> RuntimeReport:
    """Run `runner` over (x, y) for its answers, then time it against the deepest exit.

    Args:
        runner: the early-exit model.
        x: (N, ...) inputs; y: (N,) int labels.
        flops: (K,) cumulative per-exit costs; baseline_flops: the single-exit network's.
        batch_size: samples per forward call, for both the answers and the timing.
        repeats: timed passes (median reported); 0 skips timing (latency None).
        warmup: untimed passes before timing.
        tune_backend: time each side on its faster convolution backend (`measure_latency`).
        progress: tqdm bars to stderr.
    """
    y = np.asarray(y, dtype=np.int64)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x
    if x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError(f"need as many labels as inputs, at least one; got {x.shape[0]} inputs, {y.shape[0]} labels")
    flops = np.asarray(flops, dtype=np.float64)
    if flops.shape != (runner.num_exits,):
        raise ValueError(f"flops must have one cost per exit, shape ({runner.num_exits},); got {flops.shape}")
    predictions, exits = run_early_exit(runner, x, batch_size=batch_size)
    fractions = np.bincount(exits, minlength=runner.num_exits) / exits.size
    latency = None
    if repeats:
        latency = measure_latency(runner, x, batch_size=batch_size, repeats=repeats, warmup=warmup,
                                  tune_backend=tune_backend, progress=progress)
    return RuntimeReport(
        accuracy=float(np.mean(predictions == y)),
        exit_fractions=fractions,
        exits=exits,
        predictions=predictions,
        flops=flops,
        baseline_flops=float(baseline_flops),
        latency=latency,
    )


def report_document(report: RuntimeReport, **context) -> dict:
    """The JSON-safe record of a run (`tradeoff run --out`), plus `context` entries."""
    doc = {
        "accuracy": report.accuracy,
        "exit_fractions": [float(f) for f in report.exit_fractions],
        "exit_counts": np.bincount(report.exits, minlength=report.exit_fractions.size).tolist(),
        "num_samples": int(report.exits.size),
        "flops": [float(f) for f in report.flops],
        "mean_flops": report.mean_flops,
        "baseline_flops": report.baseline_flops,
        "predicted_speedup": report.predicted_speedup,
        "latency_ms": None,
        "baseline_latency_ms": None,
        "measured_speedup": None,
        "realised_fraction": None,
    }
    if report.latency is not None:
        lat = report.latency
        doc.update(
            latency_ms=lat.latency_ms,
            baseline_latency_ms=lat.baseline_latency_ms,
            measured_speedup=lat.measured_speedup,
            realised_fraction=report.realised_fraction,
            latency_passes_ms=list(lat.passes_ms),
            baseline_latency_passes_ms=list(lat.baseline_passes_ms),
            batch_size=lat.batch_size,
            mkldnn={"early_exit": lat.mkldnn, "baseline": lat.baseline_mkldnn},
        )
    doc.update(context)
    return doc


def report_table(report: RuntimeReport, thresholds: np.ndarray, *, exit_names=None, search_test: dict | None = None) -> str:
    """Two terminal tables: where samples left, then accuracy / latency / speed-up."""
    from tradeoff.report.documents import format_table

    K = report.flops.size
    names = list(exit_names) if exit_names and len(exit_names) == K else [f"exit{k + 1}" for k in range(K)]
    counts = np.bincount(report.exits, minlength=K)
    expected = (search_test or {}).get("exit_fractions")
    expected = expected if isinstance(expected, list) and len(expected) == K else [None] * K
    rows = [
        (names[k], None if k == K - 1 else float(thresholds[k]), int(counts[k]), float(report.exit_fractions[k]),
         expected[k], report.flops[k] / 1e6)
        for k in range(K)
    ]
    exits = format_table(rows, ("exit", "threshold", "samples", "fraction", "search (test)", "MFLOPs"),
                         title="where the samples left")
    lat = report.latency
    summary = [
        ("accuracy", report.accuracy, (search_test or {}).get("accuracy")),
        ("mean cost (MFLOPs)", report.mean_flops / 1e6, None),
        ("baseline cost (MFLOPs)", report.baseline_flops / 1e6, None),
        ("predicted speed-up (FLOPs)", report.predicted_speedup, (search_test or {}).get("speedup")),
    ]
    if lat is not None:
        summary += [
            (f"latency ms/sample (batch {lat.batch_size})", lat.latency_ms, None),
            ("baseline latency ms/sample", lat.baseline_latency_ms, None),
            ("measured speed-up", lat.measured_speedup, None),
            ("measured / predicted", report.realised_fraction, None),
            ("oneDNN (early exit / original)", f"{_on(lat.mkldnn)} / {_on(lat.baseline_mkldnn)}", None),
        ]
    return exits + "\n\n" + format_table(summary, ("", "this run", "search (test)"), float_format="{:.4g}")


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def cache_agreement(cache_path, rule: ExitRule, labels: np.ndarray, report: RuntimeReport) -> dict:
    """How often the runtime's exits and answers equal the exit rule on the cached test logits.

    Differences can only come from float32 rounding: a convolution's result depends at
    the last bit on the batch it ran in, so a confidence within ~1e-7 of a threshold can
    fall on either side.
    """
    from tradeoff.cache.format import load_cache
    from tradeoff.policy.table import exit_indices, rule_table

    test = load_cache(cache_path).select("test")
    if not np.array_equal(test.labels, labels):
        raise ValueError(
            f"cache {cache_path}: its test split ({test.num_samples} rows) is not the data's test split "
            f"({labels.size} rows) in the same order; pass the data the cache was built from"
        )
    exits = exit_indices(rule_table(test.logits, test.labels, test.flops, rule), rule.threshold_array())
    _, pred = exit_outputs(test.logits, confidence=rule.confidence, ensemble=rule.ensemble,
                           temperatures=None if rule.temperatures is None else rule.temperature_array())
    answers = pred[exits, np.arange(exits.size)]
    return {
        "exits": float(np.mean(exits == report.exits)),
        "predictions": float(np.mean(answers == report.predictions)),
    }
