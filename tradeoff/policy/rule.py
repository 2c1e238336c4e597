"""The exit policy as one type, `ExitRule`, and its file, `thresholds.json`: the one place
that reads and writes it.

`ExitRule` holds everything that decides where a sample leaves and what it answers: the
per-exit thresholds (None switches an exit off), the confidence measure, the running
ensemble, per-exit temperatures, and the fallback for samples no exit accepted
(DESIGN.md, "Exit rule"). It is validated once, at construction; the scorer
(`tradeoff.policy.table.rule_table`, `tradeoff.policy.scoring.score_rule`), the runtime
(`tradeoff.runtime.early_exit.EarlyExitModel(model, rule)`) and the search result
(`SearchResult.rule`) all take it.

`write_rule` writes a `thresholds.json`; `read_rule` reads one and checks it against what
the caller is about to apply it to, so a file made for another model, another cache or
another confidence measure is caught once, with a message that says which. NumPy and the
standard library only.

The file (DESIGN.md, issue 3): `{"format": "tradeoff-thresholds", "version": 1,
"thresholds": [t_1..t_{K-1}] (null = off; per class a list of lists; K entries under the
ensemble / most-confident fallbacks), "fallback" (absent = "deepest"), "confidence":
"maxprob", "ensemble": false, "calibration":
null | {"temperatures": [T_1..T_K]}, "cache", "cache_sha256", "num_exits", "arch",
"checkpoint_sha256", "pick", "val": {...}, "test": {...}}`. The four keys that decide where
a sample leaves are required; the provenance keys are checked when present and when the
caller has something to check them against.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tradeoff.errors import is_integer
from tradeoff.fileio import write_json_atomic
from tradeoff.policy.confidence import CONFIDENCE_MEASURES

FORMAT = "tradeoff-thresholds"
VERSION = 1
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


def rule_document(rule: ExitRule, **provenance) -> dict:
    """The whole `thresholds.json` object: format, version, the rule's keys, then `provenance`
    (cache, checkpoint, figures...; see the module docstring)."""
    clash = sorted(set(provenance) & {"format", "version", "thresholds", "confidence", "ensemble", "calibration", "fallback"})
    if clash:
        raise ValueError(f"provenance must not redefine the rule's keys; got {', '.join(clash)}")
    return {"format": FORMAT, "version": VERSION, **rule.document(), **provenance}


def write_rule(path: str | os.PathLike, rule: ExitRule, **provenance) -> Path:
    """Write `rule` (and `provenance`) as a thresholds.json, atomically, sorted keys. Returns the path."""
    path = Path(path)
    write_json_atomic(path, rule_document(rule, **provenance))
    return path


REQUIRED_KEYS = ("thresholds", "confidence", "ensemble", "calibration")


@dataclass(frozen=True)
class ThresholdsFile:
    """A validated thresholds file: its `rule` and where it came from.

    Attributes:
        path: where it was read from.
        rule: the `ExitRule` it holds.
        thresholds: (M,) float64 in [0, 1] (per class (M, C)), exits shallow -> deep, a
            switched-off exit as `OFF_THRESHOLD`; M = K-1 under "deepest", else K.
        fallback: who answers a sample no exit accepted (a file without the key: "deepest").
        confidence: one of `policy.CONFIDENCE_MEASURES`.
        ensemble: whether exit k answers with the mean softmax of exits 1..k.
        temperatures: (K,) float64 > 0 per-exit calibration temperatures, or None.
        num_exits: K (from the file, or len(thresholds) + 1 when the file omits it).
        cache: path of the cache the thresholds were searched on, or None.
        cache_sha256: that cache's sha256, or None.
        arch: model name recorded in the cache, or None.
        checkpoint_sha256: sha256 of the checkpoint the cache was built from, or None.
        pick: how the point was chosen (e.g. {"target_acc": 0.97}), or None.
        val: the chosen point's figures on the validation split (dict, may be empty).
        test: the same on the test split (dict, may be empty).
    """

    path: Path
    rule: ExitRule
    thresholds: np.ndarray
    fallback: str
    confidence: str
    ensemble: bool
    temperatures: np.ndarray | None
    num_exits: int
    cache: str | None
    cache_sha256: str | None
    arch: str | None
    checkpoint_sha256: str | None
    pick: object
    val: dict
    test: dict


def read_rule(
    path: str | os.PathLike,
    *,
    cache_sha256: str | None = None,
    num_exits: int | None = None,
    confidence: str | None = None,
    checkpoint_sha256: str | None = None,
) -> ThresholdsFile:
    """Read `path` and check it against what the caller is about to apply it to.

    Args:
        path: a `thresholds.json` written by `tradeoff search`.
        cache_sha256: if given, the file's `cache_sha256` must equal it.
        num_exits: if given (the model's K), the file must hold K-1 thresholds (K under
            the ensemble / most-confident fallbacks), K temperatures, and `num_exits` = K
            when it records one.
        confidence: if given, the file's confidence measure must equal it.
        checkpoint_sha256: if given (the checkpoint about to run), the file's
            `checkpoint_sha256` must equal it when the file records one.

    Returns:
        The validated `ThresholdsFile`.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: malformed JSON, a missing key, a bad value, or a mismatch; one line
            naming the file, what was expected, what arrived and the fix.
    """
    path = Path(path)
    where = f"thresholds file {path}"
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist; run `tradeoff search` first, it writes results/<run>/thresholds.json")
    if path.is_dir():
        raise ValueError(f"{where} is a directory; pass the thresholds.json inside it")
    try:
        text = path.read_text(encoding="utf-8")
        doc = json.loads(text)
    except UnicodeDecodeError:
        raise ValueError(f"{where} is not a text JSON file; pass the thresholds.json written by `tradeoff search`") from None
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
            "it may be truncated - rerun `tradeoff search` to rewrite it"
        ) from None
    except (ValueError, RecursionError) as exc:  # an integer of thousands of digits; nesting too deep
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(":")[0]
        raise ValueError(
            f"{where} is not a thresholds JSON file ({reason}); pass the thresholds.json written by `tradeoff search`"
        ) from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must hold a JSON object; got a JSON {type(doc).__name__}")
    if "format" in doc and doc["format"] != FORMAT:
        raise ValueError(f"{where} has format {_clip(doc['format'])}, not {FORMAT!r}; pass a thresholds.json written by "
                         "`tradeoff search`")
    if "version" in doc and doc["version"] != VERSION:
        raise ValueError(f"{where} has version {_clip(doc['version'])}; this tradeoff reads version {VERSION} - "
                         "rerun `tradeoff search` to rewrite it")
    missing = [key for key in REQUIRED_KEYS if key not in doc]
    if missing:
        raise ValueError(
            f"{where} lacks the key(s) {', '.join(missing)} (required: {', '.join(REQUIRED_KEYS)}); "
            "is it a thresholds.json written by `tradeoff search`?"
        )

    values = _thresholds(doc["thresholds"], where)
    fallback = doc.get("fallback", "deepest")
    if fallback not in FALLBACKS:
        raise ValueError(f"{where}: fallback must be one of {', '.join(FALLBACKS)}; got {_clip(fallback)}")
    measure = doc["confidence"]
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"{where}: confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {_clip(measure)}")
    if not isinstance(doc["ensemble"], bool):
        raise ValueError(f"{where}: ensemble must be true or false; got {_clip(doc['ensemble'])}")
    K = len(values) + (fallback == "deepest")
    file_k = doc.get("num_exits")
    if file_k is not None and (not is_integer(file_k) or file_k < 2):
        raise ValueError(f"{where}: num_exits must be an integer >= 2; got {_clip(file_k)}")
    if file_k is not None and file_k != K:
        need = file_k - 1 if fallback == "deepest" else file_k
        raise ValueError(
            f"{where} is inconsistent: num_exits = {file_k} needs {need} thresholds but it holds {len(values)} "
            f"(fallback {fallback!r}); rerun `tradeoff search`"
        )
    temperatures = _temperatures(doc["calibration"], K, where)
    try:
        rule = ExitRule(tuple(values), confidence=measure, ensemble=doc["ensemble"], fallback=fallback,
                        temperatures=None if temperatures is None else tuple(temperatures))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if num_exits is not None and num_exits != K:
        raise ValueError(
            f"{where} holds {len(values)} thresholds (a {K}-exit model) but the model has {num_exits} exits, so it "
            f"needs {num_exits - 1 if fallback == 'deepest' else num_exits} (fallback {fallback!r}); it was made for "
            "another model - search thresholds on this model's cache"
        )
    if confidence is not None and confidence != measure:
        raise ValueError(
            f"{where} was searched with confidence {measure!r}, not {confidence!r}; "
            f"use --confidence {measure} or search again with --confidence {confidence}"
        )
    file_cache_sha = _optional_str(doc, "cache_sha256", where)
    if cache_sha256 is not None and file_cache_sha is not None and file_cache_sha != cache_sha256:
        raise ValueError(
            f"{where} was searched on another cache: its cache_sha256 is {file_cache_sha[:12]}... but the "
            f"given cache's is {cache_sha256[:12]}...; pass the cache it came from ({doc.get('cache')}) "
            "or search again on this one"
        )
    file_ckpt_sha = _optional_str(doc, "checkpoint_sha256", where)
    if checkpoint_sha256 is not None and file_ckpt_sha is not None and file_ckpt_sha != checkpoint_sha256:
        raise ValueError(
            f"{where} was searched for another model: its checkpoint_sha256 is {file_ckpt_sha[:12]}... but the "
            f"checkpoint's is {checkpoint_sha256[:12]}... (arch {_clip(doc.get('arch'))}); pass the checkpoint the "
            "cache was built from, or cache and search this one"
        )
    for split in ("val", "test"):
        if not isinstance(doc.get(split, {}), dict):
            raise ValueError(f"{where}: {split} must be a JSON object of figures; got {_clip(doc[split])}")
    return ThresholdsFile(
        path=path,
        rule=rule,
        thresholds=rule.threshold_array(),
        fallback=fallback,
        confidence=measure,
        ensemble=doc["ensemble"],
        temperatures=temperatures,
        num_exits=K,
        cache=_optional_str(doc, "cache", where),
        cache_sha256=file_cache_sha,
        arch=_optional_str(doc, "arch", where),
        checkpoint_sha256=file_ckpt_sha,
        pick=doc.get("pick"),
        val=dict(doc.get("val") or {}),
        test=dict(doc.get("test") or {}),
    )


def _thresholds(value, where: str) -> list:
    """The file's thresholds: a non-empty list of numbers in [0, 1] or null (off), or of such lists (per class)."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"{where}: thresholds must be a non-empty list of numbers (null = off) or of per-class lists; got {_clip(value)}"
        )
    flat = [x for v in value for x in (v if isinstance(v, list) else [v])]
    bad = [v for v in flat if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)))]
    if bad:
        raise ValueError(f"{where}: thresholds must be numbers; got {_clip(bad[0])} in a list of {len(value)} (null = off)")
    outside = [v for v in flat if v is not None and not (0 <= v <= 1 and math.isfinite(v))]  # exact for huge integers
    if outside:
        raise ValueError(
            f"{where}: thresholds must lie in [0, 1] (they are confidences); got {_clip(outside[0])} in a list of "
            f"{len(value)} - to keep every sample from leaving at an exit, switch it off with null"
        )
    return [tuple(v) if isinstance(v, list) else v for v in value]


