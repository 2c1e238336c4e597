"""The exit policy as one type, `ExitRule`.

`ExitRule` holds everything that decides where a sample leaves and what it answers: the
per-exit thresholds (None switches an exit off), the confidence measure, the running
ensemble, per-exit temperatures, and the fallback for samples no exit accepted
(DESIGN.md, "Exit rule"). It is validated once, at construction; the scorer
(`tradeoff.policy.table.rule_table`, `tradeoff.policy.scoring.score_rule`), the runtime
(`tradeoff.runtime.early_exit.EarlyExitModel(model, rule)`) and the search result
(`SearchResult.rule`) all take it. Its file, `thresholds.json`, is read and written in
`tradeoff.policy.rule_file` only. NumPy and the standard library only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tradeoff.policy.confidence import CONFIDENCE_MEASURES

# A switched-off exit is scored with this threshold: every confidence lies in [0, 1], so none
# reaches it (finite, so the scorers' finiteness check still guards against NaN).
OFF_THRESHOLD = 2.0
FALLBACKS = ("deepest", "ensemble", "most-confident")  # what answers a sample no exit accepted


def _threshold_value(v, where: str):
    """One threshold: None (off) or a float in [0, 1]; anything else raises one line."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where} must be numbers in [0, 1] or None (off); got {v!r}")
    x = float(v)
    if x > 1.0 and math.isfinite(x):
        raise ValueError(
            f"{where} must lie in [0, 1]; got {x:g} - a confidence never exceeds 1, so to keep every sample from "
            "leaving at an exit switch it off (`off` on the command line, null in thresholds.json)"
        )
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"{where} must lie in [0, 1] (or be off); got {v!r}")
    return x


