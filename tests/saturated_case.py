"""The issue-11 saturated case, shared by tests/test_exit_rules.py and benchmarks/bench_rules.py."""

import numpy as np
from tradeoff.cache.format import ExitCache, make_meta, validate_cache, write_cache

def saturated_cache(n=400, C=10, seed=0):
    """The issue's case: 3 exits costing 1e6/2e6/3e6; exit 1 saturated, +60 on a wrong class for 4%; exit 3 always right."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, n)
    logits = rng.normal(0.0, 1.0, (3, n, C))
    rows = np.arange(n)
    logits[0, rows, y] += 60.0
    bad = rng.permutation(n)[: n // 25]
    wrong = (y[bad] + 1 + rng.integers(0, C - 1, bad.size)) % C
    logits[0, bad, wrong] += 120.0   # +60 over the true class's lead: confidently wrong
    right2 = rng.random(n) < 0.9
    logits[1, rows, np.where(right2, y, (y + 1) % C)] += rng.uniform(0.0, 4.0, n)
    logits[2, rows, y] += 8.0
    split = np.where(rng.permutation(n) < n // 2, "val", "test")
    meta = make_meta(arch="synthetic", num_classes=C, exit_names=["exit1", "exit2", "exit3"], baseline_flops=3e6,
                     data="saturated", flop_counter="given")
    return validate_cache(ExitCache(logits.astype(np.float32), y.astype(np.int64), split.astype(str), np.array([1e6, 2e6, 3e6]), meta))

