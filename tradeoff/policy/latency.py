"""The latency cost model: expected milliseconds per sample from a device profile. NumPy only.

A latency profile (`tradeoff profile`, `runtime.profile`) holds, for each profiled batch
size b, the median wall time of one call of every section, every head and every exit
decision on a batch of b samples, the fixed cost of one call of the runner (entering it,
building the answer), and the original single-exit network's time.

The model prices the *path* of a sample: the sections and heads it ran. Stage k is
section k, head k and exit k's decision. A sample that leaves at exit k ran stages
1..k; a sample no exit accepted (any fallback: the deepest exit, SCAN's ensemble, SDN's
most-confident) ran all K. So all it needs is, per threshold vector, the fraction of
samples still in flight at each stage, `in_flight[k] = 1 - sum_{j<k} exit_fractions[j]`
- which the scorer's exit fractions give for any exit rule.

Batch size 1 (the deployment latency case): a sum over exit paths,

    ms = call + sum_k in_flight[k] * stage_k(1) = sum_k exit_fractions[k] * path_k,

with path_k = call + stage_1(1) + ... + stage_k(1). When the profile holds the whole paths
timed as one runner call each (`path_ms`, every sample sent out at exit k), those are used
as path_k instead: timing each part alone adds its own dispatch, so the sum of parts
overstated a batch-1 path by 20-40% on the demo models (`benchmarks/bench_latency.py`).

Batch size B > 1: the runner shrinks the batch as samples leave, so stage k runs once
per batch on the n_k samples still in flight, at the cost the profile gives for n_k
samples (linear interpolation between profiled sizes; nothing runs when n_k = 0). With
samples independent, n_k ~ Binomial(B, in_flight[k]), and

    ms = (call(B) + sum_k E[stage_k(n_k)]) / B.

At B = 1 this is exactly the sum over paths above. Shrinking-batch execution as in
BranchyNet (Teerapittayanon et al., 2016) and SCAN's inference; the per-exit time table
as in EENet (Ilhan et al., 2023), here measured rather than hand-edited.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "tradeoff-latency"
VERSION = 1
SPREAD_WARNING = 0.20  # relative spread (IQR / median) above which a timing is called noisy


@dataclass(frozen=True)
class LatencyProfile:
    """Per-call medians of one device, at each profiled batch size (all times in ms per call).

    Attributes:
        batch_sizes: (S,) int, ascending.
        section_ms, head_ms, decision_ms: (S, K) time of section k / head k / exit k's
            decision on a batch of that many samples.
        call_ms: (S,) fixed cost of one call of the runner (entry and building the answer).
        original_ms: (S,) the original single-exit network (sections 1..K, head K).
        meta: provenance (checkpoint sha256, device, threads, backend, torch version, ...).
        path: the file it was read from, if any.
        measured_path_ms: (S, K) the whole exit path k timed as one runner call (every
            sample leaving at exit k), or None. At batch 1 these are what a sample costs: the
            sum of separately timed parts overstates it (each part timed alone pays its own
            dispatch; measured 20-40% above the whole path on the demo models).
    """

    batch_sizes: np.ndarray
    section_ms: np.ndarray
    head_ms: np.ndarray
    decision_ms: np.ndarray
    call_ms: np.ndarray
    original_ms: np.ndarray
    meta: dict = field(default_factory=dict)
    path: str | None = None
    measured_path_ms: np.ndarray | None = None

    @property
    def num_exits(self) -> int:
        return int(self.section_ms.shape[1])

    def index_of(self, batch_size: int) -> int:
        """Row of a profiled batch size; ValueError naming the sizes it has otherwise."""
        hits = np.flatnonzero(self.batch_sizes == batch_size)
        if hits.size == 0:
            have = ", ".join(str(int(b)) for b in self.batch_sizes)
            where = f" {self.path}" if self.path else ""
            raise ValueError(
                f"latency profile{where} has no batch size {batch_size}; it has {have} - pick one of those, or "
                f"profile it: tradeoff profile --batch-size {batch_size}"
            )
        return int(hits[0])

    def original_per_sample_ms(self, batch_size: int) -> float:
        """The original network's ms per sample at a profiled batch size."""
        return float(self.original_ms[self.index_of(batch_size)]) / batch_size

    def stage_ms(self, n: np.ndarray, heads_on: np.ndarray | None = None) -> np.ndarray:
        """(len(n), K) ms of one call of stage k on n samples: linear between profiled sizes, 0 at n = 0.

        Args:
            n: sample counts, 0 <= n <= the largest profiled batch size.
            heads_on: (K,) bool, False for an exit whose head and decision are skipped.
        """
        n = np.asarray(n, dtype=np.float64)
        stage = self.section_ms + _heads_mask(heads_on, self.num_exits) * (self.head_ms + self.decision_ms)
        xs = np.concatenate([[0.0], self.batch_sizes.astype(np.float64)])
        ys = np.concatenate([np.zeros((1, self.num_exits)), stage])
        return np.stack([np.interp(n, xs, ys[:, k]) for k in range(self.num_exits)], axis=-1)

    def path_ms(self, batch_size: int = 1, heads_on: np.ndarray | None = None) -> np.ndarray:
        """(K,) per-sample ms when every sample of a batch leaves at exit k (the cost of path k)."""
        i = self.index_of(batch_size)
        if batch_size == 1 and heads_on is None and self.measured_path_ms is not None:
            return np.asarray(self.measured_path_ms[i], dtype=np.float64)
        stage = self.stage_ms(np.array([batch_size]), heads_on)[0]
        return (self.call_ms[i] + np.cumsum(stage)) / batch_size


