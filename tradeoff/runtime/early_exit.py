"""Real early-exit inference: the chosen thresholds run on the model, each sample stops at its exit.

`EarlyExitModel` walks a model's `stages()` (models/base.py): section k runs only on the
samples still in flight, head k scores them, the confident ones leave and the batch
shrinks, so no sample ever pays for a section deeper than its exit. Where a sample
leaves is decided by the very NumPy function the cache's exit table is built with
(`policy.exit_outputs`: float64 softmax, the same temperatures and ensemble rule,
`confidence_of`), applied to the head's logits: a float32 torch softmax could round a
confidence to the other side of a threshold that the search put exactly on it (a
quantile of the val confidences, say). On these small (n, C) arrays NumPy is also
cheaper per call than torch, which matters at batch size 1.

`compiled=True` runs every section and head as a frozen TorchScript graph
(`runtime.compiled.compile_stages`): batch norms folded into the convolutions, no Python
module calls. At batch 1 a small network is bound by per-operator dispatch, not
arithmetic, and this roughly halves the cost per operator; the original network
(`deepest`) gets the very same treatment, so the comparison stays fair. Decisions are
still the exact rule on the logits the graphs produce, but folding a batch norm changes
logits in the last float32 bits, so a confidence within ~1e-6 of a threshold may fall on
the other side than in the (eager) cache: `tradeoff run --cache` reports that agreement.
The eager path (the default) is the one whose logits are those of `model(x)` bit for bit.

Timing lives in `runtime.timing`, the run report in `runtime.report`, the per-stage
latency profile in `runtime.profile`.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from tradeoff.policy.confidence import exit_outputs
from tradeoff.policy.rule import ExitRule
from tradeoff.policy.table import fallback_predictions
from tradeoff.runtime.compiled import compile_stages
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
        self.model = model.eval()
        self.num_exits = K
        # Plain lists: the modules are already registered under `self.model`.
        self._sections = [stage[0] for stage in stages]
        self._heads = [stage[1] for stage in stages]
        self.compiled = bool(compiled)
        self._eager = (self._sections, self._heads)
        self._compiled_for = None  # (sample shape, dtype, device) the graphs were traced on
        self._set_rule(rule)

    def _set_rule(self, rule: ExitRule) -> None:
        """Take `rule`'s thresholds, measure, ensemble, temperatures and fallback."""
        K = self.num_exits
        if rule.num_exits != K:
            want = K - 1 if rule.fallback == "deepest" else K
            raise ValueError(
                f"thresholds must hold {'K-1' if want == K - 1 else 'K'} = {want} numbers for this {K}-exit model "
                f"(fallback {rule.fallback!r}); got {len(rule.thresholds)} - were they searched on another model?"
            )
        self.rule = rule
        self.confidence = rule.confidence
        self.ensemble = bool(rule.ensemble)
        self.fallback = rule.fallback
        # NumPy float64 scalars, exactly what exit_table divides by and compares with. Per
        # exit: a float64 scalar, a (C,) per-class row, or None (the deepest under `deepest`).
        self._thresholds = list(rule.threshold_array()) + ([None] if rule.fallback == "deepest" else [])
        # Every exit's logits are kept while a sample is in flight when the answer or the
        # confidence needs more than the current exit: running ensemble, patience, fallbacks.
        self._keep_history = self.ensemble or rule.confidence == "patience" or rule.fallback != "deepest"
        # The batch-1 fast path covers per-exit thresholds with the deepest exit answering.
        self._simple = not (rule.per_class or rule.confidence == "patience" or rule.fallback != "deepest")
        self._temps = rule.temperature_array()
        self._temps_float = [float(T) for T in self._temps]

    def with_rule(self, rule: ExitRule) -> "EarlyExitModel":
        """The same runner (same modules, same compiled graphs) under another exit rule.

        A shallow copy: cheap, and a compiled runner is not traced again. The latency
        profile uses it to send every sample out at one exit.

        Raises:
            TypeError / ValueError: as the constructor.
        """
        if not isinstance(rule, ExitRule):
            raise TypeError(f"rule must be a tradeoff ExitRule; got {type(rule).__name__}")
        other = copy.copy(self)
        other.__dict__ = dict(self.__dict__)
        other._set_rule(rule)
        return other

    @property
    def thresholds(self) -> np.ndarray:
        """(M,) float64 thresholds (per class (M, C)); `OFF_THRESHOLD` where an exit is off."""
        return self.rule.threshold_array()

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
        is needed without `ensemble` or `patience`, since then exit k decides on its own).
        """
        if not self.ensemble and self.confidence != "patience":
            conf, pred = exit_outputs(history[-1][None], confidence=self.confidence, temperatures=self._temps[k : k + 1])
        else:
            conf, pred = exit_outputs(np.stack(history[: k + 1]), confidence=self.confidence, ensemble=self.ensemble,
                                      temperatures=self._temps[: k + 1], total_exits=self.num_exits)
        return conf[-1], pred[-1]

    def _passes(self, k: int, conf: np.ndarray, answer: np.ndarray) -> np.ndarray:
        """(n,) bool: exit k's confidence reaches its threshold (per class: that of the answer's class)."""
        t = self._thresholds[k]
        return conf >= (t[answer] if np.ndim(t) else t)

    def _fallback_answers(self, history: list) -> np.ndarray:
        """The fallback's answers for samples in flight after every exit ran (`policy.fallback_predictions`)."""
        logits = np.stack(history)
        conf, pred = exit_outputs(logits, confidence=self.confidence, ensemble=self.ensemble, temperatures=self._temps)
        return fallback_predictions(logits, conf, pred, self.fallback, self._temps)

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
        if x.shape[0] == 1 and self._simple:
            return self._forward_one(x)
        n = x.shape[0]
        predictions = np.empty(n, dtype=np.int64)
        exits = np.empty(n, dtype=np.int64)
        state = (x, np.arange(n), [])  # (inputs in flight, their original rows, their logits so far)
        for k in range(self.num_exits):
            x = self._sections[k](state[0])
            state = self._exit_batch(k, x, self._heads[k](x), state[1], state[2], predictions, exits)
            if state is None:
                break
        return EarlyExitOutput(torch.from_numpy(predictions), torch.from_numpy(exits))

    def _exit_batch(self, k: int, x: torch.Tensor, logits: torch.Tensor, alive: np.ndarray, history: list,
                    predictions: np.ndarray, exits: np.ndarray):
        """The exit decision at exit k for a batch in flight: the confident samples leave.

        Writes the answers and exits of the leaving samples into `predictions`/`exits`
        (at their original rows `alive`) and returns the (features, rows, logits history)
        still in flight, or None when none is left. `runtime.profile` times this very
        method as "the exit decision" of a batch.
        """
        history = history + [logits.cpu().numpy()] if self._keep_history else [logits.cpu().numpy()]
        conf, answer = self._decide(k, history)
        last = self.num_exits - 1
        if k == last and self._thresholds[k] is None:  # `deepest`: the last exit answers
            predictions[alive] = answer
            exits[alive] = k
            return None
        leave = self._passes(k, conf, answer)
        if k == last:  # the last exit is thresholded: the fallback answers the rest, reported at exit K
            predictions[alive] = np.where(leave, answer, self._fallback_answers(history))
            exits[alive] = k
            return None
        if leave.any():
            gone = alive[leave]
            predictions[gone] = answer[leave]
            exits[gone] = k
            stay = np.flatnonzero(~leave)
            if stay.size == 0:
                return None
            alive = alive[stay]
            x = select_rows(x, torch.from_numpy(stay))  # a list/dict of tensors too (MSDNet)
            history = [h[stay] for h in history]
        return x, alive, history

    def _forward_one(self, x: torch.Tensor) -> EarlyExitOutput:
        """Batch size 1: no masks, no index bookkeeping; stop at the first confident exit.

        Each exit is first decided on Python floats (`_quick_decision`, a few
        microseconds); only when the confidence lies within `QUICK_MARGIN` of the
        threshold, or the top two classes are that close, does the exact NumPy rule
        decide - so the outcome is always the exact rule's.
        """
        state = ([], [] if self.ensemble else None, True)
        for k in range(self.num_exits):
            x = self._sections[k](x)
            leave, answer, state = self._exit_one(k, self._heads[k](x), state)
            if leave:  # torch.full: a third of torch.tensor([v])'s cost
                return EarlyExitOutput(torch.full((1,), answer, dtype=torch.int64), torch.full((1,), k, dtype=torch.int64))
        raise AssertionError("unreachable: the deepest exit always answers")  # pragma: no cover

    def _exit_one(self, k: int, logits: torch.Tensor, state: tuple) -> tuple[bool, int, tuple]:
        """The exit decision at exit k for one sample: (leave, answer, new state).

        `state` is (history, running, use_quick): the (1, C) logits tensors of the exits
        run so far (for the exact rule), the approximate ensemble sum in Python floats
        (None without ensemble), and False once that sum is lost to NaN/inf logits.
        `runtime.profile` times this very method as "the exit decision" at batch 1.
        """
        history, running, use_quick = state
        history.append(logits)
        threshold = self._thresholds[k]
        last = k == self.num_exits - 1
        quick = None
        if use_quick:
            quick, running = _quick_decision(logits.tolist()[0], self._temps_float[k], self.confidence, threshold,
                                             running, k)
            use_quick = running is not None or not self.ensemble
        if quick is None:
            conf, answer = self._decide(k, [h.cpu().numpy() for h in history])
            return last or bool(conf[0] >= threshold), int(answer[0]), (history, running, use_quick)
        leave, answer = quick
        return leave or last, answer, (history, running, use_quick)

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
