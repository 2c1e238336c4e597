"""Per-exit temperature scaling, fitted on the validation split (`--calibrate`).

Shallow exits of a multi-exit network are often over- or under-confident, which makes
one exit's 0.9 mean something else than another's. Temperature scaling (Guo et al.,
2017) divides exit k's logits by one number T_k that minimises the negative
log-likelihood on held-out data; predictions are unchanged, confidences become honest.
`policy.exit_table(..., temperatures=T)` applies them to each exit *before* any
averaging, so with `--ensemble` the mean is taken over calibrated exits (each T_k is
still fitted on exit k's own logits).

The fit is exact and deterministic without scipy: in beta = 1 / T the mean NLL

    f(beta) = mean_n [ logsumexp_c(beta z_nc) - beta z_{n,y_n} ]

is convex (a log-sum-exp of functions linear in beta, minus a linear term), with
f'(beta) = mean(E_p[z] - z_y) and f''(beta) = mean(Var_p[z]) >= 0 under p =
softmax(beta z). Its minimum over the bounded range is the root of f', found by Newton
steps kept inside a shrinking bracket (bisection when a step would leave it); each
step is one chunked pass over the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

T_BOUNDS = (0.05, 20.0)  # temperatures searched; a fit at a bound says the exit is degenerate
_CHUNK = 65536


@dataclass(frozen=True)
class Calibration:
    """Fitted temperatures and what they did to each exit's NLL on the fitting split.

    Attributes:
        temperatures: (K,) T_k > 0; exit k's logits are divided by T_k.
        nll_before: (K,) mean NLL in nats at T = 1.
        nll_after: (K,) mean NLL at T_k (never above nll_before).
    """

    temperatures: np.ndarray
    nll_before: np.ndarray
    nll_after: np.ndarray

    def to_json(self) -> dict:
        """Plain lists for thresholds.json / summary.json."""
        return {
            "method": "temperature",
            "temperatures": [float(t) for t in self.temperatures],
            "nll_before": [float(v) for v in self.nll_before],
            "nll_after": [float(v) for v in self.nll_after],
        }


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate (K, N, C) logits and (N,) labels once, at the entry point."""
    if not hasattr(logits, "ndim") or logits.ndim != 3:
        shape = getattr(logits, "shape", None)
        hint = " - for one exit use logits[None]" if shape is not None and len(shape) == 2 else ""
        raise ValueError(f"logits must have shape (K, N, C); got {shape}{hint}")
    K, N, C = logits.shape
    if N == 0 or C < 2:
        raise ValueError(f"logits must hold at least one sample and two classes to fit temperatures; got shape {logits.shape}")
    labels = np.asarray(labels)
    if labels.shape != (N,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({N},) integers matching logits (K, N, C) = {logits.shape}; got {labels.dtype} {labels.shape}")
    if labels.min() < 0 or labels.max() >= C:
        raise ValueError(f"labels must lie in [0, {C}); got range [{labels.min()}, {labels.max()}]")
    return logits, labels.astype(np.int64, copy=False)


def _nll_terms(z: np.ndarray, labels: np.ndarray, beta: float) -> tuple[float, float, float]:
    """Sums over the rows of z (n, C) of the NLL, its first and its second derivative in beta."""
    s = beta * np.asarray(z, dtype=np.float64)
    m = s.max(axis=1, keepdims=True)
    np.subtract(s, m, out=s)
    np.exp(s, out=s)
    total = s.sum(axis=1)
    z_true = z[np.arange(z.shape[0]), labels].astype(np.float64)
    value = float((np.log(total) + m[:, 0] - beta * z_true).sum())
    s /= total[:, None]  # p = softmax(beta z)
    mean_z = np.einsum("nc,nc->n", s, z)
    mean_z2 = np.einsum("nc,nc->n", s, np.square(z, dtype=np.float64))
    return value, float((mean_z - z_true).sum()), float(np.maximum(mean_z2 - mean_z**2, 0.0).sum())


def _nll_and_derivatives(z: np.ndarray, labels: np.ndarray, beta: float) -> tuple[float, float, float]:
    """Mean NLL f(beta), f'(beta), f''(beta) of one exit's logits z (N, C), in chunks."""
    N = z.shape[0]
    acc = np.zeros(3)
    for start in range(0, N, _CHUNK):
        stop = min(N, start + _CHUNK)
        acc += _nll_terms(z[start:stop], labels[start:stop], beta)
    return acc[0] / N, acc[1] / N, acc[2] / N


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of one exit's logits (N, C) divided by `temperature`."""
    z, y = _check(np.asarray(logits)[None], labels)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive; got {temperature}")
    return _nll_and_derivatives(z[0], y, 1.0 / temperature)[0]


def _fit_one(z: np.ndarray, labels: np.ndarray, bounds: tuple[float, float], tol: float) -> float:
    """The T in `bounds` minimising exit z's (N, C) mean NLL: Newton on f'(beta) = 0 in a bracket."""
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]  # beta range
    d_lo = _nll_and_derivatives(z, labels, lo)[1]
    if d_lo > 0:  # f increasing over the range: the smallest beta (largest T) is best
        return bounds[1]
    d_hi = _nll_and_derivatives(z, labels, hi)[1]
    if d_hi < 0:
        return bounds[0]
    # (f flat, e.g. every row's logits equal: f' = 0 at beta = 1 below, and T = 1 stays)
    beta = min(max(1.0, lo), hi)
    for _ in range(200):
        _, d1, d2 = _nll_and_derivatives(z, labels, beta)
        if d1 == 0:
            break
        if d1 > 0:
            hi = beta
        else:
            lo = beta
        step = beta - d1 / d2 if d2 > 0 else np.nan
        nxt = step if lo < step < hi else 0.5 * (lo + hi)
        if abs(nxt - beta) <= tol * beta or hi - lo <= tol * beta:
            beta = nxt
            break
        beta = nxt
    return float(1.0 / beta)


