"""Search results as files and tables: `thresholds.json`, `pareto.csv`, `summary.json`.

Like fvcore's `flop_count_table`, this module only turns results into text; it computes
nothing. Two promises hold for the files of one run directory:

* Determinism: `pareto.csv` and `thresholds.json` hold no timing, no date and no
  absolute path (the cache is recorded relative to the run directory, so the run can be
  read from any folder and moved together with its cache), and every float is written with `repr` (the
  shortest string that reads back to the same double), so the same cache, settings and
  seed give byte-identical files. Timings live in `summary.json` only.
* Whole runs: a run is written into a temporary sibling directory and swapped into place
  under an exclusive `fcntl.flock` on the parent folder, so a reader holding the shared lock
  sees the old complete run or the new complete one, never a mix (see `write_run`).

`format_table` is the project's one terminal-table formatter; every command's summary
uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from tradeoff import __version__
from tradeoff.fileio import ANY, ensure_unchanged, pid_alive, sibling_tempdir, write_json_atomic, write_text_atomic
from tradeoff.policy.rule import OFF_THRESHOLD, threshold_text

THRESHOLDS_FILE = "thresholds.json"
PARETO_FILE = "pareto.csv"
SUMMARY_FILE = "summary.json"


# --------------------------------------------------------------------------- tables
def format_table(
    rows: Iterable[Sequence],
    headers: Sequence[str],
    *,
    title: str | None = None,
    float_format: str = "{:.4g}",
) -> str:
    """A plain monospace table: strings left-aligned, numbers right-aligned.

    Args:
        rows: each a sequence of cells (str, int, float or None) as long as `headers`.
        headers: column names.
        title: optional line printed above the table.
        float_format: how floats are shown (ints are shown in full; None as "-").

    Returns:
        The table as one string without a trailing newline.

    Raises:
        ValueError: if a row's length differs from the number of headers.
    """
    headers = [str(h) for h in headers]
    cells: list[list[str]] = []
    numeric: list[list[bool]] = []
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(headers):
            raise ValueError(f"format_table: row {i} has {len(row)} cells; expected {len(headers)} (one per header)")
        cells.append([_cell(value, float_format) for value in row])
        numeric.append([_is_number(value) for value in row])
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    # A column whose every cell is a number (or reads as one: "1.21x", "35.0%",
    # "0.7570 [0.7452, 0.7684]") is right-aligned, header included.
    right = [
        bool(cells) and all(numeric[r][j] or cells[r][j] == "-" or _NUMBER_LIKE.match(cells[r][j]) for r in range(len(cells)))
        for j in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out.append(line(headers))
    out.append("  ".join("-" * w for w in widths))
    out.extend(line(row) for row in cells)
    return "\n".join(out)


_NUMBER_LIKE = re.compile(r"^[-+]?(\d|\.\d|inf|nan)")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) or _is_numpy_number(value)


def _is_numpy_number(value) -> bool:
    return type(value).__module__ == "numpy" and hasattr(value, "dtype") and value.dtype.kind in "iuf"


def _cell(value, float_format: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if _is_numpy_number(value):
        value = value.item()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def accuracy_text(accuracy: float) -> str:
    """The one display convention for accuracies: a fraction with four decimals (0.9889), as
    --target-acc takes it and the JSON/CSV files store it. Shares of samples are shown as
    percentages (`share_text`); --max-drop alone is in percentage points."""
    return f"{float(accuracy):.4f}"


def share_text(fraction: float) -> str:
    """A share of samples (where they leave) as a percentage: 75.6%."""
    return f"{100 * float(fraction):.1f}%"


def mflops_text(flops: float) -> str:
    """A cost for display, in MFLOPs with a fixed number of decimals per magnitude
    (so a column of them lines up): 466.0, 12.35; below one MFLOP four significant digits
    (0.1234, 0.0001235), so a small model never shows 0.00."""
    m = float(flops) / 1e6
    if abs(m) >= 100:
        return f"{m:.1f}"
    if abs(m) >= 1:
        return f"{m:.2f}"
    return f"{m:.4g}"


# --------------------------------------------------------------------------- documents
def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _threshold_doc(values) -> list:
    """Thresholds for JSON: None (null) where an exit is off, per-class rows as lists."""
    from tradeoff.policy.rule import rule_thresholds

    return [list(v) if isinstance(v, tuple) else v for v in rule_thresholds(values)]


def _figures(point, *, with_ci: tuple[float, float] | None = None) -> dict:
    doc = {
        "accuracy": float(point.accuracy),
        "flops": float(point.flops),
        "speedup": float(point.speedup),
        "speedup_vs_all_exits": float(point.speedup_all_exits),
        "exit_fractions": _floats(point.exit_fractions),
    }
    if with_ci is not None:
        doc["accuracy_ci95"] = _floats(with_ci)
    return doc


def thresholds_document(result) -> dict:
    """The chosen point as `thresholds.json` (what `tradeoff run` loads).

    The issue's schema (thresholds, confidence, ensemble, calibration, cache,
    cache_sha256, val, test with accuracy_ci95) plus what the runtime needs to check it
    is applied to the right model (num_exits, exit_names, arch, checkpoint_sha256,
    num_classes) and how the point was picked. No timings: byte-identical across runs.
    """
    from tradeoff.policy.rule import rule_document

    chosen = result.chosen
    meta = result.cache_meta
    # The Learn-then-Test block only when --delta made one (a val-estimate pick's file is unchanged).
    block = _guarantee(result)
    guarantee = {} if block is None else {"guarantee": block}
    return rule_document(
        result.rule,
        cache=result.cache_path,
        cache_sha256=result.cache_sha256,
        num_exits=result.num_exits,
        exit_names=list(result.exit_names),
        exit_flops=_floats(result.flops),
        baseline_flops=float(result.baseline_flops),
        num_classes=meta.get("num_classes"),
        arch=meta.get("arch"),
        checkpoint_sha256=meta.get("checkpoint_sha256"),
        method=chosen.method,
        pick=result.settings.pick.as_dict(),
        seed=result.settings.seed,
        val=_figures(chosen.val),
        test=_figures(chosen.test, with_ci=chosen.test_accuracy_ci95),
        **guarantee,
        **({"latency": result.latency} if getattr(result, "latency", None) else {}),
    )


def _guarantee(result) -> dict | None:
    """The Learn-then-Test block (search.guarantee), or None when the pick is a val estimate."""
    cert = getattr(result, "guarantee", None)
    if cert is None:
        return None
    from tradeoff.search.guarantee import certification_document

    return certification_document(cert, search_size=result.split_sizes["val_search"], seed=result.settings.seed)


def pareto_csv(result, method: str = "nsga") -> str:
    """One row per point of `method`'s front (sorted by val cost), as CSV text.

    Columns: t1..t{K-1}, val_accuracy, test_accuracy, val_flops (fvcore count), val_mflops,
    val_speedup (vs the original network), test_flops, test_speedup, then the val exit
    fraction of every exit (`val_frac_<exit name>`). Every figure names its split. Floats are written with `repr`, so the bytes depend on
    the values only.
    """
    front = result.front(method)
    M = front.thresholds.shape[1]
    if front.thresholds.ndim == 3:  # per class: t<exit>_c<class>
        headers = [f"t{k + 1}_c{c}" for k in range(M) for c in range(front.thresholds.shape[2])]
    else:
        headers = [f"t{k + 1}" for k in range(M)]
    headers += ["val_accuracy", "test_accuracy", "val_flops", "val_mflops", "val_speedup", "test_flops", "test_speedup"]
    headers += [f"val_frac_{_csv_name(name)}" for name in result.exit_names]
    lines = [",".join(headers)]
    for i in range(front.size):
        flops = float(front.val.flops[i])
        values = list(front.thresholds[i].ravel()) + [
            front.val.accuracy[i],
            front.test.accuracy[i],
            flops,
            flops / 1e6,
            result.baseline_flops / flops,
            front.test.flops[i],
            result.baseline_flops / float(front.test.flops[i]),
        ]
        values += list(front.val.exit_fractions[i])
        width = front.thresholds[i].size  # threshold cells come first; a switched-off exit reads "off"
        lines.append(",".join("off" if j < width and float(v) >= OFF_THRESHOLD else repr(float(v))
                              for j, v in enumerate(values)))
    return "\n".join(lines) + "\n"


def _csv_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name)


def summary_document(result) -> dict:
    """Everything else about the run: settings, timings, every method's front and
    hypervolume, each exit alone, the cache's provenance. `tradeoff plot` redraws the
    pictures from this file plus the other two, so whatever the plots show is here.
    """
    s = result.settings
    meta = result.cache_meta
    fronts = []  # a list, not an object: JSON keys are sorted, and the order is NSGA first
    for front in result.fronts:
        fronts.append({
            "method": front.method,
            "size": front.size,
            "hypervolume": float(front.hypervolume),
            "evaluations": int(front.evaluations),
            "seconds": float(front.seconds),
            "thresholds": [_threshold_doc(row) for row in front.thresholds],
            "val_accuracy": _floats(front.val.accuracy),
            "val_flops": _floats(front.val.flops),
            "test_accuracy": _floats(front.test.accuracy),
            "test_flops": _floats(front.test.flops),
        })
    return {
        "format": "tradeoff-summary",
        "version": 1,
        "tool_version": __version__,
        "settings": {
            "method": s.method,
            "confidence": s.confidence,
            "ensemble": bool(s.ensemble),
            "calibrate": bool(s.calibrate),
            "fallback": s.fallback,
            "per_class": bool(s.per_class),
            "pop": s.pop,
            "gens": s.gens,
            "seed": s.seed,
            "restarts": s.restarts,
            "jobs": s.jobs,
            "bootstrap": s.bootstrap,
            "pick": s.pick.as_dict(),
            "delta": getattr(s, "delta", None),
        },
        "seed": s.seed,
        "cost": getattr(result, "cost", "flops"),
        "latency": getattr(result, "latency", None),
        "timings_seconds": {k: float(v) for k, v in result.timings.items()},
        "cache": {
            "path": result.cache_path,
            "sha256": result.cache_sha256,
            "split_sizes": dict(result.split_sizes),
            "num_exits": result.num_exits,
            "num_classes": meta.get("num_classes"),
            "exit_names": list(result.exit_names),
            "flops": _floats(result.flops),
            "baseline_flops": float(result.baseline_flops),
            "meta": {k: meta[k] for k in sorted(meta) if k in _META_SUMMARY_KEYS},
        },
        "calibration": None if result.temperatures is None else {"temperatures": _floats(result.temperatures)},
        "hypervolume": {front.method: float(front.hypervolume) for front in result.fronts},
        "hypervolume_reference": result.hypervolume_reference,
        "front_sizes": {front.method: front.size for front in result.fronts},
        "exits": [
            {
                "name": e.name,
                "flops": float(e.flops),
                "speedup": float(e.speedup),
                "val_accuracy": float(e.val_accuracy),
                "test_accuracy": float(e.test_accuracy),
            }
            for e in result.exits
        ],
        "chosen": {
            "method": result.chosen.method,
            "index": result.chosen.index,
            "thresholds": _threshold_doc(result.chosen.thresholds),
            "val": _figures(result.chosen.val),
            "test": _figures(result.chosen.test, with_ci=result.chosen.test_accuracy_ci95),
            "guarantee": _guarantee(result),
        },
        "fronts": fronts,
        "per_class_comparison": result.per_class_comparison,
    }


_META_SUMMARY_KEYS = (
    "arch",
    "arch_kwargs",
    "checkpoint_sha256",
    "created",
    "data",
    "data_fingerprint",
    "flop_counter",
    "flop_counter_version",
    "num_classes",
    "params_per_exit",
    "schema",
    "tool_version",
    "unsupported_ops",
)


# --------------------------------------------------------------------------- terminal
def _guarantee_text(result) -> str:
    """The line that says whether the pick is certified or only a val estimate."""
    doc = _guarantee(result)
    if doc is None:
        return ("NOTE: the pick is a val estimate - the thresholds were chosen on val, and new data can fall short of "
                "the target (see the test figures; --delta D gives a guaranteed pick)")
    split = doc["split"]
    bound = (f"accuracy lower bound {doc['accuracy_lower_bound']:.4f}" if "drop_upper_bound_points" not in doc
             else f"drop upper bound {doc['drop_upper_bound_points']:.3f} points")
    return (f"CERTIFIED: {doc['statement']} (Learn-then-Test, delta {doc['delta']:g}; searched on {split['search']} "
            f"val rows, certified on the other {split['calibration']}: p-value {doc['p_value']:.3g}, {bound}, "
            f"calibration accuracy {doc['calibration_accuracy']:.4f})")


def summary_text(result) -> str:
    """The terminal summary of a search: the chosen point on val and test, each exit
    alone, every method's front, and where the time went."""
    chosen = result.chosen
    names = list(result.exit_names)
    pick = result.settings.pick
    lo, hi = chosen.test_accuracy_ci95
    ms = getattr(result, "cost", "flops") == "ms"
    unit = "ms" if ms else "MFLOPs"
    cost_text = (lambda v: f"{v:.4g}") if ms else mflops_text
    head = [
        f"cache {result.cache_path or '(in memory)'}: {result.num_exits} exits, "
        f"val {result.split_sizes.get('val', 0)} / test {result.split_sizes.get('test', 0)} samples, "
        f"original network {cost_text(result.baseline_flops)} {unit}" + (" per sample (latency profile)" if ms else ""),
        f"picked on val by {chosen.method}: {pick.describe()}" if getattr(result, "guarantee", None) is None else
        f"picked by {chosen.method}: the cheapest point of the front found on the search part of val that is certified "
        f"on the calibration part ({pick.flag.replace('-', ' ')} {pick.value:g})",
        "thresholds  " + "  ".join(f"{names[k]} >= {threshold_text(t)}" for k, t in enumerate(chosen.thresholds))
        + (f"  (fallback {result.settings.fallback})" if result.settings.fallback != "deepest" else ""),
    ]
    rows = []
    for split, fig in (("val", chosen.val), ("test", chosen.test)):
        acc = f"{fig.accuracy:.4f}"
        if split == "test":
            acc += f" [{lo:.4f}, {hi:.4f}]"
        rows.append(
            [split, acc, cost_text(fig.flops), f"{fig.speedup:.3f}x", f"{fig.speedup_all_exits:.3f}x"]
            + [f"{100 * f:.1f}%" for f in fig.exit_fractions]
        )
    chosen_table = format_table(
        rows,
        ["split", "accuracy (test: 95% CI)", unit, "speed-up", "vs all exits"] + [f"@{n}" for n in names],
        title="chosen point",
    )
    exit_table = format_table(
        [[e.name, f"{e.val_accuracy:.4f}", f"{e.test_accuracy:.4f}", cost_text(e.flops), f"{e.speedup:.3f}x"] for e in result.exits],
        ["exit alone", "val acc", "test acc", unit, "speed-up"],
        title="each exit alone",
    )
    ref_error, ref_cost = result.hypervolume_reference
    method_table = format_table(
        [[f.method, f.size, f"{f.hypervolume:.4f}", f.evaluations, f"{f.seconds:.3f}"] for f in result.fronts],
        ["method", "front size", "val hypervolume", "evaluations", "seconds"],
        title=f"every method on val (hypervolume: error x cost, reference error {ref_error:g} and {cost_text(ref_cost)} {unit})",
    )
    tail = f"search time {result.front(chosen.method).seconds:.3f} s ({chosen.method}); total {result.timings.get('total', 0.0):.3f} s"
    head.append(_guarantee_text(result))
    lat = getattr(result, "latency", None)
    if lat:
        t = lat["test"]
        tail += (f"\nlatency profile {lat['profile']} ({lat['device_name']}, {lat['threads']} thread(s), {lat['backend']}), "
                 f"batch {lat['batch_size']}: chosen point on test predicted {t['predicted_latency_ms']:.4g} ms/sample "
                 f"({t['predicted_speedup_ms']:.2f}x vs the original's {lat['original_ms']:.4g} ms), "
                 f"{t['flops'] / 1e6:.4g} MFLOPs ({t['speedup_flops']:.2f}x by FLOPs)")
    note = genetic_search_note(result)
    return ("\n".join(head) + "\n\n" + chosen_table + "\n\n" + exit_table + "\n\n" + method_table
            + ("\n" + note if note else "") + "\n\n" + tail)