@dataclass(frozen=True)
class ExitRule:
    """The whole exit policy of a K-exit network, validated at construction.

    Sources: the per-exit threshold rule of BranchyNet / SCAN; SCAN's ensemble fallback
    (Zhang et al., NeurIPS 2019); SDN's most-confident fallback (Kaya et al., ICML 2019);
    PABEE's patience (Zhou et al., NeurIPS 2020). DESIGN.md, "Exit rule".

    Attributes:
        thresholds: one entry per thresholded exit, shallow -> deep: K-1 entries under
            fallback "deepest" (the deepest exit always answers), K under "ensemble" and
            "most-confident" (the last exit is thresholded too, as in SCAN). An entry is
            None (switched off: nobody leaves there, even at confidence 1.0), a float in
            [0, 1], or - per-class thresholds - a tuple of C such values indexed by the
            class the exit predicts (then every entry is one; a None entry becomes C Nones).
        confidence: "maxprob", "margin", "entropy" or "patience" (`policy.confidence`).
        ensemble: exit k answers with the mean softmax of exits 1..k (and measures its
            confidence on that mean).
        temperatures: (K,) positive per-exit softmax temperatures, or None (all 1).
            Refused with "patience" (an argmax run does not depend on temperatures).
        fallback: who answers a sample no exit accepted: "deepest" (exit K), "ensemble"
            (argmax of the mean of all K exits' temperature-scaled logits, SCAN's code) or
            "most-confident" (the prediction of the exit with the highest confidence among
            all K, switched-off ones included, the shallowest on ties; SDN). The last two
            cost the whole network, every head included (flops[K-1]), and report exit K.

    Raises:
        TypeError / ValueError: a threshold that is not a number in [0, 1] (or None; above
            1 the message says to use off), per-class rows of unequal length, an unknown
            confidence measure or fallback, temperatures of the wrong length or not
            positive, or temperatures with patience.
    """

    thresholds: tuple
    confidence: str = "maxprob"
    ensemble: bool = False
    temperatures: tuple | None = None
    fallback: str = "deepest"

    def __post_init__(self):
        raw = self.thresholds
        if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
            raise TypeError(f"thresholds must be a sequence of numbers (or None); got {type(raw).__name__}")
        values = list(raw.tolist()) if isinstance(raw, np.ndarray) else list(raw)
        if not values:
            raise ValueError("thresholds must hold at least one value, one per thresholded exit; got none")
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}; got {self.fallback!r}")
        rows = [v for v in values if isinstance(v, (list, tuple, np.ndarray))]
        if rows:
            C = len(rows[0])
            if C < 2 or any(len(r) != C for r in rows):
                raise ValueError(
                    "per-class thresholds must be one row of C >= 2 values per thresholded exit, all of the same "
                    f"length; got rows of lengths {[len(r) if isinstance(r, (list, tuple, np.ndarray)) else 'scalar' for r in values]}"
                )
            if len(rows) != len(values) and any(v is not None for v in values if not isinstance(v, (list, tuple, np.ndarray))):
                raise ValueError("thresholds must be all per-exit numbers or all per-class rows (None switches a whole exit off)")
            clean = tuple(
                (None,) * C if v is None else tuple(_threshold_value(x, "per-class thresholds") for x in v) for v in values
            )
        else:
            clean = tuple(_threshold_value(v, "thresholds") for v in values)
        object.__setattr__(self, "thresholds", clean)
        if self.confidence not in CONFIDENCE_MEASURES:
            raise ValueError(f"confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {self.confidence!r}")
        if not isinstance(self.ensemble, (bool, np.bool_)):
            raise TypeError(f"ensemble must be True or False; got {self.ensemble!r}")
        object.__setattr__(self, "ensemble", bool(self.ensemble))
        if self.temperatures is not None:
            if self.confidence == "patience":
                raise ValueError("confidence 'patience' takes no calibration: it counts equal argmaxes, which "
                                 "temperatures do not change - drop --calibrate (or the temperatures)")
            temps = np.asarray(self.temperatures, dtype=np.float64).ravel()
            K = self.num_exits
            if temps.shape != (K,) or not np.all(np.isfinite(temps)) or np.any(temps <= 0):
                raise ValueError(f"temperatures must be {K} positive numbers, one per exit; got {temps.tolist()}")
            object.__setattr__(self, "temperatures", tuple(float(t) for t in temps))

    @property
    def num_exits(self) -> int:
        """K: the thresholds cover every exit but the deepest under "deepest", every exit otherwise."""
        return len(self.thresholds) + (self.fallback == "deepest")

    @property
    def per_class(self) -> bool:
        """Whether thresholds are per (exit, predicted class)."""
        return isinstance(self.thresholds[0], tuple)

    @property
    def num_classes(self) -> int | None:
        """C of per-class thresholds, else None."""
        return len(self.thresholds[0]) if self.per_class else None

    def threshold_array(self) -> np.ndarray:
        """(M,) float64 (per class: (M, C)) for the scorers and the runtime; off is `OFF_THRESHOLD`."""
        if self.per_class:
            return np.array([[OFF_THRESHOLD if t is None else t for t in row] for row in self.thresholds], dtype=np.float64)
        return np.array([OFF_THRESHOLD if t is None else t for t in self.thresholds], dtype=np.float64)

    def temperature_array(self) -> np.ndarray:
        """(K,) float64 temperatures (ones when none were fitted)."""
        return np.ones(self.num_exits) if self.temperatures is None else np.asarray(self.temperatures, dtype=np.float64)

    def check_fits(self, num_exits: int, num_classes: int | None = None) -> None:
        """Raise one line when this rule cannot run on a K-exit, C-class model or cache."""
        K, M = num_exits, len(self.thresholds)
        if self.fallback == "deepest" and M == K and self.thresholds[-1] is None:
            raise ValueError(
                f"off on the last exit under fallback 'deepest': exit {K} always answers there and cannot be switched "
                f"off; give K-1 = {K - 1} thresholds, or use fallback ensemble or most-confident to threshold it too"
            )
        want = K - 1 if self.fallback == "deepest" else K
        if M != want:
            why = ("the deepest exit always answers" if self.fallback == "deepest"
                   else "the last exit is thresholded too, as in SCAN")
            hint = (" - to threshold the last exit too use fallback ensemble or most-confident"
                    if self.fallback == "deepest" and M == K else "")
            raise ValueError(
                f"fallback {self.fallback!r} needs {'K-1' if want == K - 1 else 'K'} = {want} thresholds for a "
                f"{K}-exit model ({why}); got {M}{hint}"
            )
        if self.per_class and num_classes is not None and self.num_classes != num_classes:
            raise ValueError(
                f"per-class thresholds must be a ({want}, C) = ({want}, {num_classes}) table for {num_classes} "
                f"classes; got ({M}, {self.num_classes})"
            )

    def document(self) -> dict:
        """The keys of `thresholds.json` that decide where a sample leaves (null = off; per class
        a list of lists; `fallback` is written when it is not the default "deepest")."""
        doc = {
            "thresholds": [list(t) if isinstance(t, tuple) else t for t in self.thresholds],
            "confidence": self.confidence,
            "ensemble": self.ensemble,
            "calibration": None if self.temperatures is None else {"temperatures": list(self.temperatures)},
        }
        if self.fallback != "deepest":
            doc["fallback"] = self.fallback
        return doc


def rule_thresholds(values) -> tuple:
    """Scorer thresholds ((M,) or per class (M, C), `OFF_THRESHOLD` = off) -> `ExitRule` entries
    (None = off, per-class rows as tuples)."""
    def one(v):
        return None if float(v) >= OFF_THRESHOLD else float(v)

    return tuple(tuple(one(x) for x in v) if np.ndim(v) else one(v) for v in values)


def threshold_text(value) -> str:
    """A threshold for people: `off`, a number, or (per class) `per class [lo..hi]`."""
    if value is None or (np.ndim(value) == 0 and float(value) >= OFF_THRESHOLD):
        return "off"
    if np.ndim(value):
        on = [float(v) for v in value if v is not None and float(v) < OFF_THRESHOLD]
        return f"per class [{min(on):.4f}..{max(on):.4f}]" if on else "off"
    return f"{float(value):.4f}"


def parse_thresholds(text: str) -> tuple:
    """`0.98,0.97,off` -> (0.98, 0.97, None): the command line's thresholds (`off` = switched off).

    Per-class tables go through a thresholds.json. Raises ValueError naming the bad item.
    """
    items = [item.strip() for item in str(text).split(",")]
    out = []
    for item in items:
        if item.lower() in ("off", "null", "none"):
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError:
            raise ValueError(
                f"--thresholds must be numbers in [0, 1] or off, separated by commas (e.g. 0.98,0.97,off); got {item!r}"
            ) from None
        out.append(_threshold_value(value, "--thresholds"))
    return tuple(out)
