"""Synthetic exit caches shaped like real multi-exit networks, for tests and benchmarks.

Each sample gets a latent difficulty; exit k answers right when the sample is easy
enough for it, so deeper exits are right on (mostly) a superset of the samples, and the
logit margin grows with how easy the sample is for that exit, so confidence carries
real information, as in a trained SCAN network.
"""

from __future__ import annotations

import numpy as np

from tradeoff.cache.format import ExitCache, make_meta, validate_cache

# fvcore counts of scan_resnet18 at 32x32, CIFAR-100 (see flops.py); used only for shape.
SCAN_RESNET18_LIKE_FLOPS = (0.29e9, 0.46e9, 0.60e9, 0.70e9)
SCAN_RESNET18_LIKE_ACCURACY = (0.62, 0.71, 0.77, 0.78)
SCAN_RESNET18_LIKE_BASELINE = 0.56e9  # plain ResNet18: backbone + deepest head only


def synthetic_cache(
    num_samples: int = 10_000,
    num_classes: int = 100,
    exit_accuracies: tuple[float, ...] = SCAN_RESNET18_LIKE_ACCURACY,
    flops: tuple[float, ...] | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.5,
    dtype=np.float32,
) -> ExitCache:
    """A validated cache with roughly the given per-exit accuracies.

    Args:
        num_samples: N, split into val (first `val_fraction`, shuffled) and test.
        num_classes: C.
        exit_accuracies: (K,) target accuracy of each exit, shallow -> deep.
        flops: (K,) cumulative costs; default spaced like SCAN-ResNet18 (or linear).
        seed: everything random comes from `numpy.random.default_rng(seed)`.
    """
    rng = np.random.default_rng(seed)
    K = len(exit_accuracies)
    if flops is None:
        flops = SCAN_RESNET18_LIKE_FLOPS if K == 4 else tuple(1e8 * (k + 1) for k in range(K))
    flops = tuple(float(f) for f in flops)
    labels = rng.integers(0, num_classes, size=num_samples)
    difficulty = rng.random(num_samples)
    logits = np.empty((K, num_samples, num_classes), dtype=dtype)
    for k, acc in enumerate(exit_accuracies):
        ease = acc - difficulty + rng.normal(0.0, 0.05, num_samples)
        correct = ease > 0
        wrong_class = (labels + rng.integers(1, num_classes, size=num_samples)) % num_classes
        predicted = np.where(correct, labels, wrong_class)
        noise = rng.normal(0.0, 1.0, (num_samples, num_classes))
        margin = np.maximum(0.5 + 5.0 * np.abs(ease) + rng.normal(0.0, 0.5, num_samples), 0.05)
        noise[np.arange(num_samples), predicted] = noise.max(axis=1) + margin
        logits[k] = noise.astype(dtype)
    split = np.where(rng.permutation(num_samples) < int(round(val_fraction * num_samples)), "val", "test")
    meta = make_meta(
        arch="synthetic",
        num_classes=num_classes,
        exit_names=[f"exit{k + 1}" for k in range(K)],
        baseline_flops=SCAN_RESNET18_LIKE_BASELINE if flops == SCAN_RESNET18_LIKE_FLOPS else float(flops[-1]),
        data=f"synthetic(seed={seed})",
        flop_counter="given",
    )
    return validate_cache(ExitCache(logits, labels.astype(np.int64), split.astype(str), np.asarray(flops, float), meta))