# Below this relative hypervolume gain NSGA-II and the best baseline are taken to tie.
GENETIC_TIE = 5e-4


def genetic_search_note(result) -> str | None:
    """One line saying whether NSGA-II beat the baselines on this cache, and when it matters.

    With one or two thresholds (K <= 3) an exhaustive grid or a random search covers the
    space and ties NSGA-II; the genetic search pays off with many exits, per-class
    thresholds or latency costs (`make bench`: when_nsga measures it at K = 8).
    """
    volumes = {f.method: float(f.hypervolume) for f in result.fronts}
    if "nsga" not in volumes or len(volumes) < 2:
        return None
    nsga = volumes.pop("nsga")
    best = max(volumes, key=volumes.get)
    gain = (nsga - volumes[best]) / volumes[best] if volumes[best] > 0 else 0.0
    head = f"NSGA-II vs the best baseline ({best}): val hypervolume {gain:+.3%}"
    if gain < GENETIC_TIE:
        return (f"{head}; with {result.num_exits - 1} threshold(s) the baselines already cover the space - the "
                "genetic search pays off with many exits, per-class thresholds or latency costs (make bench: when_nsga)")
    return f"{head}: the genetic search found points the baselines missed"


# --------------------------------------------------------------------------- run directory
@contextlib.contextmanager
def run_lock(out: str | os.PathLike, *, shared: bool = False) -> Iterator[None]:
    """Hold `fcntl.flock` on the folder that holds `out`: exclusive to replace a run, shared to read one.

    The lock is the parent directory itself, not a `<out>.lock` file: a lock file can never
    be removed safely (a waiter would hold a lock on the unlinked file while a newcomer
    locks a new one), so every run used to leave an empty one behind. The cost is that
    runs in one folder replace one at a time, which takes milliseconds (only the swap is
    locked). Reading never creates anything; a missing folder is not locked.
    """
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    if not shared:
        parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(parent, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_run(
    out: str | os.PathLike,
    result,
    *,
    extra: Sequence[Callable[[Path], None]] = (),
    expect=ANY,
) -> Path:
    """Write a whole run directory, replacing any previous run at `out` as one step.

    The files (`thresholds.json`, `pareto.csv`, `summary.json`, then whatever each
    callable in `extra` writes, e.g. the plots) go into a temporary sibling directory;
    then, holding the exclusive lock on `<out>.lock`, it is swapped with an existing
    `out` in one atomic exchange (Linux), or else the old `out` is renamed aside and the
    new directory renamed to `out`; the old run is then removed. If anything fails
    before the swap, the temporary directory is removed and `out` is untouched.

    Args:
        expect: `tradeoff.fileio.output_stamp(out)` from when the search started: if another
            process replaced `out` since, this run is not swapped in (FileExistsError) - the
            later of two concurrent writers fails instead of both reporting success.

    Returns:
        The run directory `out`.

    Raises:
        PermissionError / OSError: with the path, if the directory cannot be written.
        FileExistsError: `out` changed since `expect`.
    """
    out = Path(out)
    result = with_cache_relative_to(result, out)
    tmp = sibling_tempdir(out, f"tmp-{os.getpid()}")
    parent = tmp.parent
    try:
        write_json_atomic(tmp / THRESHOLDS_FILE, thresholds_document(result))
        write_text_atomic(tmp / PARETO_FILE, pareto_csv(result))
        write_json_atomic(tmp / SUMMARY_FILE, summary_document(result))
        for write in extra:
            write(tmp)
        os.chmod(tmp, 0o755)
        with run_lock(out):
            ensure_unchanged(out, expect)
            _remove_stale(parent, out.name)
            if out.is_dir() and _exchange(tmp, out):
                shutil.rmtree(tmp, ignore_errors=True)  # now holds the old run
            else:
                old = None
                if out.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=parent))
                    os.replace(out, old / "run")
                os.replace(tmp, out)
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def with_cache_relative_to(result, run_dir: str | os.PathLike):
    """`result` with its cache path relative to `run_dir`, as `thresholds.json` and `summary.json`
    record it: readers resolve it against the run directory (`resolve_recorded_cache`), from
    whatever folder they run in. (Paths relative to the folder the search ran in, as before,
    could not be found from anywhere else.)"""
    import dataclasses

    if not result.cache_path:
        return result
    relative = os.path.relpath(Path(result.cache_path).resolve(), Path(run_dir).resolve())
    return dataclasses.replace(result, cache_path=Path(relative).as_posix())


