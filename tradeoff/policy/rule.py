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
"thresholds": [t_1..t_{K-1}], "confidence": "maxprob", "ensemble": false, "calibration":
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
FALLBACKS = ("deepest",)  # what answers a sample no exit accepted (DESIGN.md lists more to come)


@dataclass(frozen=True)
class ExitRule:
    """The whole exit policy of a K-exit network, validated at construction.

    Attributes:
        thresholds: (K-1,) per-exit confidence thresholds in [0, 1], shallow -> deep, or
            None for an exit that is switched off; the deepest exit needs none
            (fallback "deepest"). Stored as a tuple of floats.
        confidence: "maxprob", "margin" or "entropy" (`policy.confidence`).
        ensemble: exit k answers with the mean softmax of exits 1..k (and measures its
            confidence on that mean).
        temperatures: (K,) positive per-exit softmax temperatures, or None (all 1).
        fallback: what answers a sample no exit accepted; "deepest" (the last exit).

    Raises:
        TypeError / ValueError: a threshold that is not a number in [0, 1] (or None), an
            unknown confidence measure or fallback, temperatures of the wrong length or
            not positive.
    """

    thresholds: tuple
    confidence: str = "maxprob"
    ensemble: bool = False
    temperatures: tuple | None = None
    fallback: str = "deepest"

    def __post_init__(self):
        raw = self.thresholds
        if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__"):
            raise TypeError(f"thresholds must be a sequence of K-1 numbers (or None); got {type(raw).__name__}")
        values = list(np.asarray(raw, dtype=object).ravel()) if isinstance(raw, np.ndarray) else list(raw)
        if not values:
            raise ValueError("thresholds must hold K-1 >= 1 values, one per exit but the deepest; got none")
        clean = []
        for v in values:
            if v is None:
                clean.append(None)
                continue
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise TypeError(f"thresholds must be numbers in [0, 1] or None; got {v!r}")
            if not (0.0 <= float(v) <= 1.0):
                raise ValueError(f"thresholds must lie in [0, 1]; got {[None if x is None else float(x) for x in values]}")
            clean.append(float(v))
        object.__setattr__(self, "thresholds", tuple(clean))
        if self.confidence not in CONFIDENCE_MEASURES:
            raise ValueError(f"confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {self.confidence!r}")
        if not isinstance(self.ensemble, (bool, np.bool_)):
            raise TypeError(f"ensemble must be True or False; got {self.ensemble!r}")
        object.__setattr__(self, "ensemble", bool(self.ensemble))
        if self.fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}; got {self.fallback!r}")
        if self.temperatures is not None:
            temps = np.asarray(self.temperatures, dtype=np.float64).ravel()
            K = len(clean) + 1
            if temps.shape != (K,) or not np.all(np.isfinite(temps)) or np.any(temps <= 0):
                raise ValueError(f"temperatures must be {K} positive numbers, one per exit; got {temps.tolist()}")
            object.__setattr__(self, "temperatures", tuple(float(t) for t in temps))

    @property
    def num_exits(self) -> int:
        """K: the thresholds cover every exit but the deepest."""
        return len(self.thresholds) + 1

    def threshold_array(self) -> np.ndarray:
        """(K-1,) float64 for the scorers and the runtime; a switched-off exit gets `OFF_THRESHOLD`."""
        return np.array([OFF_THRESHOLD if t is None else t for t in self.thresholds], dtype=np.float64)

    def temperature_array(self) -> np.ndarray:
        """(K,) float64 temperatures (ones when none were fitted)."""
        return np.ones(self.num_exits) if self.temperatures is None else np.asarray(self.temperatures, dtype=np.float64)

    def document(self) -> dict:
        """The keys of `thresholds.json` that decide where a sample leaves."""
        return {
            "thresholds": list(self.thresholds),
            "confidence": self.confidence,
            "ensemble": self.ensemble,
            "calibration": None if self.temperatures is None else {"temperatures": list(self.temperatures)},
        }


def rule_document(rule: ExitRule, **provenance) -> dict:
    """The whole `thresholds.json` object: format, version, the rule's keys, then `provenance`
    (cache, checkpoint, figures...; see the module docstring)."""
    clash = sorted(set(provenance) & {"format", "version", "thresholds", "confidence", "ensemble", "calibration"})
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
        thresholds: (K-1,) float64 in [0, 1], exits shallow -> deep (the deepest needs none).
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
        num_exits: if given (the model's K), the file must hold K-1 thresholds (and K
            temperatures, and `num_exits` = K when it records one).
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

    thresholds = _thresholds(doc["thresholds"], where)
    measure = doc["confidence"]
    if measure not in CONFIDENCE_MEASURES:
        raise ValueError(f"{where}: confidence must be one of {', '.join(CONFIDENCE_MEASURES)}; got {_clip(measure)}")
    if not isinstance(doc["ensemble"], bool):
        raise ValueError(f"{where}: ensemble must be true or false; got {_clip(doc['ensemble'])}")
    file_k = doc.get("num_exits")
    if file_k is not None and (not is_integer(file_k) or file_k < 2):
        raise ValueError(f"{where}: num_exits must be an integer >= 2; got {_clip(file_k)}")
    if file_k is not None and file_k != thresholds.size + 1:
        raise ValueError(
            f"{where} is inconsistent: num_exits = {file_k} needs {file_k - 1} thresholds but it holds "
            f"{thresholds.size}; rerun `tradeoff search`"
        )
    K = thresholds.size + 1
    temperatures = _temperatures(doc["calibration"], K, where)

    if num_exits is not None and num_exits != K:
        raise ValueError(
            f"{where} holds {K - 1} thresholds (a {K}-exit model) but the model has {num_exits} exits, "
            f"so it needs {num_exits - 1}; it was made for another model - search thresholds on this model's cache"
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
        rule=ExitRule(tuple(thresholds), confidence=measure, ensemble=doc["ensemble"],
                      temperatures=None if temperatures is None else tuple(temperatures)),
        thresholds=thresholds,
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


def _thresholds(value, where: str) -> np.ndarray:
    """(K-1,) float64 in [0, 1] from the file's list."""
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"{where}: thresholds must be a non-empty list of numbers, one per exit but the deepest; got {_clip(value)}"
        )
    bad = [v for v in value if isinstance(v, bool) or not isinstance(v, (int, float))]
    if bad:
        raise ValueError(f"{where}: thresholds must be numbers; got {_clip(bad[0])} in a list of {len(value)}")
    outside = [v for v in value if not (0 <= v <= 1 and math.isfinite(v))]  # exact for huge integers too
    if outside:
        raise ValueError(
            f"{where}: thresholds must lie in [0, 1] (they are confidences); got {_clip(outside[0])} in a list of {len(value)}"
        )
    return np.asarray(value, dtype=np.float64)


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
