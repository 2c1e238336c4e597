"""The chosen point in both units (FLOPs and predicted ms) when a latency profile is given. NumPy only."""

from __future__ import annotations

import numpy as np

from tradeoff.policy.latency import LatencyProfile, expected_latency_ms


def latency_figures(chosen, profile: LatencyProfile, batch_size: int, *, cost: str, cache_flops: np.ndarray,
                    cache_baseline_flops: float) -> dict:
    """summary.json's "latency" entry: the profile's provenance and the chosen point priced both ways.

    Args:
        chosen: the search's `ChosenPoint` (its cost fields in the search's own unit).
        profile: the latency profile; batch_size: the batch size it prices.
        cost: "flops" or "latency", the unit the search ran in.
        cache_flops: (K,) per-exit cumulative FLOPs; cache_baseline_flops: the original network's.

    Returns:
        JSON-safe dict; every millisecond figure is a prediction of the cost model
        (`policy.latency`), per sample, at `batch_size`.
    """
    original_ms = profile.original_per_sample_ms(batch_size)
    out = {
        "cost": cost,
        "profile": profile.path,
        "batch_size": int(batch_size),
        "checkpoint_sha256": profile.meta.get("checkpoint_sha256"),
        "device": profile.meta.get("device"),
        "device_name": profile.meta.get("device_name"),
        "threads": profile.meta.get("threads"),
        "backend": profile.meta.get("backend"),
        "torch_version": profile.meta.get("torch_version"),
        "original_ms": original_ms,
        "exit_path_ms": [float(v) for v in profile.path_ms(batch_size)],
        "predicted": True,
    }
    for split in ("val", "test"):
        fig = getattr(chosen, split)
        fractions = np.asarray(fig.exit_fractions, dtype=np.float64)
        ms = float(expected_latency_ms(profile, fractions, batch_size=batch_size))
        flops = float(fractions @ cache_flops)
        out[split] = {
            "predicted_latency_ms": ms,
            "predicted_speedup_ms": original_ms / ms,
            "flops": flops,
            "speedup_flops": cache_baseline_flops / flops,
        }
    return out