def resolve_recorded_cache(run_dir: str | os.PathLike, recorded: str | None) -> Path | None:
    """The cache a run recorded: relative to the run directory (this tool's runs), else as
    written (absolute, or runs written before the cache path was made relative)."""
    if not recorded:
        return None
    beside = Path(os.path.normpath(Path(run_dir) / recorded))
    return beside if Path(recorded).is_absolute() or beside.exists() else Path(recorded)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux `renameat2(RENAME_EXCHANGE)`).

    With it, `out` never stops existing while a run replaces it, so even a reader that
    does not take the lock sees the old run or the new one. Returns False where the call
    is unavailable (other systems, old kernels or file systems without support); the
    caller then renames the old run aside first, which leaves a window of microseconds
    in which `out` is absent (never a mix).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _remove_stale(parent: Path, name: str) -> None:
    """Remove temporary directories left by runs that were killed (their pid is gone).

    Called under the exclusive lock; a live run's temporary directory is never touched.
    """
    for kind in ("tmp", "old"):
        for path in parent.glob(f".{name}.{kind}-*-*"):
            pid_text = path.name[len(f".{name}.{kind}-") :].split("-", 1)[0]
            if pid_text.isdigit() and not pid_alive(int(pid_text)):
                shutil.rmtree(path, ignore_errors=True)


