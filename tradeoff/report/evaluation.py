"""`tradeoff evaluate`: score given thresholds on a cache, no search (NumPy only).

`evaluate_rule(cache, rule)` returns one `EvaluationRow` per split (`val`, `test`, then
`all` rows of the cache): accuracy, mean cost, speed-up, the fraction leaving at each exit
and the share answered by the fallback, so a paper's published thresholds can be checked
on one's own cache in one line.

Speed-up conventions. `fvcore` (ours): baseline_flops / mean cost, where a sample leaving
at exit k pays the backbone up to exit k plus the heads of exits 1..k it ran, and a
fallback sample (`ensemble`, `most-confident`) the whole network with every head. `scan`:
the official SCAN inference script's formula, 1 / sum_k fraction_k * r_k with constant
per-exit cost ratios r_1..r_K and r_{K+1} for an ensemble-answered sample (its published
ResNet18 constants 0.32 / 0.53 / 0.76 / 1.0 / 1.07). Measured side by side, those constants
match a count that leaves out the earlier exits' heads *and every attention module*, so
this convention flatters early exits; it is reported separately, labelled, only to
reconcile a paper's numbers with ours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tradeoff.cache.format import ExitCache
from tradeoff.policy.rule import ExitRule
from tradeoff.policy.table import rule_table, score_thresholds_reference

SPEEDUP_CONVENTIONS = ("fvcore", "scan")
# The official SCAN script's constant cost ratios (ResNet18, exits 1-4, then the ensemble).
SCAN_OFFICIAL_RATIOS = (0.32, 0.53, 0.76, 1.0, 1.07)


@dataclass(frozen=True)
class EvaluationRow:
    """One split's figures under one rule.

    Attributes:
        split: "val", "test" or "all".
        samples: rows scored.
        accuracy: fraction answered correctly.
        flops: mean cost per sample (fvcore count).
        speedup: baseline_flops / flops (the original single-exit network).
        speedup_all_exits: flops[K-1] / flops.
        exit_fractions: (K,) fraction leaving at each exit (fallback samples at exit K).
        fallback_fraction: fraction answered by the fallback (under `deepest`: reaching exit K).
        speedup_scan_formula: SCAN's official constant-ratio speed-up, or None (convention fvcore).
    """

    split: str
    samples: int
    accuracy: float
    flops: float
    speedup: float
    speedup_all_exits: float
    exit_fractions: tuple[float, ...]
    fallback_fraction: float
    speedup_scan_formula: float | None = None

    def as_dict(self) -> dict:
        doc = {k: getattr(self, k) for k in ("split", "samples", "accuracy", "flops", "speedup", "speedup_all_exits",
                                             "fallback_fraction")}
        doc["exit_fractions"] = list(self.exit_fractions)
        if self.speedup_scan_formula is not None:
            doc["speedup_scan_formula"] = self.speedup_scan_formula
        return doc


def scan_speedup(exit_fractions, fallback_fraction: float, fallback: str, ratios=SCAN_OFFICIAL_RATIOS) -> float:
    """SCAN's official speed-up: 1 / (sum_k f_k r_k + f_ens r_{K+1}), constant ratios.

    Under the `ensemble` fallback the fallback share pays r_{K+1} (and leaves exit K's own
    share at r_K); otherwise every sample at exit K pays r_K.

    Raises:
        ValueError: ratios not K + 1 positive numbers.
    """
    f = np.asarray(exit_fractions, dtype=np.float64)
    r = np.asarray(ratios, dtype=np.float64)
    K = f.size
    if r.shape != (K + 1,) or not np.all(np.isfinite(r) & (r > 0)):
        raise ValueError(f"--scan-ratios must be K + 1 = {K + 1} positive cost ratios (exits 1..{K}, then the "
                         f"ensemble; SCAN's ResNet18: {','.join(map(str, SCAN_OFFICIAL_RATIOS))}); got {r.tolist()}")
    share = fallback_fraction if fallback == "ensemble" else 0.0
    cost = float(np.dot(f, r[:K])) - share * r[K - 1] + share * r[K]
    return 1.0 / cost


def evaluate_rule(cache: ExitCache, rule: ExitRule, *, speedup_convention: str = "fvcore",
                  scan_ratios=None) -> list[EvaluationRow]:
    """Score one `ExitRule` on every split of `cache` (no search).

    Args:
        cache: a validated cache.
        rule: the thresholds and how they are applied; checked against the cache (K, C).
        speedup_convention: "fvcore" (ours) or "scan" (adds SCAN's constant-ratio speed-up).
        scan_ratios: K + 1 ratios for "scan"; default SCAN's published ResNet18 constants
            (which need K = 4).

    Returns:
        Rows for "val", "test" (those present) and "all".

    Raises:
        ValueError: a rule that does not fit the cache, an unknown convention, bad ratios.
    """
    if not isinstance(rule, ExitRule):
        raise TypeError(f"rule must be an ExitRule; got {type(rule).__name__}")
    if speedup_convention not in SPEEDUP_CONVENTIONS:
        raise ValueError(f"--speedup-convention must be one of {', '.join(SPEEDUP_CONVENTIONS)}; got {speedup_convention!r}")
    K = cache.num_exits
    rule.check_fits(K, int(cache.logits.shape[2]))
    ratios = SCAN_OFFICIAL_RATIOS if scan_ratios is None else tuple(scan_ratios)
    if speedup_convention == "scan" and len(ratios) != K + 1:
        raise ValueError(f"SCAN's published ratios are for 4 exits; this cache has {K} - give --scan-ratios with "
                         f"{K + 1} values (exits 1..{K}, then the ensemble)")
    flops = np.asarray(cache.flops, dtype=np.float64)
    table = rule_table(cache.logits, cache.labels, flops, rule)
    t = rule.threshold_array()[None]
    rows = []
    for name in ("val", "test", "all"):
        mask = np.ones(cache.labels.size, dtype=bool) if name == "all" else cache.split == name
        if not mask.any():
            continue
        part = _columns(table, mask)
        s = score_thresholds_reference(part, t)
        fractions = tuple(float(v) for v in s.exit_fractions[0])
        fallback_share = float(s.fallback_fractions[0])
        cost = float(s.flops[0])
        rows.append(EvaluationRow(
            split=name, samples=int(mask.sum()), accuracy=float(s.accuracy[0]), flops=cost,
            speedup=cache.baseline_flops / cost, speedup_all_exits=float(flops[-1]) / cost,
            exit_fractions=fractions, fallback_fraction=fallback_share,
            speedup_scan_formula=(scan_speedup(fractions, fallback_share, rule.fallback, ratios)
                                  if speedup_convention == "scan" else None),
        ))
    return rows


def _columns(table, mask: np.ndarray):
    """The table's samples where `mask` holds."""
    from dataclasses import replace

    return replace(
        table, confidence=table.confidence[:, mask], correct=table.correct[:, mask],
        fallback_correct=None if table.fallback_correct is None else table.fallback_correct[mask],
        predicted=None if table.predicted is None else table.predicted[:, mask],
    )