def _heads_mask(heads_on, K: int) -> np.ndarray:
    if heads_on is None:
        return np.ones(K)
    mask = np.asarray(heads_on, dtype=bool)
    if mask.shape != (K,):
        raise ValueError(f"heads_on must have shape ({K},), one flag per exit; got {mask.shape}")
    if not mask[-1]:
        raise ValueError("heads_on: the deepest exit's head always runs (it answers); got False for it")
    return mask.astype(np.float64)


def in_flight_fractions(exit_fractions: np.ndarray) -> np.ndarray:
    """(P, K) fraction of samples that run stage k: 1 minus those that left at exits before k."""
    f = np.asarray(exit_fractions, dtype=np.float64)
    gone = np.cumsum(f, axis=-1) - f
    return np.clip(1.0 - gone, 0.0, 1.0)


def _binomial_pmf(B: int, p: np.ndarray) -> np.ndarray:
    """(..., B+1) P(n = 0..B) for n ~ Binomial(B, p), exact at p = 0 and p = 1."""
    n = np.arange(B + 1, dtype=np.float64)
    log_comb = np.array([math.lgamma(B + 1) - math.lgamma(i + 1) - math.lgamma(B - i + 1) for i in range(B + 1)])
    p = np.asarray(p, dtype=np.float64)[..., None]
    inner = (p > 0.0) & (p < 1.0)
    q = np.where(inner, p, 0.5)
    log_pmf = log_comb + n * np.log(q) + (B - n) * np.log1p(-q)
    pmf = np.where(inner, np.exp(log_pmf), 0.0)
    pmf = np.where(p <= 0.0, (n == 0).astype(np.float64), pmf)
    return np.where(p >= 1.0, (n == B).astype(np.float64), pmf)


def expected_latency_ms(profile: LatencyProfile, exit_fractions: np.ndarray, *, batch_size: int = 1,
                        heads_on: np.ndarray | None = None) -> np.ndarray:
    """Expected ms per sample of P threshold vectors at one batch size (module docstring).

    Args:
        profile: the device's `LatencyProfile`.
        exit_fractions: (P, K) or (K,) fraction of samples whose path ends at exit k (they
            ran the sections and heads 1..k; samples answered by a fallback ran all K and
            count at K). Rows sum to 1.
        batch_size: a profiled batch size.
        heads_on: (K,) bool; False skips exit k's head and decision (a switched-off exit
            that the runtime does not evaluate). Default: every head runs.

    Returns:
        (P,) float64 ms per sample (a () array for a (K,) input).

    Raises:
        ValueError: a batch size the profile lacks (naming the ones it has), fractions of
            the wrong width.
    """
    f = np.asarray(exit_fractions, dtype=np.float64)
    if f.shape[-1:] != (profile.num_exits,) or f.ndim > 2:
        raise ValueError(
            f"exit_fractions must have shape (P, {profile.num_exits}) for this {profile.num_exits}-exit profile; "
            f"got {f.shape}"
        )
    i = profile.index_of(batch_size)
    alive = in_flight_fractions(f)
    if batch_size == 1:
        if heads_on is None and profile.measured_path_ms is not None:  # a sample costs its whole measured path
            return f @ profile.path_ms(1)
        stage = profile.stage_ms(np.array([1.0]), heads_on)[0]
        return profile.call_ms[i] + alive @ stage
    stage = profile.stage_ms(np.arange(batch_size + 1), heads_on)  # (B+1, K)
    pmf = _binomial_pmf(batch_size, alive)  # (..., K, B+1)
    expected = np.einsum("...kn,nk->...", pmf, stage)
    return (profile.call_ms[i] + expected) / batch_size