def fit_temperatures(
    logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = T_BOUNDS, tol: float = 1e-7
) -> np.ndarray:
    """One temperature per exit minimising that exit's mean NLL on (val) logits.

    Args:
        logits: (K, N, C) every exit's logits for the fitting split (val only).
        labels: (N,) true classes.
        bounds: (T_min, T_max) searched; a result at a bound means the optimum lies beyond.
        tol: relative tolerance on beta = 1/T.

    Returns:
        (K,) float64 temperatures; divide exit k's logits by T_k.

    Raises:
        ValueError: for bad shapes, labels out of range, non-finite logits or bounds.
    """
    z_all, y = _check(logits, labels)
    if not (len(bounds) == 2 and 0 < bounds[0] < bounds[1] < np.inf):
        raise ValueError(f"bounds must be (T_min, T_max) with 0 < T_min < T_max < inf; got {bounds}")
    temps = np.empty(z_all.shape[0])
    for k in range(z_all.shape[0]):
        if not np.all(np.isfinite(z_all[k])):
            raise ValueError(f"logits of exit {k + 1} hold NaN or inf; temperatures need finite logits")
        temps[k] = _fit_one(z_all[k], y, (float(bounds[0]), float(bounds[1])), tol)
    return temps


def calibrate(logits: np.ndarray, labels: np.ndarray, *, bounds: tuple[float, float] = T_BOUNDS) -> Calibration:
    """`fit_temperatures` plus each exit's NLL before and after, for the report."""
    temps = fit_temperatures(logits, labels, bounds=bounds)
    y = np.asarray(labels).astype(np.int64)
    before = np.array([_nll_and_derivatives(logits[k], y, 1.0)[0] for k in range(len(temps))])
    after = np.array([_nll_and_derivatives(logits[k], y, 1.0 / t)[0] for k, t in enumerate(temps)])
    return Calibration(temps, before, after)
