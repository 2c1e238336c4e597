"""`report.html`: one self-contained, interactive page per run directory.

Gather, then draw (optuna's habit, as `plots.py` does for the static pictures):
`gather_report` reads a run directory's files (`thresholds.json`, `summary.json`,
`pareto.csv`) and, when it can find it unchanged, the cache the run was searched on (for
per-sample confidences and every front point's exit fractions), into a frozen
`ReportData`; `report.html_figures` draws plotly figures from it (the notebook uses
the same functions); `report.html_page.report_page` puts them in one HTML page with
plotly.js inline (no CDN: the file opens offline and makes no network request) and a few
lines of our own script that refresh the point panel when a point is clicked. `write_report` writes the
page atomically (`fileio`), so a reader never sees half a `report.html`.

NumPy and plotly only: no torch, no matplotlib.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tradeoff import __version__
from tradeoff.policy import rule_file
from tradeoff.policy.rule import OFF_THRESHOLD
from tradeoff.report import documents as report
from tradeoff.report import rundir
from tradeoff.fileio import sha256_file, write_text_atomic
from tradeoff.report.html_page import report_page
from tradeoff.report.style import METHOD_LABELS

REPORT_FILE = "report.html"
SUMMARY_FORMAT, SUMMARY_VERSION = "tradeoff-summary", 1
HISTOGRAM_BINS = 40


# --------------------------------------------------------------------------- gathered data
@dataclass(frozen=True)
class FrontData:
    """One method's front, every point (never thinned here), sorted by val cost.

    Attributes:
        method: "nsga", "nsga-per-class", "global", "msdnet", "random" or "grid".
        thresholds: (F, M) per-exit thresholds (NaN = exit switched off), M = K-1 under
            fallback "deepest", K otherwise (the last exit is thresholded too); for a
            per-class front each exit's median over the classes it lets leave (shown as
            "median of per-class"; NaN when every class is off).
        val_accuracy, val_flops, test_accuracy, test_flops: (F,) each; flops are
            fvcore counts per sample.
        val_fractions, test_fractions: (F, K) share of samples leaving at each exit, or
            None where unknown (no cache: only the reported front's val shares are saved).
    """

    method: str
    thresholds: np.ndarray
    val_accuracy: np.ndarray
    val_flops: np.ndarray
    test_accuracy: np.ndarray
    test_flops: np.ndarray
    val_fractions: np.ndarray | None
    test_fractions: np.ndarray | None
    class_thresholds: np.ndarray | None = None

    @property
    def per_class(self) -> bool:
        """Whether the front holds per-class tables: `class_thresholds` (F, M, C), exactly as
        searched (`OFF_THRESHOLD` = off), is what its points are scored with."""
        return self.class_thresholds is not None

    @property
    def size(self) -> int:
        return int(self.val_accuracy.shape[0])


@dataclass(frozen=True)
class PointData:
    """One threshold vector with its figures: the chosen point, a certified one, a front row.

    Attributes:
        label: what the point is ("chosen (NSGA-II)", "certified (delta = 0.1)", ...).
        thresholds: (M,) per thresholded exit (NaN = off); per class, each exit's median.
        val_accuracy, val_flops, test_accuracy, test_flops: figures on each split.
        val_fractions, test_fractions: (K,) or None.
        test_ci95: 95% interval of the test accuracy, or None.
    """

    label: str
    thresholds: tuple[float, ...]
    val_accuracy: float
    val_flops: float
    test_accuracy: float
    test_flops: float
    val_fractions: tuple[float, ...] | None
    test_fractions: tuple[float, ...] | None
    test_ci95: tuple[float, float] | None = None
    per_class: bool = False


@dataclass(frozen=True)
class ExitAloneData:
    name: str
    flops: float
    val_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class ConfidenceHistograms:
    """Each exit's confidence on val, binned, split into right and wrong answers.

    Attributes:
        measure: "maxprob", "margin" or "entropy" (as searched, after calibration).
        edges: (B+1,) bin edges over [0, 1].
        right, wrong: (K, B) sample counts.
    """

    measure: str
    edges: np.ndarray
    right: np.ndarray
    wrong: np.ndarray


@dataclass(frozen=True)
class ReportData:
    """Everything the report draws, gathered once from a run directory.

    Attributes:
        run_dir: where the files were read.
        title: architecture and cache name.
        exit_names, exit_flops: (K,) names and cost of leaving at each exit (fvcore count).
        baseline_flops: the original single-exit network's cost.
        exit_ms: (K,) milliseconds of leaving at each exit from a latency profile, or None.
        fronts: every method's front, the picked-on method first.
        exits: each exit alone.
        chosen: the picked point; certified: the guaranteed pick where the run has one.
        pick: the pick as recorded (`Pick.as_dict()`).
        confidence: the histograms, or None without the cache.
        notes: lines the page shows (e.g. why histograms are missing).
        fallback: who answers a sample no exit accepted ("deepest", "ensemble",
            "most-confident"; `ExitRule.fallback`), from thresholds.json.
    """

    run_dir: Path
    title: str
    exit_names: tuple[str, ...]
    exit_flops: tuple[float, ...]
    baseline_flops: float
    exit_ms: tuple[float, ...] | None
    fronts: tuple[FrontData, ...]
    exits: tuple[ExitAloneData, ...]
    chosen: PointData
    certified: PointData | None
    pick: dict
    confidence: ConfidenceHistograms | None
    notes: tuple[str, ...]
    fallback: str = "deepest"

    @property
    def num_exits(self) -> int:
        return len(self.exit_names)

    @property
    def num_thresholds(self) -> int:
        """M: K-1 under fallback "deepest" (the deepest exit always answers), K otherwise."""
        return self.num_exits - (self.fallback == "deepest")

    def point(self, method: str, index: int) -> PointData:
        """Row `index` of `method`'s front as a PointData (for the figures' panel)."""
        front = next((f for f in self.fronts if f.method == method), None)
        if front is None:
            raise ValueError(f"no {method!r} front in this report; it has {', '.join(f.method for f in self.fronts)}")
        if not 0 <= index < front.size:
            raise ValueError(f"index must be in [0, {front.size}) for the {method} front; got {index}")

        def row(a):
            return None if a is None else tuple(float(v) for v in a[index])

        return PointData(f"{method} #{index}", row(front.thresholds), float(front.val_accuracy[index]),
                         float(front.val_flops[index]), float(front.test_accuracy[index]),
                         float(front.test_flops[index]), row(front.val_fractions), row(front.test_fractions),
                         per_class=front.per_class)


# --------------------------------------------------------------------------- gathering
def gather_report(run_dir: str | os.PathLike, *, cache_path: str | os.PathLike | None = None,
                  lock: bool = True) -> ReportData:
    """Read a run directory (and the cache it came from) into a ReportData.

    The cache is looked for where `thresholds.json` records it, then beside the run; it
    is used only if its sha256 matches the recorded one, and its val accuracies must
    reproduce the saved front's, so the histograms and exit shares are those of this run.

    Args:
        run_dir: a directory written by `tradeoff search` (or `make demo`).
        cache_path: the cache, if it moved; then a sha256 mismatch is an error.
        lock: hold the run's shared lock while reading (False when the caller holds it).

    Raises:
        FileNotFoundError: the directory, one of its files, or the given cache is missing.
        ValueError: one line naming the file that is malformed or written by another
            format version, or a given cache that is not the run's.
    """
    run_dir = Path(run_dir)
    thresholds_doc, summary, csv_text = rundir.read_run(run_dir, lock=lock)
    _check_format(run_dir / rundir.THRESHOLDS_FILE, thresholds_doc, rule_file.FORMAT, rule_file.VERSION)
    _check_format(run_dir / rundir.SUMMARY_FILE, summary, SUMMARY_FORMAT, SUMMARY_VERSION)
    csv = rundir.parse_pareto_csv(csv_text, source=str(run_dir / rundir.PARETO_FILE))
    with _naming(run_dir / rundir.THRESHOLDS_FILE):
        fallback = str(thresholds_doc.get("fallback", "deepest"))
    with _naming(run_dir / rundir.SUMMARY_FILE):
        cache_doc = summary["cache"]
        names = tuple(str(n) for n in cache_doc["exit_names"])
        M = len(names) - (fallback == "deepest")
        fronts = [_front_from_summary(doc, M) for doc in summary["fronts"]]
        exits = tuple(ExitAloneData(str(e["name"]), float(e["flops"]), float(e["val_accuracy"]),
                                    float(e["test_accuracy"])) for e in summary["exits"])
        method = str(summary["chosen"]["method"])
        pick = dict(summary["settings"]["pick"])
        title = f"{cache_doc['meta'].get('arch') or 'unknown arch'} - {Path(cache_doc['path'] or 'in-memory cache').name}"
        # Per-exit ms are additive only at batch 1 (at B > 1 a stage's cost depends on how many
        # samples are still in flight): the page prices points in ms only then.
        latency = summary.get("latency") or {}
        exit_ms = latency.get("exit_path_ms") if latency.get("batch_size") == 1 else None
        exit_ms = None if exit_ms is None else tuple(float(v) for v in exit_ms)
    fronts.sort(key=lambda f: f.method != method)  # the picked-on front first
    with _naming(run_dir / rundir.THRESHOLDS_FILE):
        chosen = _point_from_doc(thresholds_doc, f"chosen point ({METHOD_LABELS.get(method, method)})", M)
        # With --delta the chosen point is the Learn-then-Test pick: thresholds.json carries its
        # "guarantee" block (search.guarantee.certification_document).
        guarantee = thresholds_doc.get("guarantee")
        certified = None
        if guarantee:
            bound = (f"accuracy >= {guarantee['accuracy_lower_bound']:.4f}" if "drop_upper_bound_points" not in guarantee
                     else f"drop <= {guarantee['drop_upper_bound_points']:.3f} points")
            certified = _point_from_doc(thresholds_doc, f"certified (delta = {guarantee['delta']:g}; {bound})", M)
    fronts = _attach_csv_fractions(fronts, csv, names, run_dir)
    notes: list[str] = []
    confidence = None
    cache = _find_cache(thresholds_doc, run_dir, cache_path, notes)
    if cache is not None:
        fronts, confidence = _from_cache(cache, thresholds_doc, fronts, run_dir)
    if exit_ms is None:
        notes.append("costs are fvcore FLOPs; no latency profile was used, so no milliseconds are shown")
    return ReportData(run_dir, title, names, tuple(float(f) for f in cache_doc["flops"]),
                      float(cache_doc["baseline_flops"]), exit_ms, tuple(fronts), exits, chosen, certified, pick,
                      confidence, tuple(notes), fallback)


def _check_format(path: Path, doc: dict, fmt: str, version: int) -> None:
    if doc.get("format") != fmt or doc.get("version") != version:
        raise ValueError(
            f"{path} was written by another version of tradeoff (format {doc.get('format')!r} version "
            f"{doc.get('version')!r}; tradeoff {__version__} reads {fmt!r} version {version}); "
            f"rerun `tradeoff search --out {path.parent}` with this version"
        )


@contextlib.contextmanager
def _naming(path: Path):
    """A missing key or a wrong type while reading `path` becomes one line naming it."""
    try:
        yield
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path} is not a complete tradeoff run file ({what}); "
                         f"rerun `tradeoff search --out {path.parent}`") from None


def _thresholds_row(values, M: int) -> tuple[tuple[float, ...], np.ndarray | None]:
    """One point's thresholds as written (null = off; per class a list of C per exit) ->
    ((M,) for people: NaN = off, per class each exit's median over the classes that are on;
    (M, C) exact per-class table for the scorer, `OFF_THRESHOLD` = off, or None per exit)."""
    values = list(values)
    if len(values) != M:
        raise ValueError(f"thresholds must hold M = {M} values, one per thresholded exit (K-1 under fallback "
                         f"'deepest', K under 'ensemble' and 'most-confident'); got {len(values)}")
    if not any(isinstance(v, list) for v in values):
        return tuple(float("nan") if v is None else float(v) for v in values), None
    C = max(len(v) for v in values if isinstance(v, list))
    table = np.array([[OFF_THRESHOLD] * C if v is None else [OFF_THRESHOLD if x is None else float(x) for x in v]
                      for v in values], dtype=np.float64)  # a ragged row raises ValueError: named by _naming
    on = [row[row < OFF_THRESHOLD] for row in table]
    return tuple(float(np.median(r)) if r.size else float("nan") for r in on), table


def _front_from_summary(doc: dict, M: int) -> FrontData:
    arrays = {key: np.asarray(doc[key], dtype=np.float64) for key in ("val_accuracy", "val_flops", "test_accuracy", "test_flops")}
    rows = [_thresholds_row(row, M) for row in doc["thresholds"]]
    thresholds = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, M)
    tables = [r[1] for r in rows]
    if any(t is None for t in tables) != all(t is None for t in tables):
        raise ValueError(f"the {doc['method']} front mixes per-class and per-exit threshold rows")
    class_thresholds = None if not tables or tables[0] is None else np.stack(tables)
    sizes = {a.shape[0] for a in arrays.values()} | {thresholds.shape[0]}
    if len(sizes) != 1:
        raise ValueError(f"the {doc['method']} front's columns have different lengths {sorted(sizes)}")
    return FrontData(str(doc["method"]), thresholds, **arrays, val_fractions=None, test_fractions=None,
                     class_thresholds=class_thresholds)


def _point_from_doc(doc: dict, label: str, M: int) -> PointData:
    val, test = doc["val"], doc["test"]

    def fractions(split):
        f = split.get("exit_fractions")
        return None if f is None else tuple(float(v) for v in f)

    ci = test.get("accuracy_ci95")
    thresholds, table = _thresholds_row(doc["thresholds"], M)
    return PointData(label, thresholds, float(val["accuracy"]), float(val["flops"]),
                     float(test["accuracy"]), float(test["flops"]), fractions(val), fractions(test),
                     None if ci is None else (float(ci[0]), float(ci[1])), per_class=table is not None)


def _attach_csv_fractions(fronts: list[FrontData], csv: dict, names: tuple[str, ...], run_dir: Path) -> list[FrontData]:
    """The reported (NSGA-II) front's val exit shares, from pareto.csv (checked against summary.json)."""
    path = run_dir / rundir.PARETO_FILE
    columns = [f"val_frac_{report._csv_name(n)}" for n in names]
    out = []
    for front in fronts:
        if front.method == "nsga" and all(c in csv for c in columns):
            if len(csv["val_accuracy"]) != front.size or not np.allclose(csv["val_accuracy"], front.val_accuracy, rtol=0, atol=1e-12):
                raise ValueError(f"{path} and summary.json disagree on the nsga front ({len(csv['val_accuracy'])} vs "
                                 f"{front.size} rows); rerun `tradeoff search --out {run_dir}`")
            front = FrontData(**{**front.__dict__, "val_fractions": np.column_stack([csv[c] for c in columns])})
        out.append(front)
    return out