def latency_profile_from_document(doc: dict, *, path: str | None = None) -> LatencyProfile:
    """A `LatencyProfile` from the JSON document `tradeoff profile` writes (checked)."""
    where = path or "latency profile"
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{where} is not a tradeoff latency profile (no \"format\": \"{FORMAT}\"); "
                         "make one with `tradeoff profile --ckpt MODEL --out latency.json`")
    if doc.get("version") != VERSION:
        raise ValueError(f"{where}: profile version {doc.get('version')!r} is not supported (expected {VERSION}); "
                         "re-run `tradeoff profile`")
    try:
        rows = sorted(doc["batches"], key=lambda r: int(r["batch_size"]))
        arrays = {
            key: np.array([r[key] for r in rows], dtype=np.float64)
            for key in ("section_ms", "head_ms", "decision_ms", "call_ms", "original_ms")
        }
        sizes = np.array([int(r["batch_size"]) for r in rows], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: malformed profile ({exc}); re-run `tradeoff profile`") from None
    K = arrays["section_ms"].shape[-1] if arrays["section_ms"].ndim == 2 else 0
    if sizes.size == 0 or K < 2 or any(arrays[k].shape != (sizes.size, K) for k in ("head_ms", "decision_ms")):
        raise ValueError(f"{where}: malformed profile (per-exit timings missing or of unequal length)")
    if any(not np.all(np.isfinite(a) & (a >= 0)) for a in arrays.values()) or np.any(sizes < 1):
        raise ValueError(f"{where}: timings must be finite and >= 0 and batch sizes >= 1")
    measured = None
    if all("path_ms" in r for r in rows):
        measured = np.array([r["path_ms"] for r in rows], dtype=np.float64)
        if measured.shape != (sizes.size, K) or not np.all(np.isfinite(measured) & (measured >= 0)):
            raise ValueError(f"{where}: malformed profile (path_ms must hold {K} finite timings >= 0 per batch size)")
        measured = measured / sizes[:, None]  # ms per call -> ms per sample
    meta = {k: v for k, v in doc.items() if k != "batches"}
    return LatencyProfile(batch_sizes=sizes, meta=meta, path=path, measured_path_ms=measured, **arrays)


def read_latency_profile(path: str | os.PathLike, *, checkpoint_sha256: str | None = None, num_exits: int | None = None,
                         batch_size: int | None = None) -> LatencyProfile:
    """Read and check a latency.json against the model and batch size it will price.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a profile; made from another checkpoint (sha256) or for another
            number of exits; lacking `batch_size` (naming the sizes it has).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latency profile {path} does not exist; make it with "
                                "`tradeoff profile --ckpt MODEL --out latency.json` on the target device")
    try:
        doc = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"latency profile {path} is not JSON ({exc.__class__.__name__}); "
                         "pass the file `tradeoff profile` wrote") from None
    profile = latency_profile_from_document(doc, path=str(path))
    own = profile.meta.get("checkpoint_sha256")
    if checkpoint_sha256 is not None and own is not None and own != checkpoint_sha256:
        raise ValueError(
            f"latency profile {path} was measured on another checkpoint (sha256 {own[:12]}..., this one is "
            f"{checkpoint_sha256[:12]}...); profile this model: tradeoff profile --ckpt MODEL"
        )
    if num_exits is not None and profile.num_exits != num_exits:
        raise ValueError(f"latency profile {path} has {profile.num_exits} exits but the model/cache has {num_exits}; "
                         "profile this model: tradeoff profile --ckpt MODEL")
    if batch_size is not None:
        profile.index_of(batch_size)
    return profile


def latency_scorer(scorer, profile: LatencyProfile, batch_size: int = 1):
    """Wrap a scorer ((P, K-1) thresholds -> Scores) so that its cost is expected ms per sample.

    Accuracy and exit fractions are the wrapped scorer's; `Scores.flops` then holds
    `expected_latency_ms(profile, exit_fractions, batch_size=batch_size)`, in ms.
    """
    from tradeoff.policy.table import Scores

    profile.index_of(batch_size)

    def score(thresholds):
        s = scorer(thresholds)
        return Scores(s.accuracy, expected_latency_ms(profile, s.exit_fractions, batch_size=batch_size), s.exit_fractions)

    return score
