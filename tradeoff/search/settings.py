"""What the user chose for one search, checked once before any work.

`Pick` (how the chosen point is picked from a front), `SearchSettings` (every choice,
recorded in summary.json) and their validation against the cache and an optional latency
profile. Errors name the option, what was expected and what arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tradeoff.cache.format import ExitCache
from tradeoff.errors import is_integer
from tradeoff.policy.rule import FALLBACKS
from tradeoff.policy.scoring import CONFIDENCE_MEASURES

METHODS = ("nsga", "global", "msdnet", "random", "grid")
PER_CLASS_METHOD = "nsga-per-class"  # the per-class NSGA-II front, searched beside the per-exit one with --per-class
BOOTSTRAP_RESAMPLES = 2000
PICK_KINDS = ("target_acc", "max_drop", "budget_flops", "budget_ms")


@dataclass(frozen=True)
class Pick:
    """How the chosen point is picked from a front on val.

    Attributes:
        kind: "target_acc" (cheapest point with val accuracy >= value), "max_drop"
            (cheapest point within value percentage points of the deepest exit alone) or
            "budget_flops" (most accurate point costing <= value FLOPs per sample).
        value: the target accuracy in (0, 1], the drop in points >= 0, or the budget > 0.
        default: True when the user gave no pick; then kind is "max_drop" with value 0
            (no loss against the deepest exit alone).
    """

    kind: str
    value: float
    default: bool = False

    def __post_init__(self):
        if self.kind not in PICK_KINDS:
            raise ValueError(f"pick kind must be one of {', '.join(PICK_KINDS)}; got {self.kind!r}")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise TypeError(f"--{self.flag} must be a number; got {value!r}")
        value = float(value)
        if self.kind == "target_acc" and not (0.0 < value <= 1.0):
            hint = f" - did you mean {value / 100:g}?" if 1.0 < value <= 100.0 else ""
            raise ValueError(f"--target-acc must be an accuracy in (0, 1]; got {value:g}{hint}")
        if self.kind == "max_drop" and not (np.isfinite(value) and 0.0 <= value <= 100.0):
            raise ValueError(f"--max-drop must be percentage points in [0, 100] (0.5 = half a point); got {value:g}")
        if self.kind == "budget_flops" and not (np.isfinite(value) and value > 0):
            raise ValueError(
                f"--budget-flops must be a positive number of FLOPs per sample (fvcore count, e.g. 3e8); got {value:g}"
            )
        if self.kind == "budget_ms" and not (np.isfinite(value) and value > 0):
            raise ValueError(f"--budget-ms must be a positive number of milliseconds per sample; got {value:g}")
        object.__setattr__(self, "value", value)

    @classmethod
    def from_options(
        cls,
        *,
        target_acc: float | None = None,
        max_drop: float | None = None,
        budget_flops: float | None = None,
        budget_ms: float | None = None,
    ) -> "Pick":
        """The pick the user asked for (at most one option), or the no-loss default."""
        options = (("target_acc", target_acc), ("max_drop", max_drop), ("budget_flops", budget_flops), ("budget_ms", budget_ms))
        given = [(k, v) for k, v in options if v is not None]
        if len(given) > 1:
            names = " and ".join("--" + k.replace("_", "-") for k, _ in given)
            raise ValueError(f"give at most one of --target-acc, --max-drop, --budget-flops, --budget-ms; got {names}")
        if not given:
            return cls("max_drop", 0.0, default=True)
        return cls(*given[0])

    @property
    def flag(self) -> str:
        return self.kind.replace("_", "-")

    @property
    def label(self) -> str:
        """Short name used in the default run directory: acc0.78, drop0.5, budget3e+08, nodrop."""
        if self.default:
            return "nodrop"
        prefix = {"target_acc": "acc", "max_drop": "drop", "budget_flops": "budget", "budget_ms": "budgetms"}[self.kind]
        return f"{prefix}{self.value:g}"

    def describe(self) -> str:
        if self.default:
            return "no loss against the deepest exit alone (give --target-acc, --max-drop or --budget-flops to change)"
        if self.kind == "target_acc":
            return f"cheapest point with val accuracy >= {self.value:g}"
        if self.kind == "max_drop":
            return f"cheapest point within {self.value:g} percentage points of the deepest exit alone"
        if self.kind == "budget_ms":
            return f"most accurate point within {self.value:.4g} ms per sample (latency profile)"
        return f"most accurate point costing <= {self.value / 1e6:.4g} MFLOPs"

    def as_dict(self) -> dict:
        out = {self.kind: self.value}
        if self.default:
            out["default"] = True
        return out


@dataclass(frozen=True)
class SearchSettings:
    """Everything the user chose; recorded in summary.json."""

    pick: Pick
    method: str = "nsga"
    confidence: str = "maxprob"
    ensemble: bool = False
    calibrate: bool = False
    fallback: str = "deepest"
    per_class: bool = False
    pop: int = 100
    gens: int = 100
    seed: int = 0
    restarts: int = 1
    jobs: int = 1
    bootstrap: int = BOOTSTRAP_RESAMPLES
    delta: float | None = None  # Learn-then-Test risk level (search.guarantee); None = val estimate

def _check_int(name: str, value, minimum: int, why: str) -> int:
    if not is_integer(value):
        raise TypeError(f"--{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ValueError(f"--{name} must be >= {minimum} ({why}); got {value}")
    return int(value)


def validate_settings(cache: ExitCache, settings: SearchSettings) -> None:
    """Check the cache and the user's choices once, before any work.

    Raises:
        TypeError / ValueError: one line naming the option, what was expected and what arrived.
    """
    if not isinstance(cache, ExitCache):
        raise TypeError(f"cache must be an ExitCache (see tradeoff.cache.format.load_cache); got {type(cache).__name__}")
    if not isinstance(settings.pick, Pick):
        raise TypeError(f"pick must be a tradeoff.search.settings.Pick; got {type(settings.pick).__name__}")
    K = cache.num_exits
    if K < 2:
        raise ValueError(
            f"the cache has K = {K} exit: there are no thresholds to search (the only exit always answers); "
            "cache a multi-exit model"
        )
    if settings.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}; got {settings.method!r}")
    from tradeoff.search.baselines import GRID_IN_SEARCH_MAX_THRESHOLDS as GRID_MAX_SEARCHED

    if settings.method == "grid" and K - 1 > GRID_MAX_SEARCHED:
        raise ValueError(
            f"--method grid searches exhaustively only up to K-1 = {GRID_MAX_SEARCHED} thresholds; "
            f"this cache has K = {K} exits - use --method nsga"
        )
    if settings.confidence not in CONFIDENCE_MEASURES:
        raise ValueError(f"--confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {settings.confidence!r}")
    if settings.fallback not in FALLBACKS:
        raise ValueError(f"--fallback must be one of {', '.join(FALLBACKS)}; got {settings.fallback!r}")
    if settings.confidence == "patience" and settings.calibrate:
        raise ValueError("--confidence patience cannot be combined with --calibrate: patience counts equal argmaxes, "
                         "which temperatures do not change - drop --calibrate")
    if settings.per_class and settings.method != "nsga":
        raise ValueError(f"--per-class is searched by NSGA-II only; drop --method {settings.method} (or --per-class)")
    _check_int("pop", settings.pop, 4, "NSGA-II needs a population of at least 4")
    _check_int("gens", settings.gens, 1, "at least one generation")
    _check_int("restarts", settings.restarts, 1, "the number of independent searches")
    _check_int("jobs", settings.jobs, 1, "the number of parallel processes")
    _check_int("seed", settings.seed, 0, "a non-negative integer seed")
    _check_int("bootstrap", settings.bootstrap, 100, "resamples for the 95% interval")
    check_delta_pick(settings.pick, settings.delta)
    counts = cache.split_counts()
    for split in ("val", "test"):
        if counts.get(split, 0) == 0:
            have = ", ".join(f"{k} ({v})" for k, v in counts.items()) or "none"
            role = "thresholds are fitted on val" if split == "val" else "test is where the figures are reported"
            raise ValueError(
                f"the cache has no {split!r} rows ({role}; splits present: {have}); "
                "rebuild it with `tradeoff cache`, or give `tradeoff import --split`"
            )


def check_delta_pick(pick: Pick, delta) -> None:
    """`--delta` is a number in (0, 1) given with --target-acc or --max-drop (or not given).

    Raises:
        TypeError / ValueError: one line saying what to give instead.
    """
    if delta is None:
        return
    from tradeoff.search.guarantee import check_delta

    check_delta(delta)
    if pick.default or pick.kind == "budget_flops":
        why = "no pick was given" if pick.default else "--budget-flops is a cost constraint, not a risk"
        raise ValueError(
            f"--delta certifies an accuracy, so it needs --target-acc or --max-drop; {why} - "
            "give --target-acc A or --max-drop D with --delta"
        )


def check_latency(cache: ExitCache, settings: SearchSettings, profile, batch_size, cost: str):
    """The latency profile checked against the cache and the options (None without one)."""
    if cost not in ("flops", "latency"):
        raise ValueError(f"--cost must be flops or latency; got {cost!r}")
    if cost == "latency" and profile is None:
        raise ValueError("--cost latency needs a device latency profile: pass --latency latency.json "
                         "(make it with `tradeoff profile --ckpt MODEL --out latency.json`)")
    kind = settings.pick.kind
    if kind == "budget_ms" and cost != "latency":
        raise ValueError("--budget-ms needs --cost latency (and --latency latency.json); use --budget-flops for FLOPs")
    if kind == "budget_flops" and cost == "latency":
        raise ValueError("--budget-flops prices FLOPs but --cost latency searches milliseconds; use --budget-ms")
    if profile is None:
        return None
    from tradeoff.policy.latency import LatencyProfile

    if not isinstance(profile, LatencyProfile):
        raise TypeError(f"latency_profile must be a LatencyProfile (read_latency_profile(path)); got {type(profile).__name__}")
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"--batch-size must be an integer >= 1; got {batch_size!r}")
    if cost == "latency" and settings.restarts > 1 and settings.jobs > 1:
        raise ValueError("--cost latency scores in this process: use --jobs 1 with --restarts")
    where = profile.path or "latency profile"
    if profile.num_exits != cache.num_exits:
        raise ValueError(f"{where} has {profile.num_exits} exits but the cache has {cache.num_exits}; "
                         "profile the model the cache was built from")
    own, theirs = profile.meta.get("checkpoint_sha256"), cache.meta.get("checkpoint_sha256")
    if own and theirs and own != theirs:
        raise ValueError(f"{where} was measured on another checkpoint (sha256 {own[:12]}...) than the cache's "
                         f"({theirs[:12]}...); profile the checkpoint the cache was built from")
    profile.index_of(batch_size)
    return profile