def _find_cache(doc: dict, run_dir: Path, given, notes: list[str]):
    """The run's cache (an ExitCache), or None with a note saying why."""
    from tradeoff.cache.format import load_cache

    want = doc.get("cache_sha256")
    if given is not None:
        given = Path(given)
        if not given.is_file():
            raise FileNotFoundError(f"--cache {given} does not exist; give the cache the run was searched on")
        if want and sha256_file(given) != want:
            raise ValueError(f"--cache {given} is not the cache this run was searched on (sha256 differs from "
                             f"{run_dir / rundir.THRESHOLDS_FILE}); give that cache")
        return load_cache(given)
    recorded = doc.get("cache")
    if not recorded or not want:
        notes.append("the run was searched on an in-memory cache: no confidence histograms, no test exit shares")
        return None
    for candidate in (rundir.resolve_recorded_cache(run_dir, recorded), run_dir / Path(recorded).name):
        if candidate.is_file() and sha256_file(candidate) == want:
            return load_cache(candidate)
    notes.append(f"cache {recorded} not found or changed since the search (sha256): no confidence histograms, no test "
                 "exit shares; rebuild with `tradeoff report RUN --cache FILE`")
    return None


def _from_cache(cache, doc: dict, fronts: list[FrontData], run_dir: Path):
    """Every front point's exit shares on val and test, and the val confidence histograms."""
    from tradeoff.policy.scoring import score_thresholds
    from tradeoff.policy.table import exit_table

    # The run's own rule (confidence, ensemble, temperatures, fallback), read the one way
    # thresholds.json is read; each exit's predictions are kept when a front is per class.
    rule = rule_file.read_rule(run_dir / rundir.THRESHOLDS_FILE).rule
    temperatures = None if rule.temperatures is None else rule.temperature_array()
    keep = rule.per_class or any(f.per_class for f in fronts)
    tables = {}
    for split in ("val", "test"):
        part = cache.select(split)
        tables[split] = exit_table(part.logits, part.labels, part.flops, confidence=rule.confidence, ensemble=rule.ensemble,
                                   temperatures=temperatures, fallback=rule.fallback, keep_predictions=keep)
    split_doc = (doc.get("guarantee") or {}).get("split")
    if split_doc:  # with --delta the fronts were searched (and their "val" figures taken) on the search part only
        from tradeoff.search.guarantee import split_val

        tables["val"] = tables["val"].columns(split_val(tables["val"].num_samples, seed=int(split_doc["seed"])).search)
    out = []
    for front in fronts:
        # per class: the exact (F, M, C) tables; per exit: off is OFF_THRESHOLD (confidences are <= 1, nobody leaves)
        t = front.class_thresholds if front.per_class else np.where(np.isnan(front.thresholds), OFF_THRESHOLD, front.thresholds)
        val, test = score_thresholds(tables["val"], t), score_thresholds(tables["test"], t)
        if not np.allclose(val.accuracy, front.val_accuracy, rtol=0, atol=1e-9):
            raise ValueError(f"the cache of {run_dir} does not reproduce its {front.method} front's val accuracy; "
                             "give the cache the run was searched on with --cache")
        out.append(FrontData(**{**front.__dict__, "val_fractions": val.exit_fractions, "test_fractions": test.exit_fractions}))
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    val = tables["val"]
    right = np.array([np.histogram(val.confidence[k][val.correct[k]], edges)[0] for k in range(val.num_exits)])
    wrong = np.array([np.histogram(val.confidence[k][~val.correct[k]], edges)[0] for k in range(val.num_exits)])
    return out, ConfidenceHistograms(rule.confidence, edges, right, wrong)


def write_report(run_dir: str | os.PathLike, *, cache_path: str | os.PathLike | None = None, lock: bool = True,
                 max_points: int | None = None) -> Path:
    """Gather a run directory and write its `report.html` atomically (old or new, never half).

    Args:
        run_dir: the run directory (also where the page goes).
        cache_path: the run's cache if it moved (see `gather_report`).
        lock: hold the run's exclusive lock while reading and writing, so a search
            replacing the run meanwhile cannot pair its files with an old page. False
            inside `rundir.write_run` (the directory is still private).

    Returns:
        The page's path.

    Raises:
        FileNotFoundError / ValueError: as `gather_report`, in one line naming the file.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; give a results/<run> directory written by `tradeoff search`")
    with rundir.run_lock(run_dir) if lock else contextlib.nullcontext():
        data = gather_report(run_dir, cache_path=cache_path, lock=False)
        page = report_page(data, max_points=max_points)
        write_text_atomic(run_dir / REPORT_FILE, page)
    return run_dir / REPORT_FILE