def _temperatures(calibration, K: int, where: str) -> np.ndarray | None:
    """(K,) positive temperatures from `calibration`, or None when it is null."""
    if calibration is None:
        return None
    if not isinstance(calibration, dict) or "temperatures" not in calibration:
        raise ValueError(f"{where}: calibration must be null or {{\"temperatures\": [...]}}; got {_clip(calibration)}")
    temps = calibration["temperatures"]
    if (
        not isinstance(temps, list)
        or len(temps) != K
        or any(isinstance(t, bool) or not isinstance(t, (int, float)) for t in temps)
        or not all(0 < t < 1e300 and math.isfinite(t) for t in temps)
    ):
        raise ValueError(
            f"{where}: calibration.temperatures must be {K} positive numbers, one per exit; got {_clip(temps)}"
        )
    return np.asarray(temps, dtype=np.float64)


def _optional_str(doc: dict, key: str, where: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{where}: {key} must be a string or null; got {_clip(value)}")
    return value


def _clip(value, limit: int = 80) -> str:
    """repr of a value read from the file, cut short so the error stays one readable line."""
    text = repr(value) if not isinstance(value, int) or abs(value) < 10**60 else f"an integer of {len(str(abs(value)))} digits"
    return text if len(text) <= limit else text[:limit] + "..."