def read_run(run_dir: str | os.PathLike, *, lock: bool = True) -> tuple[dict, dict, str]:
    """Read and check the three files of a run directory.

    Args:
        run_dir: a directory written by `write_run`.
        lock: hold the shared lock while reading (pass False when the caller already
            holds the exclusive one: flock would deadlock on a second descriptor).

    Returns:
        (thresholds document, summary document, pareto.csv text).

    Raises:
        FileNotFoundError: if the directory or one of the files is missing.
        ValueError: if a file is not valid JSON/CSV of this tool.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist; give a results/<run> directory written by `tradeoff search`")
    with run_lock(run_dir, shared=True) if lock else contextlib.nullcontext():
        texts = {}
        for name in (THRESHOLDS_FILE, SUMMARY_FILE, PARETO_FILE):
            path = run_dir / name
            try:
                texts[name] = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{path} is missing; rerun `tradeoff search --out {run_dir}` to rewrite the run"
                ) from None
            except UnicodeDecodeError:
                raise ValueError(f"{path} is not UTF-8 text; rerun `tradeoff search --out {run_dir}`") from None
    docs = {}
    for name in (THRESHOLDS_FILE, SUMMARY_FILE):
        try:
            doc = json.loads(texts[name])
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{run_dir / name} is not valid JSON ({exc.msg} at line {exc.lineno}); rerun `tradeoff search --out {run_dir}`"
            ) from None
        if not isinstance(doc, dict):
            raise ValueError(f"{run_dir / name} must hold a JSON object; got {type(doc).__name__}")
        docs[name] = doc
    return docs[THRESHOLDS_FILE], docs[SUMMARY_FILE], texts[PARETO_FILE]


_OLD_PARETO_COLUMNS = {"flops": "val_flops", "mflops": "val_mflops", "speedup": "val_speedup"}


def parse_pareto_csv(text: str, *, source: str = PARETO_FILE) -> dict[str, list[float]]:
    """Columns of a `pareto.csv` as lists of floats, keyed by header.

    Raises:
        ValueError: naming `source`, if the header is missing, a row has the wrong
            number of cells, or a cell is not a number.
    """
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{source} is empty; rerun `tradeoff search`")
    # Runs written before the val columns were prefixed (issue 15) read the same way.
    headers = [_OLD_PARETO_COLUMNS.get(h, h) for h in lines[0].split(",")]
    for needed in ("val_accuracy", "test_accuracy", "val_flops", "test_flops"):
        if needed not in headers:
            raise ValueError(f"{source} has no {needed!r} column (header: {lines[0][:80]!r}); rerun `tradeoff search`")
    columns: dict[str, list[float]] = {h: [] for h in headers}
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        if len(cells) != len(headers):
            raise ValueError(f"{source} line {number} has {len(cells)} cells; the header has {len(headers)}")
        for h, cell in zip(headers, cells):
            try:
                columns[h].append(float("inf") if cell == "off" else float(cell))
            except ValueError:
                raise ValueError(f"{source} line {number}: {h} = {cell!r} is not a number") from None
    return columns
